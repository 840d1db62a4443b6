"""Faults (SPEC §3, §6): `kill -9` of poll, publish and the daemon at random moments over
200 local feeds, and a full disk during a poll and during a publish.

Already covered elsewhere, so not repeated: kill -9 of `poll` alone over 5 feeds
(test_poll.py), a crash between a rename and the index commit (test_poll.py),
write_atomic's own ENOSPC handling (test_store_format.py), and broken store files
reported by `check` and skipped by `publish` (test_poll.py, test_publish.py).

The kill test is seeded (AGGREGATOR_FAULT_SEED overrides the seed; failures name it).
Each process runs in its own session; after SIGKILL to its pid, the rest of that
session (parse workers it forked) is killed by the session's id, the same pid.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from aggregator import store as store_module
from aggregator.config import load_config
from aggregator.dedupe import normalize_link
from aggregator.errors import PublishError
from aggregator.pipeline import Workspace, poll
from aggregator.publish import OUTPUT_TMP, publish
from tests.feed_server import FeedServer
from tests.helpers import (
    REPO,
    assert_clean_exit,
    by_id,
    news_item,
    read_store,
    rss_feed,
    run_cli,
    store_files,
    temp_files,
    write_config,
)

SEED = int(os.environ.get("AGGREGATOR_FAULT_SEED", "20250214"))
FEEDS = 200
KILLS = 21  # at least 20, spread over poll, publish and daemon
TERMS = ["医疗", "AI", "research", "hospital", "大模型", "policy", "imaging", "trials"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGGREGATOR_CONFIG", None)
    return env


class Corpus:
    """200 local RSS files that grow and change, revision by revision (seeded).

    Feed k starts with 3 items of its own; every tenth feed also carries the first two
    items of the next feed under other guids and a tracking-parameter link (the same
    items by dedupe rule 2). A revision adds an item to some feeds and rewrites the
    content of others; items are never dropped, so the last revision holds every link.
    """

    def __init__(self, directory: Path, rng: random.Random) -> None:
        self.directory = directory
        self.rng = rng
        self.counts = [3] * FEEDS
        self.revisions = [0] * FEEDS
        self.revision = 0

    def _item(self, k: int, n: int) -> dict[str, Any]:
        text = "<p>" + f"Feed {k} item {n} on clinical models and evaluation. " * 12 + "</p>"
        return news_item(k * 1000 + n, guid=f"f{k}-{n}", link=f"https://example.org/f{k}/{n}",
                         title=f"Feed {k} story {n}",
                         content=f"{text}<p>revision {self.revisions[k]}</p>",
                         categories=[TERMS[(k + n) % len(TERMS)], TERMS[k % 3]])

    def _feed(self, k: int) -> list[dict[str, Any]]:
        items = [self._item(k, n) for n in range(self.counts[k])]
        if k % 10 == 0:
            neighbour = (k + 1) % FEEDS
            items += [{**self._item(neighbour, n), "guid": f"mirror-{k}-{n}",
                       "link": f"https://example.org/f{neighbour}/{n}?utm_source=f{k}"}
                      for n in range(2)]
        return items

    def write(self, changed: range | list[int] | None = None) -> None:
        for k in changed if changed is not None else range(FEEDS):
            (self.directory / f"f{k:03d}.xml").write_bytes(
                rss_feed(self._feed(k), title=f"Feed {k}"))

    def step(self) -> None:
        """The next revision: 20 feeds gain an item, 30 get new content."""
        self.revision += 1
        grow = self.rng.sample(range(FEEDS), 20)
        edit = self.rng.sample(range(FEEDS), 30)
        for k in grow:
            self.counts[k] += 1
        for k in edit:
            self.revisions[k] = self.revision
        self.write(sorted(set(grow) | set(edit)))

    def sources(self) -> list[dict[str, str]]:
        return [{"id": f"f{k:03d}", "url": f"f{k:03d}.xml", "interval": "1s"}
                for k in range(FEEDS)]

    def links(self) -> set[str]:
        return {normalize_link(i["link"]) for k in range(FEEDS) for i in self._feed(k)}

    def links_of(self, k: int) -> set[str]:
        return {normalize_link(i["link"]) for i in self._feed(k)}


def _check_sound(store: Path, output: Path, context: str) -> int:
    """Every store file parses, no two share a link, every output file parses."""
    items = read_store(store)
    links = Counter(normalize_link(i.link) for i in items.values() if i.link)
    duplicates = [link for link, n in links.items() if n > 1]
    assert not duplicates, (context, duplicates[:5])
    for path in output.rglob("*") if output.is_dir() else ():
        if not path.is_file() or OUTPUT_TMP in path.parts:
            continue
        if path.suffix in (".xml", ".opml"):
            try:
                etree.fromstring(path.read_bytes())
            except etree.XMLSyntaxError as e:
                raise AssertionError(f"{context}: {path}: {e}") from None
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    return len(items)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _run_and_kill(args: list[str], config: Path, delay: float) -> tuple[bool, bytes, bool]:
    """Start `aggregator ARGS`; SIGKILL it after `delay` seconds unless it ended first.
    Returns (killed, stderr, whether processes it started outlived it by 10 s)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--config", str(config), "-q", *args],
        cwd=config.parent, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    killed = False
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed = True
    finally:
        # What it left in the session it leads (parse workers, the forkserver,
        # multiprocessing's resource tracker) must end on its own once its parent is
        # gone (workers watch it); the tracker then unlinks the pool's semaphores. Only
        # what is still there after 10 s is killed, and reported.
        deadline = time.monotonic() + 10
        while process.poll() is not None and _group_alive(process.pid) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        outlived = _group_alive(process.pid)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, stderr = process.communicate(timeout=30)
    return killed, stderr, outlived


