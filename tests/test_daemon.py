"""The daemon as users run it: `aggregator -v daemon --serve` as a real process, polling
sources on the loopback feed_server and serving what it publishes (SPEC §5).

Nothing here sleeps a fixed time and calls that an assertion: every wait is a bounded
poll loop (daemon_helpers.wait_until). Where a test must show that something did *not*
happen (no second request to a 410 source), it waits for a positive sign that enough
time went by instead: a control source with a 1 s interval has been polled N times.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from aggregator import pipeline
from aggregator.config import load_config
from aggregator.daemon import Daemon
from aggregator.index import SourceState
from aggregator.lock import DaemonLock
from aggregator.model import Source
from aggregator.publish import OUTPUT_TMP
from aggregator.schedule import next_poll_at
from tests.daemon_helpers import (
    cli_env,
    free_port,
    has_titles,
    publish_count,
    rewrite_config,
    running_daemon,
    wait_until,
)
from tests.feed_server import FeedServer
from tests.helpers import (
    assert_clean_exit,
    news_item,
    read_store,
    rss_feed,
    run_cli,
    store_files,
    store_snapshot,
    temp_files,
    write_config,
)


def feed(*numbers: int, **kwargs: Any) -> tuple[bytes, list[str]]:
    """An RSS feed of news_item(n) for each n, and its titles."""
    items = [news_item(n) for n in numbers]
    return rss_feed(items, **kwargs), [i["title"] for i in items]


def count(server: FeedServer, path: str) -> int:
    return len(server.requests_for(path))


def sources_json(config: Path) -> dict[str, dict[str, Any]]:
    """`aggregator sources --json`, by source id."""
    result = run_cli("sources", "--json", config=config, timeout=60)
    assert_clean_exit(result, 0)
    return {row["id"]: row for row in json.loads(result.stdout)["sources"]}


# -- first poll, publish, serve ------------------------------------------------------------
def test_first_poll_publishes_every_source_and_serves_it(feed_server: FeedServer,
                                                         tmp_path: Path) -> None:
    chinese = [news_item(1, title="三家医院接入大模型辅助诊断"),
               news_item(2, title="县医院试点人工智能辅助诊断")]
    feed_server.route("/zh.xml", body=rss_feed(chinese, title="医疗资讯"))
    english, titles = feed(3, 4)
    feed_server.route("/en.xml", body=english)
    titles += [i["title"] for i in chinese]
    config = write_config(tmp_path, [{"id": "zh", "url": feed_server.url("/zh.xml")},
                                     {"id": "en", "url": feed_server.url("/en.xml")}])

    with running_daemon(config, tmp_path / "logs") as daemon:
        wait_until(lambda: has_titles(daemon, "/index.xml", titles),
                   what="both sources' items in the served index.xml", context=daemon.describe)
        files = store_files(tmp_path / "store")
        assert sorted(p.parent.name for p in files) == ["en", "en", "zh", "zh"]
        assert sorted(i.title for i in read_store(tmp_path / "store").values()) == sorted(titles)

        # The daemon's server is `aggregator serve` (tested in tests/test_serve.py);
        # one look that HEAD, revalidation and gzip are wired up here too.
        full = daemon.get("/index.xml")
        assert full.headers["Content-Type"] == "application/rss+xml; charset=utf-8"
        head = requests.head(daemon.url("/index.xml"), timeout=5)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["ETag"] == full.headers["ETag"]
        again = daemon.get("/index.xml", headers={"If-None-Match": full.headers["ETag"]})
        assert (again.status_code, again.content) == (304, b"")
        zipped = daemon.get("/index.xml", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers.get("Content-Encoding") == "gzip"
        assert zipped.text == full.text  # as decoded by requests
    assert "Traceback" not in daemon.log()


# -- polite polling --------------------------------------------------------------------------
def test_re_polls_are_conditional_and_rewrite_nothing(feed_server: FeedServer,
                                                      tmp_path: Path) -> None:
    body, titles = feed(1, 2, 3)
    feed_server.route("/feed.xml", body=body, etag='"v1"')
    config = write_config(tmp_path, [{"id": "news", "url": feed_server.url("/feed.xml"),
                                      "interval": "2s"}])
    with running_daemon(config, tmp_path / "logs") as daemon:
        wait_until(lambda: has_titles(daemon, "/index.xml", titles), what="the first publish",
                   context=daemon.describe)
        store_before = store_snapshot(tmp_path / "store")
        output_before = (tmp_path / "public" / "index.xml").stat().st_mtime_ns
        polls_before = count(feed_server, "/feed.xml")
        wait_until(lambda: count(feed_server, "/feed.xml") >= polls_before + 2,
                   what="two more polls at the 2s interval", context=daemon.describe)
        daemon.wait_log(r"poll news not_modified", count=2)

        requests_ = feed_server.requests_for("/feed.xml")
        assert "If-None-Match" not in requests_[0].headers
        assert all(r.headers.get("If-None-Match") == '"v1"' for r in requests_[1:])
        assert store_snapshot(tmp_path / "store") == store_before  # same bytes, same mtimes
        assert (tmp_path / "public" / "index.xml").stat().st_mtime_ns == output_before
        assert sources_json(config)["news"]["status"] == "not_modified"


def test_errors_retry_after_410_and_ttl_slow_polling_down(feed_server: FeedServer,
                                                          tmp_path: Path) -> None:
    """Every source asks for a 1 s interval; only the control source gets it."""
    control, _ = feed(1)
    feed_server.route("/control.xml", body=control, etag='"c"')
    feed_server.route("/busy.xml", status=503, headers={"Retry-After": "3600"},
                      body=b"busy", content_type="text/plain")
    feed_server.route("/broken.xml", status=500, body=b"oops", content_type="text/plain")
    feed_server.route("/gone.xml", status=410, body=b"gone", content_type="text/plain")
    ttl, _ = feed(2, extra_channel="<ttl>60</ttl>")
    feed_server.route("/ttl.xml", body=ttl)
    names = ["control", "busy", "broken", "gone", "ttl"]
    config = write_config(tmp_path, [{"id": n, "url": feed_server.url(f"/{n}.xml"),
                                      "interval": "1s"} for n in names])

    with running_daemon(config, tmp_path / "logs") as daemon:
        # Five polls of the control source: every other source had four chances too.
        wait_until(lambda: count(feed_server, "/control.xml") >= 5,
                   what="five polls of the control source", context=daemon.describe)
        assert count(feed_server, "/busy.xml") == 1  # Retry-After: 3600
        assert count(feed_server, "/gone.xml") == 1  # 410: never again at this URL
        assert count(feed_server, "/ttl.xml") == 1  # <ttl>60</ttl>: an hour, not a second
        assert 1 <= count(feed_server, "/broken.xml") <= 3  # backing off, not every second

        now = datetime.now(UTC)
        rows = sources_json(config)
    later = {n: datetime.fromisoformat(rows[n]["next_poll"]) for n in names}
    assert rows["busy"]["status"] == "error" and "503" in rows["busy"]["error"]
    assert later["busy"] > now + timedelta(minutes=50)
    assert "retry after" in rows["busy"]["waiting"]
    assert rows["broken"]["status"] == "error" and "500" in rows["broken"]["error"]
    assert rows["broken"]["error_count"] == count(feed_server, "/broken.xml")
    assert later["broken"] > now
    assert rows["gone"]["status"] == "error" and "410" in rows["gone"]["error"]
    assert rows["gone"]["error_count"] == 1 and "gone" in rows["gone"]["waiting"]
    assert later["gone"] > now + timedelta(hours=1)  # not when its 1 min backoff ends
    assert rows["ttl"]["status"] == "ok" and rows["ttl"]["error_count"] == 0
    assert rows["ttl"]["interval"] == "1h" and later["ttl"] > now + timedelta(minutes=50)
    assert rows["control"]["status"] == "not_modified"


NOW = datetime(2025, 2, 14, 12, 0, tzinfo=UTC)
URL = "https://example.org/feed.xml"
SECOND = Source(id="s", url=URL, interval=timedelta(seconds=1))


@pytest.mark.parametrize(("source", "earliest", "latest"), [
    # A 410 an hour ago, its 1 min backoff long over: polls of it are skipped, and a
    # skipped poll records nothing, so "due now" would re-run the job in a tight loop.
    (SECOND, NOW + timedelta(hours=1), None),
    # The same after feeds.yaml gave it a new URL: due at once.
    (replace(SECOND, url="https://example.org/moved.xml"), NOW, NOW),
])
def test_next_poll_of_a_gone_source(source: Source, earliest: datetime,
                                    latest: datetime | None) -> None:
    an_hour_ago = NOW - timedelta(hours=1)
    state = SourceState(url=URL, last_poll=an_hour_ago.isoformat(), last_status="error",
                        error_count=1, gone=True,
                        backoff_until=(an_hour_ago + timedelta(minutes=1)).isoformat())
    when = next_poll_at(source, state, NOW, random.Random(1))
    assert when >= earliest
    assert latest is None or when <= latest + timedelta(seconds=0.1)  # jitter


def test_an_internal_error_does_not_make_the_daemon_hammer_a_source(
        feed_server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug caught in the pipeline records no poll in the source's state; the daemon
    must still wait its interval, not re-run the job at once, forever. In-process: the
    bug is planted with monkeypatch."""
    body, _ = feed(1)
    feed_server.route("/control.xml", body=body, etag='"c"')
    feed_server.route("/buggy.xml", body=rss_feed([news_item(2)]))
    config = write_config(tmp_path, [
        {"id": "control", "url": feed_server.url("/control.xml"), "interval": "1s"},
        {"id": "buggy", "url": feed_server.url("/buggy.xml"), "interval": "1s"}])
    chain = pipeline.parser_chain()
    real_parse = chain.parse_feed

    def parse_with_a_bug(body: bytes, headers: Any, url: str, source_id: str) -> Any:
        if source_id == "buggy":
            raise RuntimeError("a planted bug")
        return real_parse(body, headers, url, source_id)

    monkeypatch.setattr(chain, "parse_feed", parse_with_a_bug)
    daemon = Daemon(config, load_config(config), workers=2)
    try:
        daemon.start()
        wait_until(lambda: count(feed_server, "/control.xml") >= 4,
                   what="four polls of the control source")
    finally:
        daemon.shutdown()
        daemon.ws.close()
    assert 1 <= count(feed_server, "/buggy.xml") <= count(feed_server, "/control.xml") + 1


