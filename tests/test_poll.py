"""`aggregator poll` end to end (SPEC §3, §5, §6): the shipped sample feeds, dedupe across
real polls, hand edits and deletions, crash safety (including real kill -9), reindex, check.

The CLI runs as a real subprocess on a temporary directory; feeds come from the files
in examples/feeds/ or from the loopback feed_server. Where a test needs to stop a poll
at an exact point (between a file's rename and its index commit) it polls in-process.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import pytest

from aggregator.config import load_config
from aggregator.dedupe import normalize_link
from aggregator.pipeline import Workspace, poll
from aggregator.store import Store
from tests.feed_server import FeedServer
from tests.helpers import (
    REPO,
    assert_clean_exit,
    by_id,
    news_item,
    poll_json,
    read_store,
    rss_feed,
    run_cli,
    store_files,
    store_snapshot,
    temp_files,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

SEED = "seed/2025-02-14-hospital-llm-diagnosis.md"


def clock() -> datetime:
    return datetime.now(UTC)


def poll_in_process(config: Path, *ids: str) -> dict[str, Any]:
    """One poll in this process; {source id: SourceReport}."""
    cfg = load_config(config)
    with Workspace(cfg) as ws:
        sources = [s for s in cfg.sources if not ids or s.id in ids]
        return {r.id: r for r in poll(ws, sources, clock)}


def links_of(store: Path) -> list[str]:
    return [normalize_link(i.link) for i in read_store(store).values() if i.link]


# -- the shipped sample feeds --------------------------------------------------------------------
@pytest.fixture
def sample_site(tmp_path: Path) -> Path:
    """A copy of the repo's feeds.yaml, examples/feeds/ and the seed post; returns feeds.yaml."""
    shutil.copytree(REPO / "examples" / "feeds", tmp_path / "examples" / "feeds")
    shutil.copy(REPO / "feeds.yaml", tmp_path / "feeds.yaml")
    (tmp_path / "store" / "seed").mkdir(parents=True)
    shutil.copy2(REPO / "store" / SEED, tmp_path / "store" / SEED)
    return tmp_path / "feeds.yaml"


def _feed_titles(path: Path) -> list[str]:
    parsed = feedparser.parse(path.read_bytes())
    assert not parsed.bozo or parsed.entries
    return [" ".join(e.title.split()) for e in parsed.entries]


def test_first_poll_of_sample_feeds(sample_site: Path) -> None:
    feeds = sample_site.parent / "examples" / "feeds"
    store = sample_site.parent / "store"
    seed_before = (store / SEED).read_bytes(), (store / SEED).stat().st_mtime_ns
    result = run_cli("poll", "--json", config=sample_site)
    assert_clean_exit(result, 0)
    summary = json.loads(result.stdout)
    assert set(summary) == {"sources", "new", "updated", "errors"}
    assert [s["id"] for s in summary["sources"]] == [
        "rss2-sample", "atom-sample", "rss1-sample", "json-sample", "gbk-sample"]
    for s in summary["sources"]:
        assert set(s) == {"id", "status", "new", "updated", "error"}
        assert s["status"] == "ok" and s["error"] is None
        assert isinstance(s["new"], int) and isinstance(s["updated"], int)
    assert summary["errors"] == 0
    assert summary["new"] == sum(s["new"] for s in summary["sources"])
    assert summary["updated"] == sum(s["updated"] for s in summary["sources"])

    items = read_store(store)
    per_source = Counter(i.source for i in items.values())
    rss2 = _feed_titles(feeds / "rss2.xml")
    opinion = [t for t in rss2 if t.startswith("Opinion:")]
    assert len(opinion) == 1  # excluded by the shipped feeds.yaml
    assert per_source["rss2-sample"] == len(rss2) - 1
    # atom's first entry is rss2's shared story: merged, not a file of its own
    assert per_source["atom-sample"] == len(_feed_titles(feeds / "atom.xml")) - 1
    assert per_source["rss1-sample"] == len(_feed_titles(feeds / "rss1.xml"))
    json_items = json.loads((feeds / "feed.json").read_text("utf-8"))["items"]
    assert per_source["json-sample"] == len(json_items)
    assert per_source["gbk-sample"] == len(_feed_titles(feeds / "gbk.xml"))
    assert per_source[None] == 1  # the seed
    assert summary["new"] == len(items) - 1
    for source, count in per_source.items():
        assert by_id(summary).get(source, {"new": count})["new"] == count

    links = links_of(store)
    assert len(links) == len(set(links)), "one file per item"
    shared = [i for i in items.values() if i.link and "shared-story" in i.link]
    assert len(shared) == 1
    assert shared[0].sources == ("rss2-sample", "atom-sample")
    assert {"rss2-sample", "atom-sample"} <= set(shared[0].all_sources)

    # the JSON Feed and RSS 1.0 items, by title
    stored_titles = {i.title for i in items.values()}
    assert {" ".join(i["title"].split()) for i in json_items} <= stored_titles
    assert set(_feed_titles(feeds / "rss1.xml")) <= stored_titles
    assert not any(t.startswith("Opinion:") for t in stored_titles)

    # theme keys from front_matter are written into new files
    rss1_item = next(i for i in items.values() if i.source == "rss1-sample")
    assert rss1_item.extra.get("sidebar") == "right"
    assert rss1_item.extra.get("widgets") == ["search", "recent", "taglist"]

    assert ((store / SEED).read_bytes(), (store / SEED).stat().st_mtime_ns) == seed_before


