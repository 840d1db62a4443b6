"""Pure scheduling decisions: when may a source be polled next, and why not now.

Every function takes ``now``; none reads the clock (only cli and the daemon do).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median

from aggregator.index import SourceState
from aggregator.model import Source

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=24)
AUTO_MIN = timedelta(minutes=15)
AUTO_MAX = timedelta(hours=24)
AUTO_ITEMS = 10  # the newest this many dated items set an `interval: auto` source's pace


def backoff_delay(error_count: int) -> timedelta:
    """1 min, 2 min, 4 min ... after consecutive errors, capped at 24 h."""
    if error_count <= 0:
        return timedelta(0)
    return min(BACKOFF_BASE * (2 ** min(error_count - 1, 20)), BACKOFF_CAP)


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def is_gone(source: Source, state: SourceState) -> bool:
    """410 disables a source until feeds.yaml gives it another URL."""
    return state.gone and state.url == source.url


def skip_reason(source: Source, state: SourceState, now: datetime) -> str | None:
    """Why a source must not be polled now (disabled, Retry-After, backoff), else None."""
    if not source.enabled:
        return "disabled in feeds.yaml"
    if state.url not in (None, source.url):
        return None  # the URL changed: a fresh start
    if is_gone(source, state):
        return "gone (HTTP 410); give it a new url in feeds.yaml to poll it again"
    retry = _at(state.retry_until)
    if retry and retry > now:
        return f"server asked to retry after {retry.isoformat(timespec='seconds')}"
    backoff = _at(state.backoff_until)
    if backoff and backoff > now:
        return (f"backing off after {state.error_count} errors until "
                f"{backoff.isoformat(timespec='seconds')}")
    return None


@dataclass(frozen=True)
class IntervalChoice:
    interval: timedelta
    reason: str  # for `sources`: "auto: median gap of 10 items 58m"


def _short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400 and seconds % 3600 == 0:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h".removesuffix("0h")
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m".removesuffix("0m")
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def choose_interval(configured: timedelta, auto: bool, dates: Sequence[datetime],
                    feed_asks: timedelta | None) -> IntervalChoice:
    """Pure: the interval to poll at and why.

    ``auto``: the median gap between the newest AUTO_ITEMS ``dates``, clamped to
    AUTO_MIN..AUTO_MAX (``configured`` while fewer than two dates are known). Then the
    feed's own ttl / sy:updatePeriod / Cache-Control (``feed_asks``) lengthens it, never
    shortens it, even past AUTO_MAX: the publisher asked us to come back less often."""
    if auto:
        newest = sorted(dates, reverse=True)[:AUTO_ITEMS]
        gaps = [a - b for a, b in zip(newest, newest[1:], strict=False)]
        if gaps:
            gap = median(gaps)
            interval = min(max(gap, AUTO_MIN), AUTO_MAX)
            reason = f"auto: median gap of {len(newest)} items {_short(gap)}"
            if interval != gap:
                reason += f", clamped to {_short(interval)}"
        else:
            interval = configured
            reason = f"auto: fewer than 2 dated items, {_short(configured)}"
    else:
        interval, reason = configured, f"configured {_short(configured)}"
    if feed_asks is not None and feed_asks > interval:
        interval = feed_asks
        reason += f"; the feed asks for {_short(feed_asks)}"
    return IntervalChoice(interval, reason)


def interval_choice(source: Source, state: SourceState,
                    dates: Sequence[datetime] = ()) -> IntervalChoice:
    """The source's interval from its config, its item dates and its last poll's hints."""
    asked = timedelta(seconds=state.min_interval) if state.min_interval else None
    return choose_interval(source.interval, source.interval_auto, dates, asked)


def effective_interval(source: Source, state: SourceState,
                       dates: Sequence[datetime] = ()) -> timedelta:
    """Our interval, lengthened (never shortened) by the feed's own ttl / max-age."""
    return interval_choice(source, state, dates).interval


def next_poll_at(source: Source, state: SourceState, now: datetime,
                 rng: random.Random | None = None,
                 dates: Sequence[datetime] = ()) -> datetime:
    """When the daemon should poll a source next, given what its last poll left
    (``dates``: its newest items' dates, for ``interval: auto``)."""
    last = _at(state.last_poll)
    every = effective_interval(source, state, dates)
    due = (last + every) if last else now
    for later in (_at(state.retry_until), _at(state.backoff_until)):
        if later and later > due:
            due = later
    if due < now:
        due = now
    if is_gone(source, state):
        # A 410 is final until feeds.yaml gives a new URL (the daemon reschedules that at
        # once). A skipped poll saves no state, so without this a gone source fell back
        # to "due now" once its backoff ended and the daemon re-ran it in a tight loop.
        due = max(due, now + BACKOFF_CAP)
    # Up to 10 % jitter (at most 5 min) so sources with one interval do not fire together.
    spread = min(every.total_seconds() * 0.1, 300)
    if rng is not None and last is not None and spread > 0:
        due += timedelta(seconds=rng.uniform(0, spread))
    return due


def after_error(state: SourceState, now: datetime, *, is_http: bool,
                retry_after: timedelta | None = None, gone: bool = False) -> dict[str, object]:
    """The state changes an error causes (merged into SourceState by the caller)."""
    errors = state.error_count + 1
    changes: dict[str, object] = {"error_count": errors, "gone": gone}
    if retry_after is not None:
        changes["retry_until"] = (now + max(retry_after, BACKOFF_BASE)).isoformat(
            timespec="seconds")
    if is_http:
        changes["backoff_until"] = (now + backoff_delay(errors)).isoformat(timespec="seconds")
    return changes