# -- feeds.yaml edits --------------------------------------------------------------------------
def test_feeds_yaml_edits_apply_without_a_restart(feed_server: FeedServer,
                                                  tmp_path: Path) -> None:
    first, first_titles = feed(1, 2)
    second, second_titles = feed(3, 4)
    feed_server.route("/first.xml", body=first, etag='"1"')
    feed_server.route("/second.xml", body=second, etag='"2"')
    first_source = {"id": "first", "url": feed_server.url("/first.xml"), "interval": "1s"}
    second_source = {"id": "second", "url": feed_server.url("/second.xml"), "interval": "1s"}
    config = write_config(tmp_path, [first_source])

    with running_daemon(config, tmp_path / "logs") as daemon:
        wait_until(lambda: has_titles(daemon, "/index.xml", first_titles),
                   what="the first source published", context=daemon.describe)

        rewrite_config(config, [first_source, second_source])  # added
        daemon.wait_log(r"source second added")
        wait_until(lambda: has_titles(daemon, "/index.xml", second_titles),
                   what="the added source's items in the served index.xml",
                   context=daemon.describe)

        rewrite_config(config, [second_source])  # removed
        daemon.wait_log(r"source first removed")
        first_polls, second_polls = count(feed_server, "/first.xml"), count(feed_server,
                                                                            "/second.xml")
        wait_until(lambda: count(feed_server, "/second.xml") >= second_polls + 3,
                   what="three more polls of the remaining source", context=daemon.describe)
        assert count(feed_server, "/first.xml") <= first_polls + 1  # one may have been in flight

        rewrite_config(config, [{**second_source, "interval": "soon"}])  # invalid
        daemon.wait_log(r"feeds\.yaml:\d+: sources\[0\]\.interval: expected a duration like "
                        r"15m, got 'soon'; keeping the running config")
        second_polls = count(feed_server, "/second.xml")
        wait_until(lambda: count(feed_server, "/second.xml") >= second_polls + 2,
                   what="polls to go on after an invalid edit", context=daemon.describe)
        assert daemon.proc.poll() is None
        assert has_titles(daemon, "/index.xml", second_titles)
    assert "Traceback" not in daemon.log()


