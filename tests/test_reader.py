"""A real feed reader reads what we publish: newsboat, run non-interactively.

The shipped sample site (feeds.yaml, examples/, the seed store) is polled and
published with the real CLI and served by `aggregator serve`; newsboat then
subscribes to the site-wide RSS and Atom feeds and to feeds under Chinese
(percent-encoded) paths, and its cache must hold exactly the store's items, with
their titles as written, Chinese ones included.

Each feed gets its own newsboat cache: newsboat keeps one row per guid across all
its feeds, and our RSS and Atom feeds of one item share its guid on purpose (SPEC §4).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from aggregator.model import Item
from tests.daemon_helpers import ServerProcess, free_port, running
from tests.helpers import REPO, assert_clean_exit, read_store, run_cli

NEWSBOAT = shutil.which("newsboat")
READER_TIMEOUT = 60

pytestmark = pytest.mark.skipif(
    NEWSBOAT is None, reason="newsboat is not installed (Debian: apt-get install newsboat)")


@dataclass
class Site:
    server: ServerProcess
    items: list[Item]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The shipped sample config, polled, published and served from a temporary copy."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(REPO / "feeds.yaml", root / "feeds.yaml")
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copytree(REPO / "store", root / "store", ignore=shutil.ignore_patterns(".aggregator"))
    config = root / "feeds.yaml"
    assert_clean_exit(run_cli("poll", config=config), 0)
    assert_clean_exit(run_cli("publish", config=config), 0)
    items = list(read_store(root / "store").values())
    assert 20 <= len(items) < 50  # every item fits in one feed (keep_items: 50)
    port = free_port()
    with running(["--config", str(config), "serve", "--bind", f"127.0.0.1:{port}"],
                 config, port, root / "logs") as server:
        yield Site(server, items)


def _everything(item: Item) -> bool:
    return True


FEEDS: list[tuple[str, Callable[[Item], bool]]] = [
    ("/index.xml", _everything),
    ("/atom.xml", _everything),
    ("/tags/人工智能/index.xml", lambda item: "人工智能" in item.tags),
    ("/categories/国内资讯/atom.xml", lambda item: "国内资讯" in item.categories),
    # Chinese titles that reached us as GBK bytes, republished as UTF-8.
    ("/sources/gbk-sample/index.xml", lambda item: "gbk-sample" in item.all_sources),
    ("/feed.json", _everything),
]


def _reads_json_feed(binary: str) -> bool:
    """Whether this newsboat knows JSON Feed (its parser would name jsonfeed.org)."""
    return b"jsonfeed.org" in Path(binary).read_bytes()


def newsboat(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run newsboat with every file it may write (config, cache, lock, history) in `work`."""
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local" / "share"),
           "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".state"),
           "TERM": "dumb", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    assert NEWSBOAT is not None
    return subprocess.run(
        [NEWSBOAT, "-u", str(work / "urls"), "-c", str(work / "cache.db"),
         "-C", str(work / "config"), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, encoding="utf-8",
        errors="replace", timeout=READER_TIMEOUT, env=env, cwd=work, check=False)


@pytest.mark.parametrize(("path", "wanted"), FEEDS, ids=[path for path, _ in FEEDS])
def test_newsboat_reads_the_published_feed(site: Site, tmp_path: Path, path: str,
                                           wanted: Callable[[Item], bool]) -> None:
    if path.endswith(".json") and not _reads_json_feed(NEWSBOAT or ""):
        pytest.skip("this newsboat reads RSS and Atom only, not JSON Feed")
    expected = sorted(item.title for item in site.items if wanted(item))
    assert expected, f"the sample store has no items for {path}"
    url = site.server.url(quote(path))
    (tmp_path / "urls").write_text(url + "\n", encoding="utf-8")
    (tmp_path / "config").write_text("", encoding="utf-8")

    reload = newsboat(tmp_path, "-x", "reload")
    assert reload.returncode == 0, reload.stdout + reload.stderr
    unread = newsboat(tmp_path, "-x", "print-unread")
    assert unread.returncode == 0, unread.stdout + unread.stderr
    assert unread.stdout.strip() == f"{len(expected)} unread articles"

    with sqlite3.connect(tmp_path / "cache.db") as db:
        rows = db.execute("SELECT title, url, feedurl FROM rss_item").fetchall()
        feed_title = db.execute("SELECT title FROM rss_feed WHERE rssurl = ?", (url,)).fetchone()
    assert sorted(title for title, _, _ in rows) == expected
    assert {feedurl for _, _, feedurl in rows} == {url}
    links = {item.title: item.link for item in site.items if item.link}
    assert {title: link for title, link, _ in rows if title in links} == {
        title: links[title] for title in expected if title in links}
    assert feed_title and feed_title[0].startswith("智能医疗资讯"), feed_title
    assert not (tmp_path / "home" / ".newsboat" / "cache.db").exists()


def test_newsboat_can_open_every_item(site: Site, tmp_path: Path) -> None:
    url = site.server.url("/index.xml")
    (tmp_path / "urls").write_text(url + "\n", encoding="utf-8")
    (tmp_path / "config").write_text("", encoding="utf-8")
    assert newsboat(tmp_path, "-x", "reload").returncode == 0
    with sqlite3.connect(tmp_path / "cache.db") as db:
        rows = db.execute("SELECT title, url FROM rss_item").fetchall()
    assert len(rows) == len(site.items)
    assert [title for title, link in rows if not link.startswith(("http://", "https://"))] == []
