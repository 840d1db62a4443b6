"""Scheduling decisions (SPEC §5 polite fetching). Pure: every function takes `now`."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.index import SourceState
from aggregator.model import Source
from aggregator.schedule import (
    after_error,
    backoff_delay,
    effective_interval,
    is_gone,
    next_poll_at,
    skip_reason,
)

NOW = datetime(2025, 2, 14, 12, 0, 0, tzinfo=UTC)
URL = "https://e.example/rss"
SOURCE = Source(id="qq", url=URL, interval=timedelta(minutes=30))
M = timedelta(minutes=1)


def at(delta: timedelta) -> str:
    return (NOW + delta).isoformat(timespec="seconds")


@pytest.mark.parametrize(("errors", "delay"), [
    (-1, timedelta(0)),
    (0, timedelta(0)),
    (1, 1 * M),
    (2, 2 * M),
    (3, 4 * M),
    (4, 8 * M),
    (5, 16 * M),
    (10, 512 * M),
    (11, 1024 * M),
    (12, timedelta(hours=24)),  # 2048 min > 24 h: capped
    (40, timedelta(hours=24)),
    (10_000, timedelta(hours=24)),
])
def test_backoff_delay(errors: int, delay: timedelta) -> None:
    assert backoff_delay(errors) == delay


def test_backoff_delay_never_decreases() -> None:
    delays = [backoff_delay(n) for n in range(100)]
    assert delays == sorted(delays)
    assert max(delays) == timedelta(hours=24)


@pytest.mark.parametrize(("source", "state", "reason"), [
    (SOURCE, SourceState(), None),
    (SOURCE, SourceState(url=URL, last_poll=at(-M)), None),  # polled just now: `poll` may again
    (replace(SOURCE, enabled=False), SourceState(), "disabled in feeds.yaml"),
    (SOURCE, SourceState(url=URL, gone=True),
     "gone (HTTP 410); give it a new url in feeds.yaml to poll it again"),
    (SOURCE, SourceState(url="https://old.example/rss", gone=True), None),  # URL changed
    (SOURCE, SourceState(url="https://old.example/rss", retry_until=at(M),
                         backoff_until=at(M)), None),
    (SOURCE, SourceState(url=URL, retry_until=at(5 * M)),
     "server asked to retry after 2025-02-14T12:05:00+00:00"),
    (SOURCE, SourceState(url=URL, retry_until=at(-M)), None),  # over
    (SOURCE, SourceState(url=URL, error_count=3, backoff_until=at(4 * M)),
     "backing off after 3 errors until 2025-02-14T12:04:00+00:00"),
    (SOURCE, SourceState(url=URL, error_count=3, backoff_until=at(timedelta(0))), None),
    (replace(SOURCE, enabled=False), SourceState(url=URL, gone=True), "disabled in feeds.yaml"),
])
def test_skip_reason(source: Source, state: SourceState, reason: str | None) -> None:
    assert skip_reason(source, state, NOW) == reason


def test_is_gone_only_for_the_url_that_answered_410() -> None:
    assert is_gone(SOURCE, SourceState(url=URL, gone=True))
    assert not is_gone(SOURCE, SourceState(url="https://old.example/", gone=True))
    assert not is_gone(SOURCE, SourceState(url=URL, gone=False))


@pytest.mark.parametrize(("min_interval", "expected"), [
    (None, timedelta(minutes=30)),
    (0, timedelta(minutes=30)),
    (60.0, timedelta(minutes=30)),  # the feed asks for less: we never poll more often
    (3600.0, timedelta(hours=1)),  # the feed asks for more: honoured
])
def test_effective_interval(min_interval: float | None, expected: timedelta) -> None:
    assert effective_interval(SOURCE, SourceState(min_interval=min_interval)) == expected


@pytest.mark.parametrize(("state", "due"), [
    (SourceState(), NOW),  # never polled: now
    (SourceState(last_poll=at(-10 * M)), NOW + 20 * M),
    (SourceState(last_poll=at(-2 * timedelta(hours=1))), NOW),  # overdue: now, not the past
    (SourceState(last_poll=at(-10 * M), min_interval=3600), NOW + 50 * M),  # ttl lengthens
    (SourceState(last_poll=at(-10 * M), min_interval=60), NOW + 20 * M),  # never shortens
    (SourceState(last_poll=at(-10 * M), retry_until=at(2 * timedelta(hours=1))),
     NOW + 2 * timedelta(hours=1)),  # Retry-After later than the interval
    (SourceState(last_poll=at(-10 * M), retry_until=at(5 * M)), NOW + 20 * M),  # earlier: moot
    (SourceState(last_poll=at(-10 * M), error_count=12, backoff_until=at(timedelta(hours=24))),
     NOW + timedelta(hours=24)),
    (SourceState(retry_until=at(5 * M)), NOW + 5 * M),
])
def test_next_poll_at(state: SourceState, due: datetime) -> None:
    assert next_poll_at(SOURCE, state, NOW) == due


@pytest.mark.parametrize(("interval", "spread"), [
    (timedelta(minutes=30), timedelta(minutes=3)),  # 10 %
    (timedelta(hours=6), timedelta(minutes=5)),  # at most 5 min
    (timedelta(seconds=90), timedelta(seconds=9)),
])
def test_jitter_is_bounded(interval: timedelta, spread: timedelta) -> None:
    source = replace(SOURCE, interval=interval)
    state = SourceState(last_poll=at(timedelta(0)))
    base = next_poll_at(source, state, NOW)
    assert base == NOW + interval
    rng = random.Random(1234)
    offsets = [next_poll_at(source, state, NOW, rng) - base for _ in range(500)]
    assert all(timedelta(0) <= o <= spread for o in offsets)
    assert max(offsets) > spread * 0.8 and min(offsets) < spread * 0.2  # it does spread
    assert len(set(offsets)) > 100


def test_no_jitter_for_a_first_poll() -> None:
    assert next_poll_at(SOURCE, SourceState(), NOW, random.Random(1)) == NOW


def test_after_error_backs_off_http_sources() -> None:
    state = SourceState(url=URL, error_count=2)
    changes = after_error(state, NOW, is_http=True)
    assert changes == {"error_count": 3, "gone": False, "backoff_until": at(4 * M)}
    later = replace(state, **changes)
    assert skip_reason(SOURCE, later, NOW + M) == (
        "backing off after 3 errors until 2025-02-14T12:04:00+00:00")
    assert skip_reason(SOURCE, later, NOW + 4 * M) is None


def test_after_error_retry_after_and_gone() -> None:
    changes = after_error(SourceState(url=URL), NOW, is_http=True,
                          retry_after=timedelta(seconds=5), gone=False)
    assert changes["retry_until"] == at(M)  # at least the backoff base, never a hot loop
    changes = after_error(SourceState(url=URL), NOW, is_http=True,
                          retry_after=timedelta(hours=2))
    assert changes["retry_until"] == at(timedelta(hours=2))
    gone = after_error(SourceState(url=URL), NOW, is_http=True, gone=True)
    assert gone["gone"] is True
    assert is_gone(SOURCE, replace(SourceState(url=URL), **gone))


def test_after_error_of_a_local_file_does_not_back_off() -> None:
    changes = after_error(SourceState(error_count=5), NOW, is_http=False)
    assert changes == {"error_count": 6, "gone": False}


def test_a_gone_source_is_not_due_again_soon() -> None:
    # A skipped poll saves no state: a gone source must not come back "due now" each time.
    state = SourceState(url=URL, gone=True, last_poll=at(-timedelta(hours=48)), error_count=1,
                        backoff_until=at(-M))
    assert next_poll_at(SOURCE, state, NOW) >= NOW + timedelta(hours=24)
    moved = replace(SOURCE, url="https://new.example/rss")  # a new URL in feeds.yaml: at once
    assert next_poll_at(moved, state, NOW) == NOW
