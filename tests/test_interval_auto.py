"""`interval: auto` (SPEC §9): the median gap between a source's newest 10 dated items,
clamped to 15 min ... 24 h, lengthened (never shortened) by the feed's own ttl /
sy:updatePeriod / Cache-Control; `sources --json` says what was chosen and why."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config import load_config
from aggregator.schedule import choose_interval
from tests.feed_server import FeedServer
from tests.helpers import assert_clean_exit, news_item, poll_json, rss_feed, run_cli, write_config

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def every(gap: timedelta, n: int = 10) -> list[datetime]:
    return [T0 - i * gap for i in range(n)]


@pytest.mark.parametrize(("dates", "hint", "interval", "reason"), [
    (every(58 * M), None, 58 * M, "auto: median gap of 10 items 58m"),
    (every(2 * M), None, 15 * M, "auto: median gap of 10 items 2m, clamped to 15m"),
    (every(3 * D), None, 24 * H, "auto: median gap of 10 items 3d, clamped to 1d"),
    # The feed's ttl lengthens it, even past 24 h ...
    (every(3 * D), 48 * H, 48 * H, "auto: median gap of 10 items 3d, clamped to 1d; "
                                   "the feed asks for 2d"),
    # ... and never shortens it.
    (every(2 * H), 30 * M, 2 * H, "auto: median gap of 10 items 2h"),
    # Only the newest 10 count: 20 old daily items do not drown 10 hourly ones.
    (every(H) + [T0 - 30 * D - i * D for i in range(20)], None, H,
     "auto: median gap of 10 items 1h"),
    # The median, not the mean: one long silence does not slow a busy feed.
    ([T0, T0 - H, T0 - 2 * H, T0 - 3 * H, T0 - 20 * D], None, H,
     "auto: median gap of 5 items 1h"),
    # Order does not matter; fewer than two dates: the configured fallback.
    (list(reversed(every(40 * M, 4))), None, 40 * M, "auto: median gap of 4 items 40m"),
    ([T0], None, 30 * M, "auto: fewer than 2 dated items, 30m"),
    ([], 2 * H, 2 * H, "auto: fewer than 2 dated items, 30m; the feed asks for 2h"),
])
def test_choose_interval_auto(dates: list[datetime], hint: timedelta | None,
                              interval: timedelta, reason: str) -> None:
    chosen = choose_interval(30 * M, True, dates, hint)
    assert (chosen.interval, chosen.reason) == (interval, reason)


def test_choose_interval_fixed_ignores_dates_but_not_the_feed() -> None:
    assert choose_interval(30 * M, False, every(D), None).reason == "configured 30m"
    chosen = choose_interval(30 * M, False, every(M), 3 * H)
    assert (chosen.interval, chosen.reason) == (3 * H, "configured 30m; the feed asks for 3h")


def test_auto_in_defaults_and_per_source(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, [
        {"id": "a", "url": "a.xml"}, {"id": "b", "url": "b.xml", "interval": "2h"},
        {"id": "c", "url": "c.xml", "interval": "AUTO"}], defaults={"interval": "auto"}))
    auto = {s.id: (s.interval_auto, s.interval) for s in config.sources}
    assert auto == {"a": (True, 30 * M), "b": (False, 2 * H), "c": (True, 30 * M)}


def _items(gap: timedelta, first: int, n: int = 12) -> list[dict]:
    """n items `gap` apart, numbered from `first` (each feed its own, so none dedupe)."""
    return [news_item(first + i, pubDate=T0 - i * gap) for i in range(n)]


def test_sources_json_follows_each_feeds_rhythm(feed_server: FeedServer,
                                                tmp_path: Path) -> None:
    feed_server.route("/busy.xml", body=rss_feed(_items(20 * M, 0)))
    feed_server.route("/slow.xml", body=rss_feed(_items(3 * D, 100)))
    feed_server.route("/ttl.xml", body=rss_feed(_items(3 * D, 200), extra_channel="<ttl>2880</ttl>"))
    feed_server.route("/fixed.xml", body=rss_feed(_items(20 * M, 300)))
    config = write_config(tmp_path, [
        {"id": "busy", "url": feed_server.url("/busy.xml"), "interval": "auto"},
        {"id": "slow", "url": feed_server.url("/slow.xml"), "interval": "auto"},
        {"id": "ttl", "url": feed_server.url("/ttl.xml"), "interval": "auto"},
        {"id": "fixed", "url": feed_server.url("/fixed.xml"), "interval": "45m"}])
    assert poll_json(config)["errors"] == 0
    assert_clean_exit(run_cli("publish", config=config), 0)
    result = run_cli("sources", "--json", config=config)
    assert_clean_exit(result, 0)
    rows = {r["id"]: r for r in json.loads(result.stdout)["sources"]}
    got = {k: (r["interval_seconds"], r["interval_reason"]) for k, r in rows.items()}
    assert got == {
        "busy": (1200, "auto: median gap of 10 items 20m"),
        "slow": (86400, "auto: median gap of 10 items 3d, clamped to 1d"),
        "ttl": (172800, "auto: median gap of 10 items 3d, clamped to 1d; the feed asks for 2d"),
        "fixed": (2700, "configured 45m"),
    }
    assert rows["busy"]["interval"] == "20m"
    # The next poll follows it: the busy feed is due within 20 minutes (+ jitter) of its poll.
    last = datetime.fromisoformat(rows["busy"]["last_poll"])
    assert datetime.fromisoformat(rows["busy"]["next_poll"]) - last <= 22 * M
    assert datetime.fromisoformat(rows["ttl"]["next_poll"]) - last >= 47 * H
    # The table shows why too.
    table = run_cli("sources", config=config)
    assert_clean_exit(table, 0)
    assert "auto: median gap of 10 items 20m" in table.stdout


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "sources[0].interval: expected a duration like 15m, got 'soon'"),
    ("automatic", "sources[0].interval: expected a duration like 15m, got 'automatic'"),
    (["auto"], "sources[0].interval: expected a duration like 15m, got"),
])
def test_bad_interval_is_a_config_error(tmp_path: Path, value: object, message: str) -> None:
    config = write_config(tmp_path, [{"id": "a", "url": "a.xml", "interval": value}])
    result = run_cli("poll", config=config)
    assert result.returncode == 2
    assert "feeds.yaml:" in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()  # nothing written


def test_the_daemon_schedules_auto_sources_at_their_rhythm(feed_server: FeedServer,
                                                           tmp_path: Path) -> None:
    from aggregator.daemon import Daemon
    from tests.daemon_helpers import wait_until

    feed_server.route("/busy.xml", body=rss_feed(_items(20 * M, 0)))
    feed_server.route("/slow.xml", body=rss_feed(_items(3 * D, 100)))
    config = write_config(tmp_path, [
        {"id": "busy", "url": feed_server.url("/busy.xml")},
        {"id": "slow", "url": feed_server.url("/slow.xml")}], defaults={"interval": "auto"})
    daemon = Daemon(config, load_config(config), workers=2)

    def due_in(source_id: str) -> timedelta | None:
        job = daemon.scheduler.get_job(f"poll:{source_id}")
        state = daemon.ws.index.source_state(source_id)
        if job is None or job.next_run_time is None or state.last_poll is None:
            return None
        return job.next_run_time - datetime.fromisoformat(state.last_poll)

    try:
        daemon.start()
        # Polled at once, published, then rescheduled from the published items' dates
        # (before they are known: the 30m fallback).
        wait_until(lambda: (d := due_in("slow")) is not None and d > 23 * H,
                   what="the slow feed scheduled a day after its poll")
        wait_until(lambda: (d := due_in("busy")) is not None and d < 25 * M,
                   what="the busy feed scheduled 20 minutes after its poll")
        busy, slow = due_in("busy"), due_in("slow")
        assert busy is not None and 20 * M <= busy <= 22 * M  # + up to 10 % jitter
        assert slow is not None and 24 * H <= slow <= 24 * H + 5 * M
    finally:
        daemon.shutdown()
        daemon.ws.close()