def test_gbk_feed_titles_are_decoded_right(sample_site: Path) -> None:
    poll_json(sample_site, expect=(0,))
    raw = (sample_site.parent / "examples" / "feeds" / "gbk.xml").read_bytes()
    text = raw.decode("gb18030")  # what the GBK bytes really say
    expected = [t.strip() for t in re.findall(r"<item>.*?<title>(.*?)</title>", text, re.S)]
    assert len(expected) >= 6
    items = [i for i in read_store(sample_site.parent / "store").values()
             if i.source == "gbk-sample"]
    assert sorted(i.title for i in items) == sorted(expected)
    titles = " ".join(i.title for i in items)
    assert "李喆" in titles and "张珺" in titles  # GBK-only: not in GB2312
    everything = " ".join(f"{i.author} {i.body}" for i in items)
    assert "陈镕" in everything
    assert "\ufffd" not in titles + everything
    assert all(i.lang == ("zh-CN",) for i in items)


def test_second_poll_changes_nothing(sample_site: Path) -> None:
    poll_json(sample_site, expect=(0,))
    store = sample_site.parent / "store"
    before = store_snapshot(store)
    time.sleep(0.01)  # a rewrite would show in mtime_ns even on coarse clocks
    second = poll_json(sample_site, expect=(0,))
    assert [s["status"] for s in second["sources"]] == ["not_modified"] * 5
    assert (second["new"], second["updated"], second["errors"]) == (0, 0, 0)
    assert store_snapshot(store) == before


def test_seed_post_is_published_as_is_and_untouched(sample_site: Path) -> None:
    store = sample_site.parent / "store"
    before = (store / SEED).read_bytes(), (store / SEED).stat().st_mtime_ns
    poll_json(sample_site, expect=(0,))
    poll_json(sample_site, force=True, expect=(0,))
    assert ((store / SEED).read_bytes(), (store / SEED).stat().st_mtime_ns) == before


# -- dedupe through real polls --------------------------------------------------------------------
def test_same_link_with_tracking_params_in_two_sources_is_one_file(feed_server: FeedServer,
                                                                  tmp_path: Path) -> None:
    feed_server.route("/one.xml", body=rss_feed([news_item(
        1, link="https://example.org/news/1", categories=["alpha"])]))
    feed_server.route("/two.xml", body=rss_feed([news_item(
        1, guid="other-guid", categories=["beta"],
        link="https://EXAMPLE.org:443/news/1?utm_source=rss&utm_medium=feed#top")]))
    config = write_config(tmp_path, [
        {"id": "one", "url": feed_server.url("/one.xml"), "tags": ["t-one"]},
        {"id": "two", "url": feed_server.url("/two.xml"), "tags": ["t-two"],
         "categories": ["cat-two"]},
    ])
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["one"]["new"] == 1
    assert by_id(summary)["two"]["new"] == 0
    items = list(read_store(tmp_path / "store").values())
    assert len(items) == 1
    item = items[0]
    assert item.source == "one"
    assert item.sources == ("one", "two")
    assert {"t-one", "alpha", "t-two", "beta"} <= set(item.tags)
    assert {"one", "cat-two"} <= set(item.categories)
    # polling again adds nothing twice
    poll_json(config, expect=(0,))
    again = list(read_store(tmp_path / "store").values())
    assert again == items


