"""Pure scheduling decisions: when may a source be polled next, and why not now.

Every function takes ``now``; none reads the clock (only cli and the daemon do).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from aggregator.index import SourceState
from aggregator.model import Source

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=24)


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


def effective_interval(source: Source, state: SourceState) -> timedelta:
    """Our interval, lengthened (never shortened) by the feed's own ttl / max-age."""
    asked = timedelta(seconds=state.min_interval or 0)
    return max(source.interval, asked)


def next_poll_at(source: Source, state: SourceState, now: datetime,
                 rng: random.Random | None = None) -> datetime:
    """When the daemon should poll a source next, given what its last poll left."""
    last = _at(state.last_poll)
    due = (last + effective_interval(source, state)) if last else now
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
    spread = min(effective_interval(source, state).total_seconds() * 0.1, 300)
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