@pytest.mark.timeout(420)
def test_kill_9_of_poll_publish_and_daemon_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    corpus = Corpus(tmp_path, rng)
    corpus.write()
    config = write_config(tmp_path, corpus.sources())
    store, output = tmp_path / "store", tmp_path / "public"
    commands = {"poll": ["poll"], "publish": ["publish"], "daemon": ["daemon"]}

    kills: Counter[str] = Counter()
    rounds = 0
    while sum(kills.values()) < KILLS:
        rounds += 1
        assert rounds <= 3 * KILLS, f"seed {SEED}: processes kept finishing first: {kills}"
        kind = ("poll", "publish", "daemon")[rounds % 3]
        if kind != "publish":
            corpus.step()  # new work for the next poll
        delay = rng.uniform(0.05, 1.5)
        killed, stderr, outlived = _run_and_kill(commands[kind], config, delay)
        context = f"seed {SEED}, round {rounds} ({kind}, {delay:.2f}s)"
        assert b"Traceback" not in stderr, (context, stderr.decode(errors="replace"))
        assert not outlived, f"{context}: its worker processes outlived it"
        kills[kind] += killed
        _check_sound(store, output, context)
    assert all(kills[k] for k in commands), kills

    # The next poll and publish finish the work.
    polled = run_cli("poll", "--json", config=config, timeout=180)
    assert_clean_exit(polled, 0)
    assert all(s["status"] in ("ok", "not_modified") for s in json.loads(polled.stdout)["sources"])
    assert temp_files(store) == [], f"seed {SEED}"
    published = run_cli("publish", config=config, timeout=180)
    assert_clean_exit(published, 0)
    tmp = output / OUTPUT_TMP
    assert not tmp.exists() or list(tmp.iterdir()) == [], f"seed {SEED}"
    count = _check_sound(store, output, f"seed {SEED}, after the last run")
    expected = corpus.links()
    assert count == len(expected), f"seed {SEED}"
    assert {normalize_link(i.link) for i in read_store(store).values()} == expected
    # Each source lists every item it carries, mirrored ones included.
    listing = run_cli("sources", "--json", config=config)
    assert_clean_exit(listing, 0)
    counts = {s["id"]: s["items"] for s in json.loads(listing.stdout)["sources"]}
    wrong = {f"f{k:03d}": (counts[f"f{k:03d}"], len(corpus.links_of(k))) for k in range(FEEDS)
             if counts[f"f{k:03d}"] != len(corpus.links_of(k))}
    assert not wrong, f"seed {SEED}: {wrong}"
    site = json.loads((output / "feed.json").read_text(encoding="utf-8"))
    assert len(site["items"]) == 50
    for k in range(FEEDS):  # and its feed holds them
        feed = json.loads((output / "sources" / f"f{k:03d}" / "feed.json").read_text("utf-8"))
        assert {normalize_link(i["url"]) for i in feed["items"]} == corpus.links_of(k), (
            f"seed {SEED}: f{k:03d}")


# -- a full disk ------------------------------------------------------------------------------
# The aggregator itself, with os.replace (write_atomic's rename into place) failing with
# ENOSPC after DISK_FULL_AFTER successful calls: what a user sees when the disk fills.
DISK_FULL_DRIVER = """
import errno, os
real_replace = os.replace
budget = [int(os.environ["DISK_FULL_AFTER"])]
def replace(src, dst, **kwargs):
    if budget[0] <= 0:
        raise OSError(errno.ENOSPC, "No space left on device")
    budget[0] -= 1
    return real_replace(src, dst, **kwargs)
os.replace = replace
from aggregator.cli import main
main(prog_name="aggregator")
"""


def _with_full_disk(config: Path, after: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", DISK_FULL_DRIVER, "--config", str(config),
                           *args], cwd=config.parent, capture_output=True, text=True,
                          timeout=120, env={**_env(), "DISK_FULL_AFTER": str(after)},
                          check=False)


def _bytes_under(root: Path, skip: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and skip not in p.relative_to(root).parts}


def _local_site(tmp_path: Path) -> tuple[Path, list[list[dict[str, Any]]]]:
    feeds = [[news_item(10 * k + n, categories=[TERMS[n % 4]]) for n in range(4)]
             for k in range(3)]
    for k, items in enumerate(feeds):
        (tmp_path / f"f{k}.xml").write_bytes(rss_feed(items, title=f"Feed {k}"))
    config = write_config(tmp_path, [{"id": f"f{k}", "url": f"f{k}.xml"} for k in range(3)])
    return config, feeds