def test_rotating_guids_with_stable_links_create_no_files(feed_server: FeedServer,
                                                          tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"id": "rot", "url": feed_server.url("/rot.xml")}])
    for poll_number in range(4):
        feed_server.route("/rot.xml", body=rss_feed(
            [news_item(n, guid=f"{n}-{poll_number}-{random.random()}") for n in range(3)]))
        summary = poll_json(config, expect=(0,))
        assert by_id(summary)["rot"]["new"] == (3 if poll_number == 0 else 0)
    assert len(store_files(tmp_path / "store")) == 3


def test_rotating_guids_without_links_create_no_files(feed_server: FeedServer,
                                                      tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"id": "rot", "url": feed_server.url("/rot.xml")}])
    for poll_number in range(3):
        feed_server.route("/rot.xml", body=rss_feed(
            [news_item(n, link=None, guid=f"urn:uuid:{poll_number}-{n}") for n in range(3)]
            + [news_item(10 + n, link=None, guid=None) for n in range(2)]))  # neither
        summary = poll_json(config, expect=(0,))
        assert by_id(summary)["rot"]["new"] == (5 if poll_number == 0 else 0)
    assert len(store_files(tmp_path / "store")) == 5


def test_changed_entry_is_updated_in_place_with_lastmod(feed_server: FeedServer,
                                                        tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1), news_item(2)]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    poll_json(config, expect=(0,))
    store = tmp_path / "store"
    first = read_store(store)
    assert not any(i.lastmod for i in first.values())

    feed_server.route("/f.xml", body=rss_feed([
        news_item(1, title="Story one, corrected", content="<p>New text.</p>"), news_item(2)]))
    summary = poll_json(config, expect=(0,))
    assert (by_id(summary)["f"]["new"], by_id(summary)["f"]["updated"]) == (0, 1)
    second = read_store(store)
    assert set(second) == set(first)  # same paths
    changed = [p for p in second if second[p] != first[p]]
    assert len(changed) == 1
    item = second[changed[0]]
    assert item.title == "Story one, corrected"
    assert "New text." in item.body
    assert item.lastmod is not None
    assert item.date == first[changed[0]].date  # the date it was published stays


def test_content_that_changes_on_every_poll_is_updated_at_most_24_times(
        feed_server: FeedServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"id": "churn", "url": feed_server.url("/churn.xml")}])
    updates = []
    path = None
    for poll_number in range(30):
        feed_server.route("/churn.xml", body=rss_feed([news_item(
            1, content=f"<p>Story.</p><p>Ad slot {poll_number}, shown at {time.time()}</p>")]))
        report = poll_in_process(config)["churn"]
        assert report.status == "ok"
        updates.append(report.updated)
        files = store_files(tmp_path / "store")
        assert len(files) == 1
        path = path or files[0]
        assert files[0] == path
        if poll_number == 24:
            frozen = path.read_bytes(), path.stat().st_mtime_ns
    assert updates[1] == 1  # a change is applied at first
    assert sum(updates) <= 24
    assert updates[-5:] == [0] * 5
    assert (path.read_bytes(), path.stat().st_mtime_ns) == frozen


def test_hand_edited_file_is_not_overwritten(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1)]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")},
                                     {"id": "g", "url": feed_server.url("/g.xml")}])
    feed_server.route("/g.xml", body=rss_feed([]))
    poll_json(config, expect=(0,))
    [path] = store_files(tmp_path / "store")
    edited = path.read_text("utf-8").replace("First paragraph", "Paragraph fixed by the editor")
    path.write_text(edited, encoding="utf-8")

    feed_server.route("/f.xml", body=rss_feed([news_item(1, title="Retitled upstream")]))
    feed_server.route("/g.xml", body=rss_feed([news_item(1, guid="g-1")]))  # same link
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["f"]["updated"] == 0
    assert path.read_text("utf-8") == edited
    assert len(store_files(tmp_path / "store")) == 1


