"""Prometheus metrics that stay true across processes.

Counters and histograms are kept in the index (the ``meta`` row ``metrics``, a JSON
object) by whichever process polls or publishes: a `poll` from cron, the daemon, the
daemon's publish child. Each adds to it in one short transaction per poll round or
publish (BEGIN IMMEDIATE: two processes never lose each other's additions), never per
item. Gauges (sources in backoff, disabled, last poll) are read from the sources' states
when Prometheus scrapes. So a separate `serve` shows the true totals of every process,
and a restart loses nothing.

    record_polls(index, reports, now)       after a poll round
    record_publish(index, seconds, ...)     after a publish (or its failure)
    StoreCollector(config, index)           a prometheus-client Collector, read on scrape
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from aggregator.index import Index, SourceState
from aggregator.model import Config, SourceReport
from aggregator.schedule import is_gone

KEY = "metrics"
POLL_STATUSES = ("ok", "not_modified", "error", "skipped")
FETCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PUBLISH_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def _empty() -> dict[str, Any]:
    return {"polls": dict.fromkeys(POLL_STATUSES, 0), "items": {"new": 0, "updated": 0},
            "fetch": _histogram(FETCH_BUCKETS), "publish": _histogram(PUBLISH_BUCKETS),
            "publishes": {"ok": 0, "error": 0}, "files": {"written": 0, "removed": 0},
            "last_publish": None, "last_ok": {}}


def _histogram(buckets: Sequence[float]) -> dict[str, Any]:
    return {"le": list(buckets), "counts": [0] * len(buckets), "count": 0, "sum": 0.0}


def _observe(h: dict[str, Any], value: float) -> None:
    for i, bound in enumerate(h["le"]):
        if value <= bound:
            h["counts"][i] += 1  # cumulative below, as the exposition format wants
    h["count"] += 1
    h["sum"] += value


def _load(text: str | None) -> dict[str, Any]:
    data = _empty()
    if text:
        try:
            data.update(json.loads(text))
        except ValueError:
            pass  # a damaged row starts the counters again (Prometheus sees a reset)
    return data


def _update(index: Index, change: Any) -> None:
    with index.transaction() as db:  # BEGIN IMMEDIATE: read-modify-write, one writer
        row = db.execute("SELECT value FROM meta WHERE key = ?", (KEY,)).fetchone()
        data = _load(row[0] if row else None)
        change(data)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                   (KEY, json.dumps(data, separators=(",", ":"))))


def record_polls(index: Index, reports: Iterable[SourceReport], now: datetime) -> None:
    """Add a poll round's reports: one transaction, whatever the number of sources."""
    reports = list(reports)
    if not reports:
        return
    stamp = now.timestamp()

    def change(data: dict[str, Any]) -> None:
        for r in reports:
            data["polls"][r.status] = data["polls"].get(r.status, 0) + 1
            data["items"]["new"] += r.new
            data["items"]["updated"] += r.updated
            if r.status != "skipped":
                _observe(data["fetch"], r.seconds)
            if r.status in ("ok", "not_modified"):
                data["last_ok"][r.id] = stamp  # /healthz: a later error keeps this

    _update(index, change)


def record_publish(index: Index, seconds: float, now: datetime, *, ok: bool,
                   written: int = 0, removed: int = 0, error: str | None = None) -> None:
    def change(data: dict[str, Any]) -> None:
        _observe(data["publish"], seconds)
        data["publishes"]["ok" if ok else "error"] += 1
        data["files"]["written"] += written
        data["files"]["removed"] += removed
        data["last_publish"] = {"ok": ok, "at": now.timestamp(), "error": error,
                                "last_success": now.timestamp() if ok else (
                                    (data["last_publish"] or {}).get("last_success"))}

    _update(index, change)


def read_metrics(index: Index) -> dict[str, Any]:
    return _load(index.meta(KEY))


class StoreCollector(Collector):
    """Reads the persisted counters and the sources' states at each scrape."""

    def __init__(self, config: Config, index: Index, *, per_source: bool = False) -> None:
        self.config = config
        self.index = index
        self.per_source = per_source

    def collect(self) -> Iterator[Any]:
        data = read_metrics(self.index)
        states = self.index.all_source_states()
        polls = CounterMetricFamily("aggregator_polls", "Source polls, by status.",
                                    labels=["status"])
        for status in POLL_STATUSES:
            polls.add_metric([status], data["polls"].get(status, 0))
        yield polls
        items = CounterMetricFamily("aggregator_items_stored",
                                    "Items written to the store, by kind.", labels=["kind"])
        for kind in ("new", "updated"):
            items.add_metric([kind], data["items"][kind])
        yield items
        yield _histogram_family("aggregator_fetch_duration_seconds",
                                "Time to fetch, parse and store one source.", data["fetch"])
        yield _histogram_family("aggregator_publish_duration_seconds",
                                "Time one publish took.", data["publish"])
        publishes = CounterMetricFamily("aggregator_publishes", "Publishes, by result.",
                                        labels=["result"])
        for result in ("ok", "error"):
            publishes.add_metric([result], data["publishes"][result])
        yield publishes
        files = CounterMetricFamily("aggregator_publish_files",
                                    "Output files written or removed by publishes.",
                                    labels=["action"])
        for action in ("written", "removed"):
            files.add_metric([action], data["files"][action])
        yield files
        last = (data["last_publish"] or {}).get("last_success")
        if last is not None:
            yield GaugeMetricFamily("aggregator_last_publish_success_timestamp_seconds",
                                    "When the last successful publish ended (Unix time).",
                                    value=last)
        yield from self._source_gauges(states)

    def _source_gauges(self, states: dict[str, SourceState]) -> Iterator[Any]:
        now = datetime.now(UTC)  # a scrape is an edge: it may read the clock
        backoff = disabled = enabled = 0
        for source in self.config.sources:
            state = states.get(source.id, SourceState())
            if not source.enabled or is_gone(source, state):
                disabled += 1
                continue
            enabled += 1
            until = max((t for t in (state.backoff_until, state.retry_until) if t), default=None)
            if until and datetime.fromisoformat(until) > now:
                backoff += 1
        yield GaugeMetricFamily("aggregator_sources", "Sources polled (enabled, not gone).",
                                value=enabled)
        yield GaugeMetricFamily("aggregator_sources_in_backoff",
                                "Sources waiting out error backoff or Retry-After.",
                                value=backoff)
        yield GaugeMetricFamily("aggregator_sources_disabled",
                                "Sources disabled in feeds.yaml or gone (HTTP 410).",
                                value=disabled)
        if not self.per_source:
            return
        last_poll = GaugeMetricFamily("aggregator_source_last_poll_timestamp_seconds",
                                      "When each source was last polled (Unix time).",
                                      labels=["source"])
        errors = GaugeMetricFamily("aggregator_source_consecutive_errors",
                                   "Each source's errors since its last success.",
                                   labels=["source"])
        for source in self.config.sources:
            state = states.get(source.id, SourceState())
            if state.last_poll:
                last_poll.add_metric([source.id],
                                     datetime.fromisoformat(state.last_poll).timestamp())
            errors.add_metric([source.id], state.error_count)
        yield last_poll
        yield errors


def _histogram_family(name: str, documentation: str, h: dict[str, Any]) -> Any:
    buckets = [(_le(bound), count) for bound, count in zip(h["le"], h["counts"], strict=False)]
    buckets.append(("+Inf", h["count"]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=h["sum"])


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))
