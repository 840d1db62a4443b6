"""``GET /healthz``: is this aggregator doing its job? (SPEC §9)

Healthy while at least one enabled source was polled successfully (``ok`` or
``not_modified``) within the last two of its intervals — or the daemon is younger than
that — and the last publish succeeded. A failing after_publish hook does not count.
``assess`` is pure; ``check_health`` reads what it needs from the index.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aggregator.index import Index, SourceState
from aggregator.metrics import read_metrics
from aggregator.model import Config
from aggregator.schedule import AUTO_ITEMS, effective_interval, is_gone


def assess(config: Config, states: Mapping[str, SourceState], last_ok: Mapping[str, float],
           intervals: Mapping[str, timedelta], last_publish: Mapping[str, Any] | None,
           now: datetime, started: datetime | None) -> str | None:
    """Pure: None when healthy, else the one-line reason. ``started``: when the daemon
    started (None for a plain `serve`, whose polls come from cron)."""
    if last_publish is not None and not last_publish.get("ok"):
        return f"the last publish failed: {last_publish.get('error') or 'see the log'}"
    enabled = [s for s in config.sources
               if s.enabled and not is_gone(s, states.get(s.id, SourceState()))]
    if not enabled:
        return "no enabled source"
    for source in enabled:
        window = 2 * intervals[source.id]
        at = last_ok.get(source.id)
        state = states.get(source.id, SourceState())
        if state.last_status in ("ok", "not_modified") and state.last_poll:
            at = max(at or 0.0, datetime.fromisoformat(state.last_poll).timestamp())
        if at is not None and now.timestamp() - at <= window.total_seconds():
            return None
        if started is not None and now - started <= window:
            return None  # the daemon has not had two intervals yet
    return (f"no source polled successfully within two of its intervals "
            f"({len(enabled)} enabled)")


def check_health(config: Config, index: Index, now: datetime | None = None,
                 started: datetime | None = None) -> str | None:
    now = now or datetime.now(UTC)
    states = index.all_source_states()
    data = read_metrics(index)
    intervals = {}
    for source in config.sources:
        state = states.get(source.id, SourceState())
        dates = index.source_item_times(source.id, AUTO_ITEMS) if source.interval_auto else ()
        intervals[source.id] = effective_interval(source, state, dates)
    return assess(config, states, data["last_ok"], intervals, data["last_publish"], now,
                  started)