def test_deleted_file_does_not_come_back(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1), news_item(2)]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    poll_json(config, expect=(0,))
    store = tmp_path / "store"
    victim = next(p for p, i in read_store(store).items() if i.guid == "story-1")
    (store / victim).unlink()

    poll_json(config, expect=(0,))  # unchanged entry
    assert not (store / victim).exists()
    feed_server.route("/f.xml", body=rss_feed([news_item(1, title="Story 1 updated"),
                                               news_item(2)]))
    poll_json(config, expect=(0,))  # changed entry
    poll_json(config, force=True, expect=(0,))
    assert not (store / victim).exists()
    assert [i.guid for i in read_store(store).values()] == ["story-2"]


def test_an_entry_nested_too_deeply_loses_only_itself(feed_server: FeedServer,
                                                       tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([
        news_item(1, content="<div>" * 5000 + "deep" + "</div>" * 5000),
        news_item(2, content="<ul><li>" * 3000 + "deep" + "</li></ul>" * 3000),
        news_item(3),
    ]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    summary = poll_json(config, expect=(0,))  # no "internal error", no traceback
    assert by_id(summary)["f"]["status"] == "ok"
    guids = {i.guid for i in read_store(tmp_path / "store").values()}
    assert "story-3" in guids


def test_include_and_exclude_filters(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([
        news_item(1, title="AI model reads CT scans"),
        news_item(2, title="Weather for the weekend"),
        news_item(3, title="Sponsored: an AI pill"),
        news_item(4, title="Hospital news", description="<p>A new 大模型 helps doctors.</p>"),
    ]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml"),
                                      "include": [r"\bAI\b", "大模型"],
                                      "exclude": ["^Sponsored"]}])
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["f"]["new"] == 2
    titles = sorted(i.title for i in read_store(tmp_path / "store").values())
    assert titles == ["AI model reads CT scans", "Hospital news"]


# -- crash safety ----------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no except clause catches it."""


@pytest.mark.parametrize("crash_at_write", [1, 2, 3])
def test_crash_between_rename_and_index_commit_leaves_no_duplicate(
        feed_server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        crash_at_write: int) -> None:
    # writes: one's item 1, one's item 2, then two's copy of item 1 merged into its file
    feed_server.route("/one.xml", body=rss_feed([news_item(1), news_item(2)]))
    feed_server.route("/two.xml", body=rss_feed([news_item(1, guid="two-1",
                                                           link="https://example.org/news/1?spm=x")]))
    config = write_config(tmp_path, [{"id": "one", "url": feed_server.url("/one.xml")},
                                     {"id": "two", "url": feed_server.url("/two.xml")}])
    original = Store.write
    writes = []

    def write_then_die(self: Store, relative: str, data: bytes) -> None:
        original(self, relative, data)  # the rename is done...
        writes.append(relative)
        if len(writes) == crash_at_write:
            raise Killed  # ...the index commit never happens

    monkeypatch.setattr(Store, "write", write_then_die)
    with pytest.raises(Killed):
        poll_in_process(config)
    monkeypatch.setattr(Store, "write", original)

    summary = poll_json(config, expect=(0,))
    assert summary["errors"] == 0
    store = tmp_path / "store"
    items = read_store(store)
    assert len(items) == 2
    links = links_of(store)
    assert len(links) == len(set(links))
    assert temp_files(store) == []
    assert set(next(i for i in items.values() if i.guid == "story-1").all_sources) == {
        "one", "two"}
    # and a third poll is quiet
    third = poll_json(config, force=True, expect=(0,))
    assert (third["new"], third["updated"]) == (0, 0)


def test_a_journal_cut_short_by_the_kill_is_replayed_up_to_the_cut(
        feed_server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(n) for n in range(1, 4)]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    original = Store.write
    writes: list[str] = []

    def write_then_die(self: Store, relative: str, data: bytes) -> None:
        original(self, relative, data)
        writes.append(relative)
        if len(writes) == 2:
            raise Killed

    monkeypatch.setattr(Store, "write", write_then_die)
    with pytest.raises(Killed):
        poll_in_process(config)
    monkeypatch.setattr(Store, "write", original)
    [journal] = (tmp_path / "store" / ".aggregator" / "pending").iterdir()
    assert len(journal.read_text(encoding="utf-8").splitlines()) == 2  # one line per write
    with journal.open("a", encoding="utf-8") as f:
        f.write('{"path": "2025/01/cut-sh')  # the kill landed inside a write

    summary = poll_json(config, expect=(0,))
    assert (summary["errors"], summary["new"]) == (0, 1)  # the two journaled are known
    links = links_of(tmp_path / "store")
    assert len(links) == 3 == len(set(links))
    assert list((tmp_path / "store" / ".aggregator" / "pending").iterdir()) == []


def test_crash_during_an_update_does_not_freeze_the_item(
        feed_server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1)]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    poll_json(config, expect=(0,))
    original = Store.write

    def write_then_die(self: Store, relative: str, data: bytes) -> None:
        original(self, relative, data)
        raise Killed

    feed_server.route("/f.xml", body=rss_feed([news_item(1, title="Second version")]))
    monkeypatch.setattr(Store, "write", write_then_die)
    with pytest.raises(Killed):
        poll_in_process(config)
    monkeypatch.setattr(Store, "write", original)

    feed_server.route("/f.xml", body=rss_feed([news_item(1, title="Third version")]))
    poll_json(config, expect=(0,))
    [item] = read_store(tmp_path / "store").values()
    assert item.title == "Third version"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_stale_temp_files_of_dead_processes_are_swept(feed_server: FeedServer,
                                                      tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1)]))
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    tmp = tmp_path / "store" / ".aggregator" / "tmp"
    tmp.mkdir(parents=True)
    stale = tmp / f"{_dead_pid()}-abc123.tmp"
    stale.write_text("---\ntitle: half writ")
    live = tmp / f"{os.getpid()}-def456.tmp"  # this test process is alive: not ours to remove
    live.write_text("in progress")
    poll_json(config, expect=(0,))
    assert not stale.exists()
    assert live.exists()
    assert len(store_files(tmp_path / "store")) == 1