# -- stopping ----------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_mid_poll(feed_server: FeedServer, tmp_path: Path,
                                       signum: int) -> None:
    numbers = range(1, 13)
    for n in numbers:
        feed_server.route(f"/s{n}.xml", body=rss_feed([news_item(100 * n + 1)]))
    config = write_config(tmp_path, [{"id": f"s{n}", "url": feed_server.url(f"/s{n}.xml"),
                                      "interval": "1s"} for n in numbers])

    with running_daemon(config, tmp_path / "logs") as daemon:
        daemon.wait_log(r"published \d+ feeds", count=2)  # at start, after the first round
        # Every source gains items from now on, so the signal lands among polls and writes.
        for n in numbers:
            feed_server.route(f"/s{n}.xml", body=rss_feed(
                [news_item(100 * n + k) for k in range(1, 9)]))
        daemon.wait_log(r"poll s\d+ ok new=[1-9]")
        code = daemon.stop(signum)  # waits at most 10 s (TimeoutExpired fails the test)

    assert code == 0, daemon.describe()
    log = daemon.log()
    assert f"received {signal.Signals(signum).name}, stopping" in log
    assert "Traceback" not in log
    assert temp_files(tmp_path / "store") == []
    output_tmp = tmp_path / "public" / OUTPUT_TMP
    assert not output_tmp.exists() or list(output_tmp.iterdir()) == []
    assert len(read_store(tmp_path / "store")) >= len(numbers)  # every file parses
    lock = DaemonLock(tmp_path / "store" / ".aggregator" / "daemon.lock")
    lock.acquire()  # released on exit
    lock.release()