def _grow(tmp_path: Path, feeds: list[list[dict[str, Any]]]) -> None:
    """Change two items and add two in every feed."""
    for k, items in enumerate(feeds):
        items[0] = {**items[0], "title": items[0]["title"] + " (updated)"}
        items[1] = {**items[1], "content": "<p>Rewritten.</p>"}
        items += [news_item(10 * k + n, categories=["new"]) for n in (7, 8)]
        (tmp_path / f"f{k}.xml").write_bytes(rss_feed(items, title=f"Feed {k}"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("after", [0, 3])
def test_disk_full_during_a_poll(tmp_path: Path, after: int) -> None:
    config, feeds = _local_site(tmp_path)
    assert_clean_exit(run_cli("poll", config=config), 0)
    store = tmp_path / "store"
    before = {p.relative_to(store).as_posix(): p.read_bytes() for p in store_files(store)}
    _grow(tmp_path, feeds)

    result = _with_full_disk(config, after, "poll", "--json")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stdout
    summary = json.loads(result.stdout)
    assert summary["errors"] >= 1
    for report in summary["sources"]:
        if report["status"] == "error":
            assert "disk full" in report["error"], report
    # The sources polled once the disk was full report it; none claims success.
    assert by_id(summary)["f2"]["status"] == "error"

    after_files = {p.relative_to(store).as_posix(): p.read_bytes() for p in store_files(store)}
    changed = [rel for rel in after_files if before.get(rel) != after_files[rel]]
    assert len(changed) <= after, changed  # only writes that succeeded changed anything
    if after == 0:
        assert after_files == before
    read_store(store)  # and every file is whole
    assert temp_files(store) == []

    # Space again: the next poll does the rest, without a duplicate.
    again = run_cli("poll", "--json", config=config)
    assert_clean_exit(again, 0)
    items = read_store(store)
    assert len(items) == sum(len(f) for f in feeds)
    titles = {i.title for i in items.values()}
    assert all(f[0]["title"] in titles for f in feeds)
    assert sum("Rewritten." in i.body for i in items.values()) == len(feeds)
    assert temp_files(store) == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("after", [0, 4])
def test_disk_full_during_a_publish(tmp_path: Path, after: int) -> None:
    config, feeds = _local_site(tmp_path)
    assert_clean_exit(run_cli("poll", config=config), 0)
    assert_clean_exit(run_cli("publish", config=config), 0)
    output = tmp_path / "public"
    before = _bytes_under(output, OUTPUT_TMP)
    _grow(tmp_path, feeds)
    assert_clean_exit(run_cli("poll", config=config), 0)

    result = _with_full_disk(config, after, "publish")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "disk full" in result.stderr, result.stderr
    after_files = _bytes_under(output, OUTPUT_TMP)
    changed = [rel for rel in after_files if before.get(rel) != after_files[rel]]
    assert len(changed) <= after, changed
    assert set(before) <= set(after_files)  # nothing removed
    if after == 0:
        assert after_files == before
    _check_sound(tmp_path / "store", output, "after the failed publish")
    tmp = output / OUTPUT_TMP
    assert not tmp.exists() or list(tmp.iterdir()) == []

    # Space again: the next publish writes every feed that is out of date.
    assert_clean_exit(run_cli("publish", config=config), 0)
    site = json.loads((output / "feed.json").read_text(encoding="utf-8"))
    assert len(site["items"]) == sum(len(f) for f in feeds)
    new_tag = json.loads((output / "tags" / "new" / "feed.json").read_text(encoding="utf-8"))
    assert len(new_tag["items"]) == 2 * len(feeds)
    assert (output / "index.html").read_bytes() != before["index.html"]


def test_disk_full_in_process_publish_raises_naming_it(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """publish() itself (as the daemon calls it) raises a PublishError saying so."""
    config, _ = _local_site(tmp_path)
    cfg = load_config(config)
    with Workspace(cfg) as ws:
        poll(ws, cfg.sources, lambda: datetime.now(UTC))

        def full(src: object, dst: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_module.os, "replace", full)
        with pytest.raises(PublishError, match="disk full"):
            publish(ws)
        monkeypatch.undo()
        assert publish(ws).items == 12


def test_a_full_disk_does_not_back_the_source_off(feed_server: FeedServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    feed_server.route("/f.xml", body=rss_feed([news_item(1)]), etag='"v1"')
    cfg = load_config(write_config(tmp_path, [{"id": "f", "url": feed_server.url("/f.xml")}]))

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with Workspace(cfg) as ws:
        monkeypatch.setattr(store_module.os, "replace", full)
        [report] = poll(ws, cfg.sources, lambda: datetime.now(UTC))
        assert report.status == "error" and "disk full" in (report.error or "")
        monkeypatch.undo()
        [again] = poll(ws, cfg.sources, lambda: datetime.now(UTC))
    assert (again.status, again.new) == ("ok", 1), again