def _write_corpus(directory: Path, revision: int) -> list[dict[str, str]]:
    """200 items in 4 local feeds, 20 of them also in a 5th feed under other guids."""
    sources = []
    body = "<p>" + "A sentence about a clinical model and its evaluation. " * 30 + "</p>"
    for k in range(4):
        items = [news_item(k * 50 + n, content=f"{body}<p>revision {revision}</p>")
                 for n in range(50)]
        (directory / f"feed{k}.xml").write_bytes(rss_feed(items, title=f"Feed {k}"))
        sources.append({"id": f"feed{k}", "url": f"feed{k}.xml"})
    mirror = [news_item(n * 10, guid=f"mirror-{n}", content=f"<p>mirror {revision}</p>",
                        link=f"https://example.org/news/{n * 10}?utm_source=mirror")
              for n in range(20)]
    (directory / "mirror.xml").write_bytes(rss_feed(mirror, title="Mirror"))
    sources.append({"id": "mirror", "url": "mirror.xml"})
    return sources


def _check_store_sound(store: Path) -> dict[str, Any]:
    items = read_store(store)  # every file parses: no partial file
    links = [normalize_link(i.link) for i in items.values() if i.link]
    duplicates = [link for link, n in Counter(links).items() if n > 1]
    assert not duplicates, duplicates
    return items


def _writes_began(store: Path, since_ns: int) -> bool:
    """Has any item file been written since `since_ns` (time.time_ns())?"""
    for folder in store.iterdir() if store.is_dir() else ():
        if folder.is_dir() and not folder.name.startswith("."):
            with os.scandir(folder) as entries:
                if any(e.stat().st_mtime_ns >= since_ns for e in entries):
                    return True
    return False


