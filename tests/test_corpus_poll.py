"""Every file of the feedparser corpus (../shared/corpus/feedparser/, about 2,100 feeds
nobody wrote for this project: ill-formed XML, odd encodings, entity tricks, hostile
HTML) goes through a real `aggregator poll` without a crash, and what reaches the store
is sound: every file parses, and no body renders to script, style, iframe, event
handlers or javascript: URLs (SPEC §6).

Many corpus entries share a link (http://example.com/...), so the poll merges them into
few files; a second test therefore takes every entry through build_item -> render_item
-> read_item -> markdown_to_html in-process, so each hostile entry is checked on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

import lxml.html
import pytest

from aggregator.content import markdown_to_html
from aggregator.errors import ParseError
from aggregator.items import build_item
from aggregator.model import Site, Source
from aggregator.parse import parse_feed
from aggregator.store import read_item, render_item
from tests.helpers import CORPUS, TZ, assert_clean_exit, read_store, run_cli, write_config

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(),
                                reason=f"feedparser corpus not found at {CORPUS}")

DANGEROUS_TAGS = {"script", "style", "iframe", "frame", "frameset", "object", "embed",
                  "applet", "form", "meta", "link", "base", "svg", "math"}
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "background", "poster", "data",
                  "cite", "longdesc", "lowsrc", "dynsrc", "xlink:href", "srcset"}
BAD_SCHEMES = ("javascript:", "vbscript:", "data:", "livescript:")


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []


def unsafe_parts(html: str) -> list[str]:
    """What in a rendered body could run script: elements, on* attributes, script URLs.

    Parsed, not grepped: escaped text such as "&lt;script&gt;" is harmless and allowed.
    """
    if not html.strip():
        return []
    root = lxml.html.fragment_fromstring(html, create_parent="div")
    found = []
    for element in root.iter():
        if not isinstance(element.tag, str):  # comments, processing instructions
            found.append(f"non-element node {element!r}")
            continue
        if element.tag.lower() in DANGEROUS_TAGS:
            found.append(f"<{element.tag}>")
        for name, value in element.attrib.items():
            name = name.lower()
            if name.startswith("on") or name in ("style", "formaction"):
                found.append(f"{element.tag} {name}={value!r}")
            if name in URL_ATTRIBUTES:
                # browsers ignore whitespace and control characters inside a scheme
                squashed = "".join(ch for ch in value if ord(ch) > 32).lower()
                if squashed.startswith(BAD_SCHEMES):
                    found.append(f"{element.tag} {name}={value!r}")
    return found


def test_unsafe_parts_finds_what_it_should() -> None:
    """Control: the checker itself catches each kind of danger, and passes escaped text."""
    assert unsafe_parts("<p>&lt;script&gt;alert(1)&lt;/script&gt; onload=x javascript:</p>") == []
    assert unsafe_parts("<script>alert(1)</script>")
    assert unsafe_parts('<img src="x.png" onerror="alert(1)">')
    assert unsafe_parts('<a href=" java\tscript:alert(1)">x</a>')
    assert unsafe_parts("<style>body{}</style><p>x</p>")
    assert unsafe_parts('<p><iframe src="https://example.org/"></iframe></p>')


@pytest.mark.timeout(600)
def test_poll_every_corpus_file(tmp_path: Path) -> None:
    files = corpus_files()
    assert len(files) > 2000
    sources = [{"id": f"c{n:04d}", "url": path.as_uri()} for n, path in enumerate(files)]
    config = write_config(tmp_path, sources, base_url="https://planet.example.org/")
    result = run_cli("poll", "--json", config=config, timeout=540)
    assert_clean_exit(result, 0, 1)  # no traceback, no "internal error"
    summary = json.loads(result.stdout)
    assert len(summary["sources"]) == len(files)
    statuses = {s["status"] for s in summary["sources"]}
    assert statuses <= {"ok", "error"}, statuses
    ok = sum(s["status"] == "ok" for s in summary["sources"])
    assert ok > len(files) / 2, "most of the corpus is well-formed feeds"
    for report in summary["sources"]:
        if report["status"] == "error":
            assert report["error"] and "\n" not in report["error"], report

    store = tmp_path / "store"
    items = read_store(store)  # every file parses
    assert len(items) == summary["new"]
    problems = {}
    for path, item in items.items():
        found = unsafe_parts(markdown_to_html(item.body, item.link))
        if found:
            problems[path] = found
    assert not problems, problems

    check = run_cli("check", config=config)
    assert_clean_exit(check, 0)


@pytest.mark.timeout(300)
def test_every_corpus_entry_becomes_a_sound_safe_store_file() -> None:
    site = Site(title="t", description="", base_url="https://planet.example.org/",
                language="en", timezone=TZ)
    from datetime import UTC, datetime

    now = datetime(2025, 3, 1, tzinfo=UTC)
    tz = ZoneInfo(TZ)
    problems: dict[str, list[str]] = {}
    entries = 0
    for path in corpus_files():
        name = path.relative_to(CORPUS).as_posix()
        try:
            feed = parse_feed(path.read_bytes(), {}, path.as_uri(), "corpus")
        except ParseError:
            continue
        source = Source(id="corpus", url=path.as_uri(), categories=("corpus",))
        for entry in feed.entries:
            item = build_item(entry, source, feed, site, {}, now)
            if item is None:
                continue
            entries += 1
            text = render_item(item)
            try:
                back = read_item(text, tz, "x.md")
            except ValueError as e:
                problems.setdefault(name, []).append(f"does not read back: {e}")
                continue
            if (back.title, back.link, back.guid, back.tags) != (
                    item.title, item.link, item.guid, item.tags):
                problems.setdefault(name, []).append(
                    f"round trip changed {(item.title, item.link, item.guid, item.tags)!r} "
                    f"to {(back.title, back.link, back.guid, back.tags)!r}")
            found = unsafe_parts(markdown_to_html(back.body, back.link))
            if found:
                problems.setdefault(name, []).extend(found)
    assert entries > 500  # 574 when written: the corpus tests feed-level fields too
    assert not problems, problems