def test_second_daemon_on_the_same_store_exits_2(feed_server: FeedServer,
                                                 tmp_path: Path) -> None:
    body, titles = feed(1)
    feed_server.route("/feed.xml", body=body)
    config = write_config(tmp_path, [{"id": "news", "url": feed_server.url("/feed.xml")}])
    with running_daemon(config, tmp_path / "logs") as daemon:
        second = subprocess.run(
            [sys.executable, "-m", "aggregator", "--config", str(config), "daemon", "--serve",
             "--bind", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=60, env=cli_env(), check=False)
        assert second.returncode == 2, second.stderr
        message = second.stderr.strip()
        assert "daemon.lock" in message and f"pid {daemon.pid}" in message, message
        assert "Traceback" not in message
        assert daemon.proc.poll() is None  # the first one carries on
        wait_until(lambda: has_titles(daemon, "/index.xml", titles),
                   what="the first daemon to publish", context=daemon.describe)


# -- debounced publishing ----------------------------------------------------------------------
def test_many_changed_sources_cause_few_publishes(feed_server: FeedServer,
                                                  tmp_path: Path) -> None:
    numbers = range(1, 31)
    titles = []
    for n in numbers:
        body, names = feed(n)
        feed_server.route(f"/s{n}.xml", body=body)
        titles += names
    config = write_config(tmp_path, [{"id": f"s{n}", "url": feed_server.url(f"/s{n}.xml")}
                                     for n in numbers])
    with running_daemon(config, tmp_path / "logs") as daemon:
        wait_until(lambda: has_titles(daemon, "/index.xml", titles),
                   what="all 30 sources' items in the served index.xml",
                   context=daemon.describe)
        daemon.wait_log(r"poll s\d+ ok new=1", count=30)
        # The served files can be seen a moment before the line that logs their publish.
        daemon.wait_log(r"published \d+ feeds", count=2)
        publishes = publish_count(daemon.log())
    assert 2 <= publishes <= 5, daemon.log()  # at start + after the round, not 30


# -- one slow host must not starve the rest (issue 20 #5) ------------------------------------
SILENT_SOURCES = 16


def test_a_host_that_never_answers_delays_no_other_source_nor_the_config_watcher(
        feed_server: FeedServer, tmp_path: Path) -> None:
    # A host that takes connections and never answers: the kernel completes the handshake
    # (backlog), nobody reads. Sixteen sources on it, listed first, each with a read
    # timeout longer than the test's wait: before the fix every worker thread sat on this
    # host (two fetching, the rest queued for its two slots) and the healthy source, and a
    # feeds.yaml edit, waited a whole timeout behind them.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.2", 0))
    silent.listen(64)
    try:
        port = silent.getsockname()[1]
        slow = [{"id": f"slow{n}", "url": f"http://127.0.0.2:{port}/feed{n}.xml",
                 "timeout": "60s", "interval": "1h"} for n in range(SILENT_SOURCES)]
        body, titles = feed(1, 2)
        feed_server.route("/healthy.xml", body=body)
        later, later_titles = feed(3)
        feed_server.route("/later.xml", body=later)
        healthy = {"id": "healthy", "url": feed_server.url("/healthy.xml")}
        config = write_config(tmp_path, [*slow, healthy])

        with running_daemon(config, tmp_path / "logs", workers=4) as daemon:
            wait_until(lambda: has_titles(daemon, "/index.xml", titles),
                       what="the healthy source published while its neighbours hang",
                       context=daemon.describe)
            rewrite_config(config, [*slow, healthy,
                                    {"id": "later", "url": feed_server.url("/later.xml")}])
            daemon.wait_log(r"source later added")
            wait_until(lambda: has_titles(daemon, "/index.xml", later_titles),
                       what="a source added by editing feeds.yaml, published",
                       context=daemon.describe)
        assert "Traceback" not in daemon.log()
    finally:
        silent.close()


def test_host_queue_hands_a_freed_slot_to_the_longest_waiting_source() -> None:
    from aggregator.daemon import HostQueue

    hosts = HostQueue(2)
    assert [hosts.enter("a", s) for s in ("s1", "s2", "s3", "s4", "s3")] == [
        True, True, False, False, False]
    assert hosts.enter("b", "t1") is True  # another host has slots of its own
    assert hosts.leave("a") == "s3"  # queued once, though it asked twice
    assert hosts.enter("a", "s3") is True  # its poll, scheduled by the one that left
    assert hosts.enter("a", "s5") is False
    assert [hosts.leave("a"), hosts.leave("a")] == ["s4", "s5"]
    assert [hosts.enter("a", "s4"), hosts.enter("a", "s5")] == [True, True]
    assert [hosts.leave("a"), hosts.leave("a")] == [None, None]