@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_leaves_no_partial_file_or_duplicate(tmp_path: Path) -> None:
    config = write_config(tmp_path, _write_corpus(tmp_path, 0))
    store = tmp_path / "store"
    # How long one full poll takes here, so the kills land anywhere inside one.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch_config = write_config(scratch, _write_corpus(scratch, 0))
    started = time.monotonic()
    assert_clean_exit(run_cli("-q", "poll", config=scratch_config), 0)
    full_run = time.monotonic() - started

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    for revision in range(1, 6):
        _write_corpus(tmp_path, revision)  # new content: every run has writes to do
        since = time.time_ns() - 10_000_000  # a little slack for coarse file-system clocks
        process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "-q", "poll"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        if revision % 2:  # anywhere in the run, start-up included
            delay = rng.uniform(0, full_run)
        else:  # while it writes: wait for its first file, then a little more
            deadline = time.monotonic() + 60
            while (process.poll() is None and not _writes_began(store, since)
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            delay = rng.uniform(0, full_run / 4)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        assert b"Traceback" not in stderr, (seed, stderr.decode(errors="replace"))
        _check_store_sound(store)

    result = run_cli("poll", "--json", config=config)
    assert_clean_exit(result, 0)
    items = _check_store_sound(store)
    assert len(items) == 200, f"seed {seed}"
    assert temp_files(store) == [], f"seed {seed}"
    # Every mirrored item is listed under the mirror source (`sources` counts what the
    # index lists; a file whose update a kill cut short is repaired from the journal).
    listing = run_cli("sources", "--json", config=config)
    assert_clean_exit(listing, 0)
    counts = {s["id"]: s["items"] for s in json.loads(listing.stdout)["sources"]}
    assert counts["mirror"] == 20, f"seed {seed}"
    assert sum(counts[f"feed{k}"] for k in range(4)) == 200, f"seed {seed}"


# -- reindex -------------------------------------------------------------------------------------------
def _delete_index(store: Path) -> None:
    for path in (store / ".aggregator").glob("index.sqlite*"):
        path.unlink()


def test_reindex_rebuilds_the_index_and_polls_make_no_duplicates(sample_site: Path) -> None:
    poll_json(sample_site, expect=(0,))
    store = sample_site.parent / "store"
    before = store_snapshot(store)
    _delete_index(store)
    result = run_cli("reindex", config=sample_site)
    assert_clean_exit(result, 0)
    assert str(len(before)) in result.stderr  # says how many files it read
    assert store_snapshot(store) == before  # reindex reads, never writes, the files

    summary = poll_json(sample_site, force=True, expect=(0,))
    assert (summary["new"], summary["updated"]) == (0, 0)
    assert store_snapshot(store) == before


def test_reindex_keeps_http_state_and_deleted_items(feed_server: FeedServer,
                                                    tmp_path: Path) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1), news_item(2)]), etag='"v1"')
    config = write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}])
    poll_json(config, expect=(0,))
    store = tmp_path / "store"
    victim = next(p for p, i in read_store(store).items() if i.guid == "story-1")
    (store / victim).unlink()  # deleted by a person; no poll has noticed yet

    assert_clean_exit(run_cli("reindex", config=config), 0)
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["f"]["status"] == "not_modified"
    assert feed_server.requests_for("/f.xml")[-1].headers.get("If-None-Match") == '"v1"'

    feed_server.route("/f.xml", body=rss_feed([news_item(1, title="Story 1 again"),
                                               news_item(2), news_item(3)]), etag='"v2"')
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["f"]["new"] == 1  # only story 3
    assert not (store / victim).exists()
    assert sorted(i.guid for i in read_store(store).values()) == ["story-2", "story-3"]


def test_reindex_then_rotating_guids_without_links_make_no_duplicates(
        feed_server: FeedServer, tmp_path: Path) -> None:
    """Such entries are known only by their text; reindex must rebuild that key too."""
    def serve(poll_number: int) -> None:
        feed_server.route("/rot.xml", body=rss_feed(
            [news_item(n, link=None, guid=f"urn:uuid:{poll_number}-{n}") for n in range(3)]))

    config = write_config(tmp_path, [{"id": "rot", "url": feed_server.url("/rot.xml")}])
    serve(0)
    poll_json(config, expect=(0,))
    assert_clean_exit(run_cli("reindex", config=config), 0)
    serve(1)
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["rot"]["new"] == 0
    assert len(store_files(tmp_path / "store")) == 3


