"""Operating it (SPEC §9): `GET /metrics` in the Prometheus text format and `GET /healthz`,
from a real `aggregator serve` (or `daemon --serve`) while real `aggregator poll` and
`publish` processes run beside it, as they do from cron."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from aggregator.health import assess
from aggregator.index import SourceState
from aggregator.model import Config, Defaults, Site, Source
from tests.daemon_helpers import ServerProcess, free_port, running, running_daemon, wait_until
from tests.feed_server import FeedServer
from tests.helpers import assert_clean_exit, news_item, poll_json, rss_feed, run_cli, write_config


def scrape(server: ServerProcess, path: str = "/metrics") -> dict[str, dict[tuple, float]]:
    """{family name: {(sample name, sorted labels): value}}, read by prometheus-client."""
    response = server.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out.setdefault(family.name, {})[key] = sample.value
    return out


def value(metrics: dict[str, dict[tuple, float]], family: str, sample: str | None = None,
          **labels: str) -> float:
    return metrics[family][(sample or family, tuple(sorted(labels.items())))]


def serve(config: Path, tmp_path: Path, *extra: str) -> Any:
    port = free_port()
    return running(["--config", str(config), "serve", "--bind", f"127.0.0.1:{port}", *extra],
                   config, port, tmp_path / "serve-logs")


def two_sources(feed_server: FeedServer, tmp_path: Path, **source: Any) -> Path:
    feed_server.route("/a.xml", body=rss_feed([news_item(1), news_item(2)]), etag='"a1"')
    feed_server.route("/b.xml", body=rss_feed([news_item(3)]), etag='"b1"')
    return write_config(tmp_path, [{"id": "a", "url": feed_server.url("/a.xml"), **source},
                                   {"id": "b", "url": feed_server.url("/b.xml"), **source},
                                   {"id": "off", "url": feed_server.url("/c.xml"),
                                    "enabled": False}])


def test_metrics_count_what_cron_polls_and_publishes_do(feed_server: FeedServer,
                                                        tmp_path: Path) -> None:
    config = two_sources(feed_server, tmp_path)
    assert poll_json(config)["new"] == 3
    assert_clean_exit(run_cli("publish", config=config), 0)
    with serve(config, tmp_path) as server:
        first = scrape(server)
        assert value(first, "aggregator_polls", "aggregator_polls_total", status="ok") == 2
        assert value(first, "aggregator_polls", "aggregator_polls_total",
                     status="not_modified") == 0
        assert value(first, "aggregator_items_stored", "aggregator_items_stored_total",
                     kind="new") == 3
        assert value(first, "aggregator_fetch_duration_seconds",
                     "aggregator_fetch_duration_seconds_count") == 2
        assert value(first, "aggregator_fetch_duration_seconds",
                     "aggregator_fetch_duration_seconds_bucket", le="+Inf") == 2
        assert value(first, "aggregator_publish_duration_seconds",
                     "aggregator_publish_duration_seconds_count") == 1
        written = value(first, "aggregator_publish_files", "aggregator_publish_files_total",
                        action="written")
        assert written >= 5  # index.xml, atom.xml, feed.json, index.html, feeds.opml ...
        stamp = value(first, "aggregator_last_publish_success_timestamp_seconds")
        assert abs(stamp - datetime.now(UTC).timestamp()) < 600
        assert value(first, "aggregator_sources_in_backoff") == 0
        assert value(first, "aggregator_sources_disabled") == 1
        assert "aggregator_source_last_poll_timestamp_seconds" not in first  # no per-source

        # A second cron poll (304s) and one source failing, seen by the same server.
        feed_server.route("/b.xml", status=500)
        summary = poll_json(config, force=True)
        assert {s["id"]: s["status"] for s in summary["sources"]} == {
            "a": "not_modified", "b": "error"}
        second = scrape(server)
        polls = {s: value(second, "aggregator_polls", "aggregator_polls_total", status=s)
                 for s in ("ok", "not_modified", "error", "skipped")}
        assert polls == {"ok": 2, "not_modified": 1, "error": 1, "skipped": 0}
        assert value(second, "aggregator_sources_in_backoff") == 1
        assert value(second, "aggregator_fetch_duration_seconds",
                     "aggregator_fetch_duration_seconds_count") == 4
        # b is backing off: the next plain poll skips it.
        assert {s["id"]: s["status"] for s in poll_json(config)["sources"]}["b"] == "skipped"
        assert value(scrape(server), "aggregator_polls", "aggregator_polls_total",
                     status="skipped") == 1


def test_metrics_per_source_only_when_asked(feed_server: FeedServer, tmp_path: Path) -> None:
    config = two_sources(feed_server, tmp_path)
    poll_json(config)
    assert_clean_exit(run_cli("publish", config=config), 0)
    with serve(config, tmp_path, "--metrics-per-source") as server:
        metrics = scrape(server)
        polled = metrics["aggregator_source_last_poll_timestamp_seconds"]
        assert {dict(labels)["source"] for _, labels in polled} == {"a", "b"}
        assert value(metrics, "aggregator_source_consecutive_errors", source="off") == 0


def test_healthz_flips_when_every_source_fails_and_back(feed_server: FeedServer,
                                                        tmp_path: Path) -> None:
    # A 2 s interval: "two of its intervals" pass within the test.
    config = two_sources(feed_server, tmp_path, interval="2s")
    assert_clean_exit(run_cli("publish", config=config), 0)
    with serve(config, tmp_path) as server:
        def healthz() -> requests.Response:
            return server.get("/healthz")

        def polled_then(status: int) -> bool:
            poll_json(config, force=True)
            return healthz().status_code == status

        # Healthy right after a successful poll (a slow machine: poll again until seen).
        wait_until(lambda: polled_then(200), what="/healthz 200 after a poll", timeout=60)
        assert healthz().text == "ok\n"
        for path in ("/a.xml", "/b.xml"):
            feed_server.route(path, status=500)
        assert poll_json(config, force=True)["errors"] == 2
        # (a tuple: a Response is falsy when its status is an error)
        (response,) = wait_until(lambda: (r := healthz()).status_code == 503 and (r,),
                                 what="/healthz 503 once every source fails", timeout=60)
        assert response.text.count("\n") == 1
        assert "no source polled successfully within two of its intervals" in response.text
        assert response.headers["Cache-Control"] == "no-store"
        assert server.get("/healthz", headers={}).status_code == 503
        # One source recovers: healthy again.
        feed_server.route("/a.xml", body=rss_feed([news_item(1)]))
        wait_until(lambda: polled_then(200), what="/healthz 200 after recovery", timeout=60)
        assert requests.head(server.url("/healthz"), timeout=5).status_code == 200


def test_daemon_serves_metrics_and_a_young_daemon_is_healthy(feed_server: FeedServer,
                                                            tmp_path: Path) -> None:
    feed_server.route("/a.xml", status=500)
    config = write_config(tmp_path, [{"id": "a", "url": feed_server.url("/a.xml"),
                                      "interval": "1h"}])
    with running_daemon(config, tmp_path / "logs") as daemon:
        daemon.wait_log(r"poll a error")
        # Never polled successfully, but younger than two intervals: healthy.
        assert daemon.get("/healthz").status_code == 200
        metrics = wait_until(
            lambda: (m := scrape(daemon)) and value(m, "aggregator_polls",
                                                    "aggregator_polls_total",
                                                    status="error") == 1 and m,
            what="the daemon's poll in /metrics", context=daemon.describe)
        assert value(metrics, "aggregator_publish_duration_seconds",
                     "aggregator_publish_duration_seconds_count") >= 1
        assert value(metrics, "aggregator_sources_in_backoff") == 1


NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def _config(*sources: Source) -> Config:
    site = Site(title="t", description="", base_url="http://127.0.0.1/", language="en",
                timezone="UTC")
    return Config(path=Path("feeds.yaml"), site=site, store_dir=Path("store"),
                  output_dir=Path("public"), defaults=Defaults(), sources=sources)


A, B = Source(id="a", url="https://a.example/"), Source(id="b", url="https://b.example/")
OK = {"ok": True, "at": NOW.timestamp()}


@pytest.mark.parametrize(("sources", "states", "last_ok", "publish", "started", "reason"), [
    ((A, B), {}, {"a": (NOW - H).timestamp()}, OK, None, None),
    ((A, B), {}, {"a": (NOW - 3 * H).timestamp()}, OK, None,
     "no source polled successfully within two of its intervals (2 enabled)"),
    # A poll that ended in error keeps the earlier success in view.
    ((A,), {"a": SourceState(last_status="error", last_poll=NOW.isoformat())},
     {"a": (NOW - H).timestamp()}, OK, None, None),
    ((A,), {}, {}, OK, NOW - H, None),  # a young daemon
    ((A,), {}, {}, OK, NOW - 3 * H, "no source polled successfully within two of its "
                                    "intervals (1 enabled)"),
    ((A,), {}, {"a": NOW.timestamp()}, {"ok": False, "error": "disk full"}, None,
     "the last publish failed: disk full"),
    ((A,), {}, {"a": NOW.timestamp()}, None, None, None),  # nothing published yet: no failure
    ((Source(id="x", url="u", enabled=False),), {}, {}, OK, None, "no enabled source"),
])
def test_assess(sources: tuple[Source, ...], states: dict, last_ok: dict, publish: Any,
                started: datetime | None, reason: str | None) -> None:
    intervals = {s.id: H for s in sources}  # two intervals: 2 h
    assert assess(_config(*sources), states, last_ok, intervals, publish, NOW,
                  started) == reason
