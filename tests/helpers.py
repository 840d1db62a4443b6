"""Helpers for tests that poll: a feeds.yaml writer, the real CLI, feeds built from dicts,
and views of a store directory.

    config = write_config(tmp_path, sources=[{"id": "a", "url": server.url("/a.xml")}])
    report = poll_json(config)                     # runs `aggregator poll --json`
    files = store_snapshot(tmp_path / "store")     # {relative path: (bytes, mtime_ns)}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from html import escape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from aggregator.model import Item
from aggregator.store import read_item

REPO = Path(__file__).resolve().parents[1]
TZ = "Asia/Shanghai"
CLI_TIMEOUT = 120.0


def shared_dir() -> Path:
    """../shared next to the repository (a worktree may sit one level deeper)."""
    for candidate in (Path(__file__).resolve().parents[2] / "shared", REPO.parent / "shared"):
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "shared"


CORPUS = shared_dir() / "corpus" / "feedparser"


def write_config(directory: Path, sources: Iterable[Mapping[str, Any]] = (), *,
                 store: str = "store", output: str = "public",
                 defaults: Mapping[str, Any] | None = None,
                 front_matter: Mapping[str, Any] | None = None, **site: Any) -> Path:
    """Write directory/feeds.yaml and return its path. `site` keys override the defaults."""
    site_node = {"title": "Test site", "base_url": "http://127.0.0.1:8000/",
                 "language": "en", "timezone": TZ, **site}
    document: dict[str, Any] = {"site": site_node, "store": store, "output": output,
                                "defaults": {"timeout": "10s", **(defaults or {})},
                                "sources": [dict(s) for s in sources]}
    if front_matter:
        document["front_matter"] = dict(front_matter)
    path = directory / "feeds.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    return path


def run_cli(*args: str, config: Path | None = None, cwd: Path | None = None,
            timeout: float = CLI_TIMEOUT, env: Mapping[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run `python -m aggregator [--config FILE] ARGS...` as a real process."""
    command = [sys.executable, "-m", "aggregator"]
    if config is not None:
        command += ["--config", str(config)]
    command += list(args)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("AGGREGATOR_CONFIG", None)
    return subprocess.run(command, cwd=cwd or (config.parent if config else None),
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout,
                          env=full_env, check=False)


def assert_clean_exit(result: subprocess.CompletedProcess[str], *codes: int) -> None:
    """The process exited with one of `codes` and printed no traceback."""
    assert result.returncode in codes, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-3000:]}")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "internal error" not in result.stderr + result.stdout, result.stderr[-3000:]


def poll_json(config: Path, *ids: str, force: bool = False, expect: Iterable[int] = (0, 1),
              timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
    """`aggregator poll --json [--force] [IDS]`; the parsed summary plus "exit_code"."""
    args = ["poll", "--json", *(["--force"] if force else []), *ids]
    result = run_cli(*args, config=config, timeout=timeout)
    assert_clean_exit(result, *expect)
    summary = json.loads(result.stdout)
    summary["exit_code"] = result.returncode
    return summary


def by_id(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in summary["sources"]}


# -- the store ---------------------------------------------------------------------------------
def store_files(store: Path) -> list[Path]:
    """Every item file under store/, not the derived data under .aggregator/."""
    return sorted(p for p in store.rglob("*.md") if ".aggregator" not in p.relative_to(store).parts)


def store_snapshot(store: Path) -> dict[str, tuple[bytes, int]]:
    """{relative path: (bytes, mtime_ns)} of every item file."""
    return {p.relative_to(store).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in store_files(store)}


def read_store(store: Path, tz: str = TZ) -> dict[str, Item]:
    """{relative path: Item} of every item file; fails on a file that does not parse."""
    return {p.relative_to(store).as_posix(): read_item(p.read_text(encoding="utf-8"),
                                                       ZoneInfo(tz), p.name)
            for p in store_files(store)}


def temp_files(store: Path) -> list[Path]:
    tmp = store / ".aggregator" / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


# -- feeds -----------------------------------------------------------------------------------
def rss_feed(items: Iterable[Mapping[str, Any]], *, title: str = "Test feed",
             link: str = "https://example.org/", encoding: str = "utf-8",
             extra_channel: str = "") -> bytes:
    """An RSS 2.0 document. Item keys: title, link, guid, description, content (HTML),
    pubDate (datetime or string), categories (list), author."""
    parts = [f'<?xml version="1.0" encoding="{encoding}"?>',
             '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">',
             "<channel>", f"<title>{escape(title)}</title>", f"<link>{escape(link)}</link>",
             "<description>test</description>", extra_channel]
    for item in items:
        parts.append("<item>")
        for key in ("title", "link", "author"):
            if item.get(key) is not None:
                parts.append(f"<{key}>{escape(item[key])}</{key}>")
        if item.get("guid") is not None:
            parts.append(f'<guid isPermaLink="false">{escape(item["guid"])}</guid>')
        if item.get("description") is not None:
            parts.append(f"<description>{escape(item['description'])}</description>")
        if item.get("content") is not None:
            parts.append(f"<content:encoded>{escape(item['content'])}</content:encoded>")
        date = item.get("pubDate")
        if isinstance(date, datetime):
            date = format_datetime(date.astimezone(UTC), usegmt=True)
        if date:
            parts.append(f"<pubDate>{date}</pubDate>")
        for category in item.get("categories", ()):
            parts.append(f"<category>{escape(category)}</category>")
        parts.append("</item>")
    parts += ["</channel>", "</rss>", ""]
    return "\n".join(parts).encode(encoding)


def news_item(n: int, **overrides: Any) -> dict[str, Any]:
    """A plausible item number n, with a guid, link, date and two paragraphs."""
    item = {
        "title": f"Story number {n} about clinical models",
        "link": f"https://example.org/news/{n}",
        "guid": f"story-{n}",
        "description": f"<p>Summary of story {n}.</p>",
        "content": f"<p>First paragraph of story {n}.</p><p>Second paragraph.</p>",
        "pubDate": datetime(2025, 2, 1 + n % 27, 8, n % 60, tzinfo=UTC),
    }
    item.update(overrides)
    return item