def test_two_polls_at_once_make_no_duplicates(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/a.xml", body=rss_feed([news_item(n) for n in range(30)]), delay=0.2)
    feed_server.route("/b.xml", body=rss_feed(
        [news_item(n, guid=f"b-{n}", link=f"https://example.org/news/{n}?utm_source=b")
         for n in range(30)]), delay=0.2)
    config = write_config(tmp_path, [{"id": "a", "url": feed_server.url("/a.xml")},
                                     {"id": "b", "url": feed_server.url("/b.xml")}])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "aggregator", "--config", str(config), "poll", "--json"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(3)]
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    items = read_store(tmp_path / "store")
    assert len(items) == 30
    assert all(set(i.all_sources) == {"a", "b"} for i in items.values())


def test_poll_after_losing_the_index_makes_no_duplicates(sample_site: Path) -> None:
    """The index is derived data: without it, files already written are found again."""
    poll_json(sample_site, expect=(0,))
    store = sample_site.parent / "store"
    before = store_snapshot(store)
    _delete_index(store)
    summary = poll_json(sample_site, expect=(0,))
    assert summary["new"] == 0
    assert set(store_snapshot(store)) == set(before)


# -- check ----------------------------------------------------------------------------------------------
def test_check_reports_broken_files_without_touching_them(sample_site: Path) -> None:
    poll_json(sample_site, expect=(0,))
    store = sample_site.parent / "store"
    broken = {
        "hand/bad-yaml.md": b'---\ntitle: "unclosed\ndate: [2025\n---\nbody\n',
        "hand/no-front-matter.md": b"Just some notes, no front matter.\n",
        "hand/latin1.md": '---\ntitle: "Caf\u00e9"\ndate: 2025-02-14\n---\nna\u00efve\n'.encode(
            "latin-1"),
    }
    (store / "hand").mkdir()
    for name, data in broken.items():
        (store / name).write_bytes(data)
    before = store_snapshot(store)

    result = run_cli("check", config=sample_site)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for name in broken:
        mentions = [line for line in lines if name in line]
        assert len(mentions) == 1, (name, result.stderr)
    assert "UTF-8" in next(line for line in lines if "latin1.md" in line)
    assert "front matter" in next(line for line in lines if "no-front-matter.md" in line)
    assert not any(SEED in line for line in lines)  # the hand-written seed is fine
    assert store_snapshot(store) == before


def test_check_of_a_sound_store_exits_0(sample_site: Path) -> None:
    poll_json(sample_site, expect=(0,))
    result = run_cli("check", config=sample_site)
    assert_clean_exit(result, 0)
    assert "0 broken" in result.stderr


