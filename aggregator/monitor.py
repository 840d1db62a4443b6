"""The operator's routes of `serve` and `daemon --serve`: ``/metrics`` and ``/healthz``.

    Monitor(config, index).answer("/metrics") -> (200, content type, Prometheus text)
    Monitor(config, index).answer("/healthz") -> (200, ..., "ok") or (503, ..., reason)
    Monitor(...).answer("/anything/else")     -> None: the output directory answers
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from aggregator.health import check_health
from aggregator.index import Index
from aggregator.metrics import StoreCollector
from aggregator.model import Config

log = logging.getLogger("aggregator.serve")
Answer = tuple[int, str, bytes]
TEXT = "text/plain; charset=utf-8"
# The text format every Prometheus understands (generate_latest writes it); newer
# prometheus-client versions label their output 1.0.0, which older scrapers refuse.
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Monitor:
    def __init__(self, config: Callable[[], Config], index: Index, *, per_source: bool = False,
                 started: datetime | None = None) -> None:
        self._config = config
        self._index = index
        self._started = started  # the daemon's start: /healthz gives it two intervals
        self._collector = StoreCollector(config(), index, per_source=per_source)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)

    def answer(self, path: str) -> Answer | None:
        if path == "/metrics":
            self._collector.config = self._config()  # the daemon reloads feeds.yaml
            return 200, METRICS_TYPE, generate_latest(self._registry)
        if path == "/healthz":
            try:
                reason = check_health(self._config(), self._index, datetime.now(UTC),
                                      self._started)
            except Exception as e:  # an unreadable index is unhealthy, not a 500
                log.exception("healthz")
                reason = f"cannot read the index: {e}"
            if reason is None:
                return 200, TEXT, b"ok\n"
            return 503, TEXT, f"{' '.join(reason.split())}\n".encode()
        return None
