"""Helpers for the publishing tests: the real CLI, the external checkers (the W3C
validator, jing with RFC 4287's schema), and views of a published output directory.

    result = run_cli(config, "publish")
    problems = unsafe_html(fragment)               # [] when nothing dangerous is left
    for path, html in content_fragments(output):   # every item's HTML, in every format
        ...
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lxml.html
import pytest
import yaml
from lxml import etree

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VALIDATOR = SHARED / "tools" / "validate-feed"
ATOM_RNC = REPO / "tests" / "data" / "atom.rnc"
FEED_FILES = ("index.xml", "atom.xml", "feed.json")
NS = {"atom": "http://www.w3.org/2005/Atom",
      "content": "http://purl.org/rss/1.0/modules/content/"}
TZ = "Asia/Shanghai"
# An mtime far in the past: after `age()`, any rewrite shows as a new mtime, however
# coarse the file system's clock is.
OLD_MTIME_NS = 1_000_000_000 * 10**9


def write_config(directory: Path, sources: Iterable[Mapping[str, Any]] = (), *,
                 keep_items: int = 50, **site: Any) -> Path:
    """directory/feeds.yaml with the given sources; `site` keys override the defaults."""
    document = {
        "site": {"title": "Test site", "description": "Feeds for tests",
                 "base_url": "http://127.0.0.1:8000/", "language": "en", "timezone": TZ,
                 **site},
        "store": "store", "output": "public",
        "defaults": {"keep_items": keep_items, "timeout": "10s"},
        "sources": [dict(s) for s in sources],
    }
    path = directory / "feeds.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    return path


def run_cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m aggregator --config FILE ARGS...` as a real process, from the config's folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGGREGATOR_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "aggregator", "--config", str(config), *args],
                          cwd=config.parent, capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout, env=env, check=False)


def publish(config: Path, *, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = run_cli(config, "publish")
    assert result.returncode == expect, (
        f"publish exited {result.returncode}, expected {expect}\n{result.stderr[-3000:]}")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


# -- output views -------------------------------------------------------------------------------
def output_files(output: Path) -> list[str]:
    """Every file under output (relative POSIX paths), sorted."""
    return sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """{relative path: (bytes, mtime_ns, inode)} of every file under root."""
    out = {}
    for rel in output_files(root):
        p = root / rel
        st = p.stat()
        out[rel] = (p.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def age(root: Path) -> None:
    """Set every file's mtime to OLD_MTIME_NS, so a later rewrite cannot go unnoticed."""
    for rel in output_files(root):
        os.utime(root / rel, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def touched(before: Mapping[str, tuple[bytes, int, int]],
            after: Mapping[str, tuple[bytes, int, int]]) -> set[str]:
    """Files added, removed or written again (new mtime or inode) between two snapshots."""
    return {k for k in before.keys() | after.keys()
            if k not in before or k not in after or before[k][1:] != after[k][1:]}


def feed_dirs(output: Path) -> list[str]:
    """Every published feed's folder ('' for the site-wide one), from its index.xml."""
    folders = (p.parent.relative_to(output).as_posix() for p in output.rglob("index.xml"))
    return sorted("" if f == "." else f for f in folders)


def feed_paths(output: Path, folder: str) -> list[str]:
    return [f"{folder}/{n}" if folder else n for n in FEED_FILES]


def json_ids(output: Path, folder: str) -> list[str]:
    data = json.loads((output / folder / "feed.json").read_text(encoding="utf-8"))
    return [item["id"] for item in data["items"]]


def content_fragments(output: Path) -> Iterator[tuple[str, str, str]]:
    """(file, where, HTML) for every piece of item HTML in every published feed.

    RSS content:encoded and description, Atom content and summary (as HTML when typed
    so), JSON Feed content_html. The summaries are plain text in the store, but
    readers render RSS descriptions as HTML, so they are checked as HTML too.
    """
    for path in sorted(output.rglob("index.xml")):
        rel = path.relative_to(output).as_posix()
        root = etree.parse(str(path)).getroot()
        for item in root.iter("item"):
            for tag in ("content:encoded", "description"):
                for node in item.findall(tag, NS):
                    yield rel, tag, node.text or ""
    for path in sorted(output.rglob("atom.xml")):
        rel = path.relative_to(output).as_posix()
        root = etree.parse(str(path)).getroot()
        for entry in root.iterfind("atom:entry", NS):
            for tag in ("content", "summary", "title"):
                for node in entry.iterfind(f"atom:{tag}", NS):
                    if node.get("type", "text") == "html":
                        yield rel, tag, node.text or ""
    for path in sorted(output.rglob("feed.json")):
        rel = path.relative_to(output).as_posix()
        for item in json.loads(path.read_text(encoding="utf-8"))["items"]:
            if "content_html" in item:
                yield rel, "content_html", item["content_html"]


DANGEROUS_ELEMENTS = frozenset({"script", "style", "iframe", "object", "embed", "frame",
                                "frameset", "applet", "form", "base", "meta", "link", "svg",
                                "math"})
URL_ATTRIBUTES = frozenset({"href", "src", "srcset", "action", "formaction", "background",
                            "poster", "cite", "longdesc", "lowsrc", "dynsrc", "data",
                            "codebase", "usemap", "xlink:href", "ping"})
BAD_SCHEMES = ("javascript:", "vbscript:", "data:", "livescript:", "mocha:")


def _squash(value: str) -> str:
    # Browsers ignore whitespace and control characters inside a scheme: "java\tscript:".
    return "".join(ch for ch in value if ord(ch) > 0x20 and ch != "\x7f").lower()


def unsafe_html(fragment: str) -> list[str]:
    """What is dangerous in an HTML fragment, parsed the way a browser would."""
    if not fragment.strip():
        return []
    problems = []
    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    for el in root.iter():
        if not isinstance(el.tag, str):  # comments, processing instructions
            if isinstance(el, etree._Comment):
                problems.append("comment")
            continue
        tag = el.tag.lower().rsplit("}", 1)[-1]
        if tag in DANGEROUS_ELEMENTS:
            problems.append(f"<{tag}>")
        for name, value in el.attrib.items():
            name = name.lower()
            if name.startswith("on"):
                problems.append(f"<{tag} {name}=...>")
            if name == "style":
                problems.append(f"<{tag} style=...>")
            if name in URL_ATTRIBUTES or name.endswith("href") or name.endswith("src"):
                for part in value.split(","):
                    if _squash(part).startswith(BAD_SCHEMES):
                        problems.append(f"<{tag} {name}={value!r}>")
    return problems


# -- external checkers ------------------------------------------------------------------------
def jing_errors(files: Iterable[Path]) -> str:
    """jing's complaints about Atom files against RFC 4287's schema ('' when all pass)."""
    if shutil.which("jing") is None:
        pytest.skip("jing is not installed (apt-get install jing)")
    files = [str(f) for f in files]
    if not files:
        return ""
    result = subprocess.run(["jing", "-c", str(ATOM_RNC), *files], capture_output=True,
                            text=True, timeout=300, check=False)
    # Debian's wrapper prints "[warning] ... Unable to locate xml-apis" lines: not ours.
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if line.strip() and not line.startswith("[warning]")]
    if result.returncode != 0 and not lines:
        lines = [f"jing exited {result.returncode}"]
    return "\n".join(lines)


def validator_errors(files: Iterable[Path]) -> str:
    """The W3C Feed Validation Service's complaints ('' when every file passes)."""
    if not VALIDATOR.is_file():
        pytest.skip(f"the W3C feed validator is not here ({VALIDATOR}): ../shared is absent")
    files = [str(f) for f in files]
    # The checker takes ~0.2 s a file: a few batches side by side, one call per batch.
    workers = max(1, min(4, os.cpu_count() or 1, len(files)))
    batches = [files[i::workers] for i in range(workers)]

    def check(batch: list[str]) -> str:
        result = subprocess.run([str(VALIDATOR), *batch], capture_output=True, text=True,
                                timeout=600, check=False,
                                env={**os.environ, "PYTHON": sys.executable})
        if result.returncode == 0:
            return ""
        return ((result.stdout + result.stderr).strip()
                or f"validate-feed exited {result.returncode}")

    with ThreadPoolExecutor(workers) as pool:
        return "\n".join(out for out in pool.map(check, batches) if out)