# -- this process parses while the worker is busy ---------------------------------------------
def _block(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def test_a_feed_no_worker_has_started_is_parsed_here_with_the_same_result(
        tmp_path: Path) -> None:
    import multiprocessing
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor

    from aggregator.model import FetchResult
    from aggregator.pipeline import Fetched, _collect, _steal, prepare_in_worker

    config = write_config(tmp_path, [{"id": "f", "url": "http://127.0.0.1:9/f.xml"}])
    cfg = load_config(config)
    source = cfg.sources[0]
    body = rss_feed([news_item(1), news_item(2, title="医院接入大模型")])
    now = datetime(2025, 1, 6, tzinfo=UTC)
    job = (body, {"content-type": "application/rss+xml"}, source.url, source, cfg.site,
           dict(cfg.front_matter), now, frozenset())
    result = FetchResult(status="ok", url=source.url, body=body)
    with ProcessPoolExecutor(max_workers=1,
                             mp_context=multiprocessing.get_context("forkserver")) as pool:
        busy = pool.submit(_block, 3.0)  # the one worker is busy...
        time.sleep(0.5)
        queued = [pool.submit(prepare_in_worker, *job) for _ in range(3)]  # ...these wait
        done: Future[Fetched] = Future()
        done.set_result(Fetched(now, 0.0, None, result=result,  # type: ignore[arg-type]
                                preparing=queued[-1], job=job))
        pending = deque([(source, done)])
        stolen: dict[int, Any] = {}
        assert _steal(pending, stolen)
        assert queued[-1].cancelled()
        assert not _steal(pending, stolen)  # nothing else to take
        here = _collect(source, done.result(), stolen).prepared
        assert stolen == {}
        there = queued[0].result(timeout=60)  # the same job, parsed by the worker
        assert busy.result(timeout=60) == "slept"
    assert here is not None and here == there
    assert [c.item.title for c in here.items] == ["Story number 1 about clinical models",
                                                  "医院接入大模型"]


def _die() -> None:
    os._exit(1)  # a worker killed (out of memory, kill -9)


def test_when_a_worker_dies_its_feeds_are_parsed_here() -> None:
    from concurrent.futures import wait

    from aggregator.pipeline import _LazyPool, _take

    pool = _LazyPool(1)
    try:
        first = pool.submit(_die)
        second = pool.submit(_block, 0.0)
        deadline = time.monotonic() + 60
        while not (_take(first) and _take(second)):  # both come back to this process
            assert time.monotonic() < deadline, "the dead worker's jobs never came back"
            time.sleep(0.05)
        later = pool.submit(_block, 0.0)  # the pool is broken: kept here, not lost
        wait([later], timeout=0.5)
        assert not later.done() and _take(later)
    finally:
        pool.shutdown()



def test_a_slow_server_first_in_line_holds_up_no_other_fetch(feed_server: FeedServer,
                                                              tmp_path: Path) -> None:
    """Storing goes in config order, but a source that waits (a slow server, a parse) keeps
    only its own slot: the 304s behind it, more than the poll keeps in flight, are all
    fetched while it waits."""
    from aggregator.pipeline import IN_FLIGHT

    others = 2 * IN_FLIGHT
    sources = [{"id": "slow", "url": feed_server.url("/slow.xml")}]
    feed_server.route("/slow.xml", body=rss_feed([news_item(0)]), etag='"s"')
    for n in range(others):
        feed_server.route(f"/f{n}.xml", body=rss_feed([news_item(n + 1)]), etag=f'"{n}"')
        sources.append({"id": f"f{n}", "url": feed_server.url(f"/f{n}.xml")})
    config = write_config(tmp_path, sources)
    assert poll_json(config)["new"] == others + 1

    feed_server.route("/slow.xml", body=rss_feed([news_item(0)]), etag='"s2"', delay=3)
    second = poll_json(config)
    assert [s["status"] for s in second["sources"]] == ["ok"] + ["not_modified"] * others
    slow_answered = feed_server.requests_for("/slow.xml")[1].answered
    assert slow_answered is not None
    late = [n for n in range(others) if feed_server.requests_for(f"/f{n}.xml")[1].time > slow_answered]
    assert late == []  # every other source was asked before the slow one answered


def test_a_poll_with_a_few_changed_feeds_starts_no_worker(feed_server: FeedServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator import pipeline

    started: list[int] = []
    real_pool = pipeline.worker_pool
    monkeypatch.setattr(pipeline, "worker_pool", lambda n: started.append(n) or real_pool(n))
    count = max(pipeline.PARSE_HERE_FIRST, pipeline.PARSE_IN_PROCESSES_MIN) + 4
    sources = []
    for n in range(count):
        feed_server.route(f"/f{n}.xml", body=rss_feed([news_item(n)]), etag=f'"{n}-a"')
        sources.append({"id": f"f{n}", "url": feed_server.url(f"/f{n}.xml")})
    config = write_config(tmp_path, sources)
    first = poll_in_process(config)
    assert sum(r.new for r in first.values()) == count
    assert len(started) == 1  # more changed feeds than this process parses alone

    for n in range(3):  # a cron poll: a few feeds changed, the rest 304
        feed_server.route(f"/f{n}.xml", body=rss_feed([news_item(n), news_item(100 + n)]),
                          etag=f'"{n}-b"')
    second = poll_in_process(config)
    assert [second[f"f{n}"].new for n in range(3)] == [1, 1, 1]
    assert {second[f"f{n}"].status for n in range(3, count)} == {"not_modified"}
    assert len(started) == 1  # parsed here: no worker for three feeds
