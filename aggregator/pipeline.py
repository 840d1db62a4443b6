"""The whole flow, shared by the CLI and the daemon.

    poll:     for each source (a bounded pool, at most 2 requests per host):
                  skip?   schedule.skip_reason(source, state, now)   disabled/410/Retry-After/backoff
                  fetch   fetch.Fetcher.fetch(source, http_state)  -> FetchResult (200 or 304)
                  parse   parse.parse_feed(bytes, headers, url)    -> ParsedFeed(entries)
                  build   items.build_item(entry, source, ...)      -> Item     (pure)
                  dedupe  dedupe.entry_keys + index.find            -> new | same | changed
                  store   store.write (atomic) + index.record_item  under the write lock
                  state   index.save_source_state                   (ETag, 301, errors...)
    publish:  publish.publish(workspace)                            only feeds whose items changed
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import (
    Future,
    InvalidStateError,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from aggregator.dedupe import (
    MAX_CONTENT_UPDATES,
    add_source,
    apply_update,
    content_hash,
    digest,
    entry_keys,
    link_fragment,
    link_keys,
    normalize_link,
    shared_link_key,
)
from aggregator.errors import AggregatorError, FetchError, SourceError, StoreError
from aggregator.fetch import Fetcher
from aggregator.index import ItemRecord, SourceState, now_iso
from aggregator.model import (
    Config,
    Entry,
    FetchResult,
    HttpState,
    Item,
    ParsedFeed,
    Site,
    Source,
    SourceReport,
)
from aggregator.schedule import after_error, is_gone, skip_reason
from aggregator.store import (
    file_hash,
    item_path,
    read_item,
    render_item,
    sweep_temp_files,
)
from aggregator.workers import worker_pool
from aggregator.workspace import Workspace

log = logging.getLogger("aggregator")


_CHAIN_LOCK = threading.Lock()
_chain: SimpleNamespace | None = None


def parser_chain() -> Any:
    """The feed parser chain (feedparser, lxml, nh3, the Markdown converter), imported
    when a feed first needs parsing: a poll where every feed answers 304 never does
    (a twentieth of a warm poll of 1,000 feeds went to importing it).

    Under one lock: a few feeds are parsed in the fetch threads, and two threads
    importing feedparser for the first time at once deadlock (_DeadlockError).
    """
    global _chain
    if _chain is None:
        with _CHAIN_LOCK:
            if _chain is None:
                from aggregator import fulltext, items, parse

                _chain = SimpleNamespace(
                    parse_feed=parse.parse_feed, enrich_entries=fulltext.enrich_entries,
                    build_item=items.build_item, passes_filters=items.passes_filters,
                    entry_terms=items.entry_terms, front_matter_text=items.front_matter_text)
    return _chain


Clock = Callable[[], datetime]


@dataclass(frozen=True)
class ApplyResult:
    new: int = 0
    updated: int = 0
    skipped: int = 0


# -- polling ------------------------------------------------------------------------------
# Sources being fetched, or fetched (200) and not yet stored: bounds the bodies and
# parsed items held in memory. As many as the fetch threads (fewer would idle some of
# them on slow servers): 16, not 24 or 64, the same speed on the bench, and the poll
# process's peak 88 -> 75 MB since items come back from the worker rendered (each
# source in flight held ~1 MB of its heap).
IN_FLIGHT = 16
PARSE_IN_PROCESSES_MIN = 8  # fewer sources than this: parsing here costs less than a pool
# Changed feeds parsed here before a worker is started: a cron poll of a few hundred
# feeds with a handful changed then starts none (0.3 s of CPU and 40 MB saved).
PARSE_HERE_FIRST = 6


def poll(ws: Workspace, sources: Iterable[Source], clock: Clock, *, fetcher: Fetcher | None = None,
         force: bool = False, workers: int = 16,
         on_report: Callable[[SourceReport], None] | None = None) -> list[SourceReport]:
    """Poll the given sources once, now; one report per source, in the given order.

    Fetching runs in a thread pool (network-bound), parsing and building items in a
    process pool (CPU-bound, every core), storing here, one source at a time in config
    order, so which source first stores a shared item does not depend on which server
    answered first. At most IN_FLIGHT sources are between fetch and store at once.
    """
    sources = list(sources)
    fetcher = fetcher or Fetcher()
    with ws.write_lock.held():
        sweep_temp_files(ws.store.tmp_dir)
    if not sources:
        return []
    cores = os.cpu_count() or 1
    processes = None
    if len(sources) >= PARSE_IN_PROCESSES_MIN and cores > 1:
        # One core stays with this process, which stores while the workers parse: on a
        # two-core server that is one worker, and the poll's memory stays near 100 MB.
        processes = _LazyPool(max(1, min(cores - 1, 3)), start_after=PARSE_HERE_FIRST)
    reports: list[SourceReport] = []
    # One query, not one per source from the fetch threads (which then queue for the
    # index behind this thread's commits).
    states = ws.index.all_source_states()
    stolen: dict[int, Prepared | str] = {}  # id(future) -> what this process made of it
    try:
        with ws.index.deferred_states(), ThreadPoolExecutor(
                max_workers=max(1, min(workers, len(sources))),
                thread_name_prefix="poll") as threads:
            pending: deque[tuple[Source, Future[Fetched]]] = deque()
            upcoming = iter(sources)
            # A slot per source being fetched or holding a body to store. A 304, an error
            # or a skip gives its slot back as soon as it is known: behind a feed that
            # waits for its parse (or a slow server), the next hundred 304s go on.
            slots = threading.BoundedSemaphore(IN_FLIGHT)

            def release_if_light(future: Future[Fetched]) -> None:
                if not future.cancelled() and not _holds_a_body(future.result()):
                    slots.release()

            def fill() -> None:
                while slots.acquire(blocking=False):
                    source = next(upcoming, None)
                    if source is None:
                        slots.release()
                        return
                    future = threads.submit(fetch_stage, ws, source, clock, fetcher, force,
                                            processes, states.get(source.id, SourceState()))
                    future.add_done_callback(release_if_light)
                    pending.append((source, future))

            def wait_for(awaited: Future[Any]) -> None:
                """Until ``awaited`` is done: rather than only wait, parse a fetched feed no
                worker has started on (on two cores there is one worker, and storing
                leaves this process idle more than half the time), and start the fetches
                that slots given back allow (a slow server at the head holds up no one)."""
                while not awaited.done():
                    if not _steal(pending, stolen):
                        wait([awaited], timeout=STEAL_POLL)
                    fill()

            fill()
            while pending:
                source, future = pending[0]
                wait_for(future)
                fetched = future.result()
                if fetched.preparing is not None:
                    wait_for(fetched.preparing)
                pending.popleft()
                heavy = _holds_a_body(fetched)
                if fetched.preparing is not None:
                    fetched = _collect(source, fetched, stolen)
                report = store_stage(ws, source, fetched)
                if heavy:
                    slots.release()
                reports.append(report)
                if on_report:
                    on_report(report)
                fill()
    finally:
        if processes is not None:
            processes.shutdown()
    return reports


def _holds_a_body(fetched: Fetched) -> bool:
    """A 200 being parsed or stored, as opposed to a 304, an error or a skip."""
    return fetched.result is not None and fetched.result.status != "not_modified"


class _LazyPool:
    """Worker processes, started when a poll has more feeds to parse than this process
    parses faster alone (a poll where every feed answers 304 starts none, nor one where
    a few changed: a worker costs ~0.3 s of CPU to start and load the parsers).

    submit() hands back a future of this process's own, which a worker's outcome settles:
    this process can take back a job no worker has started (_take, for _steal), and when
    a worker dies (out of memory, kill -9) its jobs, and all later ones, are parsed here
    instead of failing their sources. The first ``start_after`` jobs go to no worker:
    _steal parses them here.
    """

    def __init__(self, workers: int, start_after: int = 0) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._held = start_after  # jobs left to keep here before the pool starts

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        local: Future[Any] = Future()
        with self._lock:
            if self._held > 0:
                self._held -= 1
                return local  # no remote: _take hands it to this process
            if self._pool is None:
                self._pool = worker_pool(self.workers)
            self._forward(local, fn, args)
        return local

    def _forward(self, local: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        assert self._pool is not None
        try:
            remote = self._pool.submit(fn, *args)
        except BrokenProcessPool:  # a worker died (killed, out of memory): parse here
            return
        local.remote = remote  # type: ignore[attr-defined]  # see _take
        remote.add_done_callback(lambda r: _settle(local, r))

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)


def _settle(local: Future[Any], remote: Future[Any]) -> None:
    """A worker's outcome into the future this process handed out."""
    try:
        if remote.cancelled():
            local.cancel()
        elif isinstance(remote.exception(), BrokenProcessPool):
            del local.remote  # type: ignore[attr-defined]  # no worker will: _take it here
        elif remote.exception() is not None:
            local.set_exception(remote.exception())
        else:
            local.set_result(remote.result())
    except InvalidStateError:  # cancelled meanwhile: taken here
        pass


STEAL_POLL = 0.01  # seconds between looks for a feed to parse here while a worker parses


def _steal(pending: deque[tuple[Source, Future[Fetched]]],
           stolen: dict[int, Prepared | str]) -> bool:
    """Parse here one fetched feed whose parse no worker has started; False if none.

    The furthest first: the sources nearest the head are the ones the workers will
    finish soonest, and storing goes in config order."""
    for _source, future in reversed(pending):
        if not future.done():
            continue
        fetched = future.result()
        preparing, job = fetched.preparing, fetched.job
        if preparing is None or job is None or id(preparing) in stolen:
            continue
        if _take(preparing):  # still queued: no worker will run it now
            try:
                stolen[id(preparing)] = prepare_in_worker(*job)
            except Exception as e:  # as from a worker: the source's error, not the poll's
                log.exception("internal error while parsing %s", job[2])
                stolen[id(preparing)] = f"internal error: {type(e).__name__}: {e}"
            return True
    return False


def _take(preparing: Future[Any]) -> bool:
    """Cancel a parse no worker has started, so that this process can do it."""
    remote = getattr(preparing, "remote", None)  # handed to the pool by _LazyPool
    if remote is not None and not remote.cancel():
        return False  # a worker is on it
    return preparing.cancel()


def _collect(source: Source, fetched: Fetched, stolen: dict[int, Prepared | str]) -> Fetched:
    """A fetched body's parse: from a worker process, or made here by _steal."""
    assert fetched.preparing is not None and fetched.result is not None
    try:
        if id(fetched.preparing) in stolen:
            outcome = stolen.pop(id(fetched.preparing))
        else:
            outcome = fetched.preparing.result()
    except Exception as e:  # the worker died or could not return its result
        outcome = f"internal error: {type(e).__name__}: {e}"
    if isinstance(outcome, str):
        error = SourceError(outcome, source_id=source.id, url=fetched.result.url)
        return replace(fetched, preparing=None, job=None,
                       state=_error_state(source, fetched.state, fetched.now, error),
                       report=SourceReport(source.id, "error",
                                           error=f"{outcome} ({fetched.result.url})"))
    return replace(fetched, preparing=None, job=None, prepared=outcome)


def poll_source(ws: Workspace, source: Source, clock: Clock, fetcher: Fetcher, *,
                force: bool = False) -> SourceReport:
    """Fetch, parse and store one source (the daemon's job); never raises for the source."""
    return store_stage(ws, source, fetch_stage(ws, source, clock, fetcher, force))


@dataclass(frozen=True)
class Fetched:
    """What the network half of a poll hands the storing half."""

    now: datetime
    started: float
    state: SourceState
    report: SourceReport | None = None  # set when there is nothing to store
    result: FetchResult | None = None
    prepared: Prepared | None = None  # the entries as items, ready to store
    preparing: Future[Prepared | str] | None = None  # ...being made in a worker process
    job: tuple[Any, ...] | None = None  # prepare_in_worker's arguments, for _steal


def fetch_stage(ws: Workspace, source: Source, clock: Clock, fetcher: Fetcher,
                force: bool = False, processes: _LazyPool | None = None,
                state: SourceState | None = None) -> Fetched:
    """Fetch (and parse, here or in ``processes``) one source; never raises for it."""
    started = time.monotonic()
    now = clock()
    if state is None:
        state = ws.index.source_state(source.id)
    if state.url not in (None, source.url):
        # feeds.yaml points the source elsewhere: forget the old URL's HTTP state.
        state = SourceState(url=source.url, title=state.title)
    reason = skip_reason(source, state, now)
    if reason and not (force and source.enabled and not is_gone(source, state)):
        return Fetched(now, started, state, SourceReport(source.id, "skipped", error=reason))
    http = HttpState(etag=state.etag, last_modified=state.last_modified,
                     permanent_url=state.permanent_url)
    try:
        result = fetcher.fetch(source, http)
        if result.status == "not_modified":
            return Fetched(now, started, state, result=result)
        config = ws.config
        if processes is not None and not source.full_text:
            job = (result.body, dict(result.headers), result.url, source, config.site,
                   dict(config.front_matter), now, ws.index.raw_keys(source.id))
            return Fetched(now, started, state, result=result,
                           preparing=processes.submit(prepare_in_worker, *job), job=job)
        parsed = parser_chain().parse_feed(result.body, result.headers, result.url, source.id)
        if source.full_text:
            # A stored item keeps the article text it got: its entry (a summary) must not
            # update it, so only entries not stored yet go on, with their article.
            fresh = tuple(e for e in parsed.entries if not _is_known(ws, source, e))
            parsed = replace(parsed, entries=parser_chain().enrich_entries(fresh, source, fetcher,
                                                            lambda e: False))
        prepared = prepare_entries(parsed, source, config.site, config.front_matter, now,
                                   ws.index.raw_keys(source.id))
    except SourceError as e:
        return Fetched(now, started, _error_state(source, state, now, e),
                       SourceReport(source.id, "error", error=f"{e.detail} ({e.url})"))
    except Exception as e:  # a bug must not stop the other sources; say so loudly
        log.exception("%s: internal error while fetching %s", source.id, source.url)
        bug = SourceError(f"internal error: {type(e).__name__}: {e}", source_id=source.id,
                          url=source.url)
        # Recorded like any error, so backoff applies and the daemon cannot spin on it.
        return Fetched(now, started, _error_state(source, state, now, bug),
                       SourceReport(source.id, "error", error=bug.detail))
    return Fetched(now, started, state, result=result, prepared=prepared)


def _is_known(ws: Workspace, source: Source, entry: Entry) -> bool:
    keys = entry_keys(source.id, entry.entry_id, entry.link, "", "", None)
    return ws.index.find(k for k in keys if k.startswith(("id:", "link:"))) is not None


def _error_state(source: Source, state: SourceState, now: datetime,
                 e: AggregatorError) -> SourceState:
    changes = after_error(state, now, is_http=source.is_http,
                          retry_after=getattr(e, "retry_after", None),
                          gone=isinstance(e, FetchError) and e.gone)
    return replace(state, url=source.url, last_poll=now_iso(now), last_status="error",
                   last_error=str(e), **changes)  # type: ignore[arg-type]


def store_stage(ws: Workspace, source: Source, fetched: Fetched) -> SourceReport:
    now, state, result, prepared = fetched.now, fetched.state, fetched.result, fetched.prepared
    elapsed = time.monotonic() - fetched.started
    if fetched.report is not None:
        if fetched.report.status == "error":
            ws.index.save_source_state(source.id, state)
        return replace(fetched.report, seconds=elapsed)
    assert result is not None
    if result.status == "not_modified":
        state = replace(state, url=source.url, last_poll=now_iso(now),
                        last_status="not_modified", last_error=None, error_count=0,
                        backoff_until=None, retry_until=None, gone=False,
                        etag=result.etag or state.etag,
                        last_modified=result.last_modified or state.last_modified,
                        permanent_url=result.permanent_url or state.permanent_url,
                        # A 304 has no feed to read a ttl from: keep the last one seen.
                        min_interval=max(state.feed_interval or 0,
                                         _seconds(result.max_age) or 0) or None)
        ws.index.save_source_state(source.id, state)
        return SourceReport(source.id, "not_modified", seconds=elapsed)
    assert prepared is not None
    parsed = prepared.feed
    if parsed.warning:
        log.warning("%s: %s (%s)", source.id, parsed.warning, result.url)
    prepared = bound_new_terms(ws, source, prepared)
    for warning in prepared.warnings:
        log.warning("%s: %s", source.id, warning)
    try:
        applied = apply_feed(ws, source, prepared, now)
    except StoreError as e:
        # Our disk, not the source, failed (full, read-only): no backoff, and the HTTP
        # state stays as it was, so the next poll fetches the feed again in full.
        ws.index.save_source_state(source.id, replace(
            state, url=source.url, last_poll=now_iso(now), last_status="error",
            last_error=str(e)))
        return SourceReport(source.id, "error", error=str(e), seconds=elapsed)
    except Exception as e:  # noqa: BLE001 - as above: report, keep going
        log.exception("%s: internal error while storing", source.id)
        return SourceReport(source.id, "error", error=f"internal error: {type(e).__name__}: {e}",
                            seconds=elapsed)
    min_interval = max(_seconds(parsed.min_interval) or 0, _seconds(result.max_age) or 0)
    state = replace(state, url=source.url, last_poll=now_iso(now), last_status="ok",
                    last_error=None, error_count=0, backoff_until=None, retry_until=None,
                    gone=False, etag=result.etag, last_modified=result.last_modified,
                    # A 301 stays remembered when its target now redirects temporarily
                    # (a CDN hop); it is dropped only when that leads back to our URL.
                    permanent_url=result.permanent_url or (
                        state.permanent_url if result.url != source.url else None),
                    min_interval=min_interval or None, title=parsed.title,
                    feed_interval=_seconds(parsed.min_interval),
                    last_new=applied.new, last_updated=applied.updated)
    ws.index.save_source_state(source.id, state)
    return SourceReport(source.id, "ok", new=applied.new, updated=applied.updated,
                        seconds=time.monotonic() - fetched.started, warning=parsed.warning)


def _seconds(delta: object) -> float | None:
    return delta.total_seconds() if delta is not None else None  # type: ignore[attr-defined]


# -- storing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """An entry as the item it becomes, with what storing it as a new file takes.

    The file is rendered and hashed where the entry was parsed (a worker process, as a
    rule): storing runs in one process, one source after another, and is what a cold poll
    waits on."""

    item: Item
    keys: tuple[str, ...]  # dedupe keys, strongest first; the raw: key last
    path: str  # where a new file goes (item_path: dated if the feed dated the entry); a
    # taken one gets a -2, -3... suffix
    data: bytes  # the new file: render_item(item), UTF-8
    written_hash: str  # file_hash(data)
    content_hash: str  # dedupe.content_hash(item)


def candidate(source: Source, item: Item, keys: list[str], dated: bool) -> Candidate:
    data = render_item(item).encode("utf-8")
    return Candidate(item, tuple(keys), item_path(source.id, item, keys[0], dated), data,
                     file_hash(data), content_hash(item))


@dataclass(frozen=True)
class Prepared:
    """A parsed feed's entries as store items, ready to be deduped and stored."""

    feed: ParsedFeed  # title, language, ttl, warning (entries dropped: they are in items)
    items: tuple[Candidate, ...]
    skipped: int = 0
    warnings: tuple[str, ...] = ()
    # raw: keys of the feed's entries left out as stored before: they are in this fetch
    unchanged: tuple[str, ...] = ()


def raw_key(entry: Entry, source_id: str, settings: str) -> str:
    """The key of an entry exactly as the feed gave it, under the settings that shape its
    item: seen and stored before, it needs no new conversion (a feed re-sent whole with
    two new items converts two, not twenty)."""
    return f"raw:{source_id}\x00{digest(repr(entry), settings)}"


def item_settings(source: Source, site: Site, front_matter: Mapping[str, Any]) -> str:
    return repr((source, site, sorted(front_matter.items(), key=lambda kv: kv[0])))


def prepare_entries(parsed: ParsedFeed, source: Source, site: Site,
                    front_matter: Mapping[str, Any], now: datetime,
                    known_raw: frozenset[str] = frozenset()) -> Prepared:
    """Pure: every entry not seen before as the item it becomes, with its dedupe keys;
    filters applied."""
    candidates: list[Candidate] = []
    warnings: list[str] = []
    skipped = 0
    settings = item_settings(source, site, front_matter)
    chain = parser_chain()
    unchanged: list[str] = []
    entries = parsed.entries
    if len(entries) > source.max_items:  # 100,000 entries held 1.1 GB
        warnings.append(f"dropped {len(entries) - source.max_items} of {len(entries)} entries "
                        f"beyond max_items ({source.max_items}): the feed's first are kept")
        entries = entries[:source.max_items]
    for entry in entries:
        raw = raw_key(entry, source.id, settings)
        if raw in known_raw:
            unchanged.append(raw)
            continue
        try:
            item = chain.build_item(entry, source, parsed, site, front_matter, now)
        except RecursionError:
            # HTML nested thousands deep (hostile or broken) overflows the converter's
            # recursion: lose that entry, not the whole source.
            warnings.append("skipped an entry whose HTML is nested too deeply "
                            f"({entry.link or entry.entry_id or entry.title[:80]})")
            skipped += 1
            continue
        if item is None:
            warnings.append("skipped an entry with no id, link, title, text or image")
            skipped += 1
            continue
        if not chain.passes_filters(source, item.title, item.summary):
            continue
        if len(entry.categories) > source.max_tags and (dropped := chain.entry_terms(
                entry, source)[1]):
            warnings.append(f"dropped {dropped} categories beyond max_tags "
                            f"({source.max_tags}) of {entry.link or entry.entry_id or item.title}")
        keys = entry_keys(source.id, entry.entry_id, entry.link, item.title, item.body,
                          entry.published or entry.updated)
        keys.append(raw)  # last: never the key an item is found by, only skipped by
        candidates.append(candidate(source, item, keys,
                                    (entry.published or entry.updated) is not None))
    # The feed's title names its published feeds (sources/<id>/) and the front page:
    # plain text, no bidi overrides, as the items' strings are.
    feed = replace(parsed, entries=(),
                   title=chain.front_matter_text(parsed.title) or None if parsed.title else None)
    return Prepared(feed, tuple(candidates), skipped, tuple(warnings), tuple(unchanged))


def bound_new_terms(ws: Workspace, source: Source, prepared: Prepared) -> Prepared:
    """At most ``max_new_terms`` tags that no published item has yet, from one source in
    one poll: under max_tags, a thousand items with new tags each still made thousands of
    feeds. Terms already published, and the source's own, cost nothing; a term over the
    budget is dropped from its items (the items are stored), and logged once."""
    own = set(source.tags)
    fresh = list(dict.fromkeys(t for c in prepared.items for t in c.item.tags if t not in own))
    if len(fresh) <= source.max_new_terms:  # nearly always: no query
        return prepared
    in_use = ws.index.terms_in_use("tag", fresh)
    new = [t for t in fresh if t not in in_use]
    if len(new) <= source.max_new_terms:
        return prepared
    over = set(new[source.max_new_terms:])
    items = tuple(_retagged(c, tuple(t for t in c.item.tags if t not in over))
                  if over.intersection(c.item.tags) else c for c in prepared.items)
    sample = ", ".join(repr(t) for t in new[source.max_new_terms:][:5])
    warning = (f"dropped {len(over)} new tags beyond max_new_terms ({source.max_new_terms}) "
               f"this poll, such as {sample}")
    return replace(prepared, items=items, warnings=(*prepared.warnings, warning))


def _retagged(c: Candidate, tags: tuple[str, ...]) -> Candidate:
    item = replace(c.item, tags=tags)
    data = render_item(item).encode("utf-8")
    return replace(c, item=item, data=data, written_hash=file_hash(data),
                   content_hash=content_hash(item))


def prepare_in_worker(body: bytes, headers: dict[str, str], url: str, source: Source,
                      site: Site, front_matter: dict[str, Any], now: datetime,
                      known_raw: frozenset[str] = frozenset()) -> Prepared | str:
    """parse_feed + prepare_entries in a worker process; a source's error comes back as
    its message (exceptions with keyword arguments do not cross processes)."""
    try:
        parsed = parser_chain().parse_feed(body, headers, url, source.id)
    except SourceError as e:
        return e.detail
    return prepare_entries(parsed, source, site, front_matter, now, known_raw)


def apply_feed(ws: Workspace, source: Source, prepared: Prepared, now: datetime) -> ApplyResult:
    """Dedupe prepared items into the store (SPEC §3)."""
    candidates = prepared.items
    skipped = prepared.skipped
    new = updated = 0
    # One index transaction per feed: a file renamed into place before a crash and not
    # yet committed is adopted by the next poll (see _new_path), never duplicated.
    with ws.write_lock.held():
        recover_journal(ws)
        try:
            with ws.index.transaction():
                known = _FeedIndex(ws, source, candidates, prepared.unchanged)
                for c in candidates:
                    outcome = _apply_item(ws, known, source, c, now)
                    new += outcome == "new"
                    updated += outcome == "updated"
        except BaseException:
            # Rolled back: the journal stays on disk for recover_journal, and must not be
            # deleted by the next feed's commit.
            ws.journal.abandon()
            raise
        ws.journal.commit()
    return ApplyResult(new=new, updated=updated, skipped=skipped)


class _FeedIndex:
    """The index as one feed's storing sees it: the keys and paths its items could meet,
    read in two queries up front (not two per item), plus what the feed adds as it goes.
    Used inside the feed's transaction, under the write lock: nothing else writes the
    index meanwhile, and keys and items are only ever added there.

    It decides which stored item an entry is (SPEC §3). An id of the source is certain.
    A link, text or hash can be shared by distinct items: a podcast whose episodes all
    link its home page, a blog's comments that link the post. So such a match is taken
    only for an item that no other entry of this fetch is (a guid seen before, or an
    entry stored before unchanged): several entries with distinct guids are distinct
    items, and an entry with a new guid whose match's entry is gone from the feed is that
    entry with its guid rotated, unless the link is one the source has given several
    items (a shared: marker). Links with different fragments are different items.
    """

    def __init__(self, ws: Workspace, source: Source, candidates: Iterable[Candidate],
                 unchanged: Iterable[str] = ()) -> None:
        self.index, self.store, self.source = ws.index, ws.store, source
        candidates = list(candidates)
        unchanged = list(unchanged) if candidates else []  # nothing to decide: no query
        shared = {shared_link_key(source.id, c.item.link) for c in candidates if c.item.link}
        self._paths = self.index.find_all({k for c in candidates for k in c.keys}
                                          | set(unchanged) | shared)
        self._taken = self.index.paths_taken({c.path for c in candidates})
        # path -> the entry of this fetch that is that item: its id key, else its raw key
        self._claimed: dict[str, str] = {}
        for key in unchanged:
            if key in self._paths:
                self._claimed.setdefault(self._paths[key], key)
        for c in candidates:
            if c.keys[0].startswith("id:") and c.keys[0] in self._paths:
                self._claimed.setdefault(self._paths[c.keys[0]], c.keys[0])

    def find(self, keys: Iterable[str]) -> str | None:
        keys = list(keys)
        identity = _identity(keys)
        if keys[0].startswith("id:") and keys[0] in self._paths:
            return self._paths[keys[0]]
        link = next((k for k in keys if k.startswith("link:")), None)
        shared = link is not None and self._is_shared(link)
        for key in sorted(keys, key=_find_order):
            path = self._paths.get(key)
            if path is None or _find_order(key) == _NOT_FOUND_BY:
                continue
            if self._claimed.get(path, identity) != identity:
                continue  # another entry of this fetch is that item
            if key.startswith("link:") and (shared or self._other_fragment(path, keys)):
                continue
            return path
        return None

    def with_shared_marker(self, keys: tuple[str, ...], link: str | None) -> tuple[str, ...]:
        """A new item's keys, and the marker that its link is shared when another item of
        the source (or of this fetch) has the link: from then on, within the source, the
        link tells none of them apart, and a new guid with it is a new item."""
        if not link or (path := self._paths.get(f"link:{normalize_link(link)}")) is None:
            return keys
        record = self.index.item(path) if path not in self._claimed else None
        if path not in self._claimed and (record is None or record.source != self.source.id):
            return keys  # another source's item: this source has one item with the link
        return (*keys[:-1], shared_link_key(self.source.id, link), keys[-1])  # raw: stays last

    def _is_shared(self, link_key: str) -> bool:
        return f"shared:{self.source.id}\x00{link_key[5:]}" in self._paths

    def _other_fragment(self, path: str, keys: list[str]) -> bool:
        """Whether the stored item's link has another fragment than this entry's."""
        frag = next((k for k in keys if k.startswith("frag:")), None)
        if frag is None:
            return False
        data = self.store.read_bytes(path)
        try:
            stored = read_item(data.decode("utf-8"), self.store.tz, path) if data else None
        except (ValueError, UnicodeDecodeError):
            return False
        return _other_fragments(stored.link if stored else None, "#" + frag.rpartition("#")[2])

    def path_taken(self, path: str) -> bool:
        if path in self._taken:
            return True
        return self.index.path_taken(path)  # a -2, -3... suffix: not asked up front

    def record(self, db: Any, record: ItemRecord, keys: Iterable[str],
               source_hashes: dict[str, str | None]) -> None:
        keys = list(keys)
        self.index.record_item(db, record, keys, source_hashes)
        for key in keys:
            self._paths.setdefault(key, record.path)  # INSERT OR IGNORE: the first path stays
        self._taken.add(record.path)
        if keys:
            self._claimed.setdefault(record.path, _identity(keys))


# Which key finds an entry's item first, after its id: the exact link (with its fragment),
# the same source's same text (exact for a rotated guid where every item has one link),
# the link, the hash.
_ORDER = {"frag": 0, "text": 1, "link": 2, "hash": 3}
_NOT_FOUND_BY = len(_ORDER)  # id: (first, above), raw: and shared: (never)


def _find_order(key: str) -> int:
    return _ORDER.get(key.partition(":")[0], _NOT_FOUND_BY)


def _identity(keys: list[str]) -> str:
    """Which entry of a fetch these keys are: its id key, else its raw key (the last)."""
    return keys[0] if keys[0].startswith("id:") else keys[-1]


def _apply_item(ws: Workspace, known: _FeedIndex, source: Source, c: Candidate,
                now: datetime) -> str:
    """Store one item: 'new', 'updated' or 'same'. Caller holds the write lock."""
    index, store = ws.index, ws.store
    item, keys, chash = c.item, c.keys, c.content_hash
    path = known.find(keys)
    if path is None:
        keys = known.with_shared_marker(keys, item.link)
        path, adopted = _new_path(ws, known, source, c)
        if not adopted:  # else a file of ours from a run killed before its index commit
            ws.journal.add(path, c.written_hash, source.id, list(keys), chash)
            store.write(path, c.data)
            with index.transaction() as db:
                known.record(db, ItemRecord(path, source.id, c.written_hash, 0, False),
                             keys, {source.id: chash})
            return "new"
    record = index.item(path)
    if record is None:
        return "same"
    if record.deleted or index.source_content_hash(path, source.id) == chash:
        with index.transaction() as db:  # remember new keys (a rotated guid) for next time
            known.record(db, record, keys, {})
        return "same"
    on_disk = store.read_bytes(path)
    if on_disk is None or record.written_hash is None or file_hash(on_disk) != record.written_hash:
        # Deleted or edited by a person (or never ours): the file is theirs now.
        gone = on_disk is None and record.written_hash is not None
        with index.transaction() as db:
            known.record(db, replace(record, deleted=record.deleted or gone), keys,
                         {source.id: chash})
        return "same"
    try:
        old = read_item(on_disk.decode("utf-8"), store.tz, path)
    except (ValueError, UnicodeDecodeError):
        return "same"
    updates = record.updates
    primary = (old.source or record.source) == source.id
    merged = old
    if primary and updates < MAX_CONTENT_UPDATES and content_hash(old) != chash:
        merged = apply_update(old, item, now)
        updates += 1
    merged = add_source(merged, source.id, item.tags, item.categories)
    if merged.sources == (source.id,):
        merged = replace(merged, sources=())
    data = render_item(merged).encode("utf-8")
    written = file_hash(data)
    changed = data != on_disk
    if changed:
        ws.journal.add(path, written, source.id, list(keys), chash)
        store.write(path, data)
    with index.transaction() as db:
        known.record(db, replace(record, written_hash=written, updates=updates), keys,
                     {source.id: chash})
    return "updated" if changed else "same"


# The index commits once per feed, after the files are renamed into place. Each write
# is journaled first (path, hash, source, keys), so a run killed in between leaves a
# record the next run replays into the index: no file taken for a person's edit (and
# never updated again), no new file indexed under no key (and stored twice).
def recover_journal(ws: Workspace) -> int:
    """Index the writes of a run that died before its commit. Caller holds the write lock."""
    try:
        leftovers = sorted(ws.journal.folder.iterdir())
    except OSError:
        return 0
    recovered = 0
    for entry in leftovers:
        try:
            lines = entry.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:  # in order: a path written twice is indexed as last written
            try:
                record = json.loads(line)
                path, digest = record["path"], record["hash"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
            data = ws.store.read_bytes(path)
            if data is not None and file_hash(data) == digest:
                known = ws.index.item(path)
                if known is None:
                    known = ItemRecord(path, record["source"], digest, 0, False)
                with ws.index.transaction() as db:
                    ws.index.record_item(db, replace(known, written_hash=digest),
                                         record["keys"], {record["source"]: record["chash"]})
                recovered += 1
        entry.unlink(missing_ok=True)
    return recovered


def _new_path(ws: Workspace, known: _FeedIndex, source: Source,
              c: Candidate) -> tuple[str, bool]:
    """A free path for a new item, or (True) the path of a file a killed run left, adopted."""
    base = candidate = c.path
    for n in range(2, 1000):
        if not known.path_taken(candidate):
            data = ws.store.read_bytes(candidate)
            if data is None:
                return candidate, False
            if _same_item(ws, data, c.item):
                with ws.index.transaction() as db:
                    known.record(db, ItemRecord(candidate, source.id, file_hash(data), 0,
                                                False), c.keys, {source.id: None})
                return candidate, True
        candidate = base[:-3] + f"-{n}.md"
    raise StoreError("no free file name for the item", path=base)


def _same_item(ws: Workspace, data: bytes, item: Item) -> bool:
    try:
        existing = read_item(data.decode("utf-8"), ws.store.tz)
    except (ValueError, UnicodeDecodeError):
        return False
    if existing.guid and item.guid and existing.source == item.source:
        return existing.guid == item.guid  # within a source, distinct guids: distinct items
    return bool(existing.link and item.link
                and normalize_link(existing.link) == normalize_link(item.link)
                and not _other_fragments(existing.link, item.link))


def _other_fragments(a: str | None, b: str | None) -> bool:
    """Both links have a fragment, and not the same: two items of one page."""
    fa, fb = link_fragment(a), link_fragment(b)
    return bool(fa and fb and fa != fb)


# -- reindex ----------------------------------------------------------------------------------
def reindex(ws: Workspace) -> tuple[int, list[StoreError]]:
    """Rebuild items and keys from the files; keep HTTP state and deleted-item records."""
    problems: list[StoreError] = []
    count = 0
    with ws.write_lock.held():
        sweep_temp_files(ws.store.tmp_dir)
        recover_journal(ws)
        files = sorted(rel for rel, _stat in ws.store.scan())
        previous = ws.index.written_hashes()
        # What the files cannot tell but the index knew of files still there: keys of
        # entries without id or link (hash:), other sources' ids, which sources list an
        # item. Kept, so a reindex neither duplicates an item nor drops it from a feed.
        present_paths = set(files)
        old_keys = [(k, p) for k, p in ws.index.all_keys() if p in present_paths]
        old_sources = [r for r in ws.index.all_item_sources() if r[0] in present_paths]
        # A file of ours that a person deleted since the last poll: record the deletion
        # now, or the rebuilt index forgets the item and the next poll brings it back.
        present = set(files)
        with ws.index.transaction() as db:
            for rel, (written, _updates) in previous.items():
                record = ws.index.item(rel)
                if rel not in present and written is not None and record and not record.deleted:
                    ws.index.record_item(db, replace(record, deleted=True), [], {})
        deleted = ws.index.deleted_items()
        links_seen: dict[str, int] = {}
        with ws.index.transaction() as db:
            ws.index.clear_items(db)
            for record, keys, sources in deleted:
                ws.index.record_item(db, record, keys, dict.fromkeys(sources))
            for rel in files:
                try:
                    item, data = ws.store.load(rel)
                except StoreError as e:
                    problems.append(e)
                    continue
                written, updates = previous.get(rel, (None, 0))
                if written is None and item.source and item.guid:
                    written = file_hash(data)  # ours by its shape: let polls update it again
                keys = []
                if item.source and item.guid:
                    keys.append(f"id:{item.source}\x00{item.guid}")
                if item.link:
                    keys += link_keys(item.link)
                if item.source:
                    # The text key too, as apply_feed makes it from title and body: an entry
                    # whose guid rotates and that has no link is known by nothing else.
                    keys += [k for k in entry_keys(item.source, None, None, item.title,
                                                   item.body, None) if k.startswith("text:")]
                if item.source and item.link:
                    # Two files of a source with one link: that link tells neither apart.
                    marker = shared_link_key(item.source, item.link)
                    links_seen[marker] = links_seen.get(marker, 0) + 1
                    if links_seen[marker] == 2:
                        keys.append(marker)
                sources = item.all_sources
                ws.index.record_item(db, ItemRecord(rel, item.source, written, updates, False),
                                     keys, dict.fromkeys(sources))
                count += 1
            indexed = {rel for rel in files if ws.index.path_taken(rel)}
            db.executemany("INSERT OR IGNORE INTO keys(key, path) VALUES (?, ?)",
                           [(k, p) for k, p in old_keys if p in indexed])
            db.executemany("INSERT OR IGNORE INTO item_sources(path, source, content_hash) "
                           "VALUES (?, ?, ?)", [r for r in old_sources if r[0] in indexed])
    return count, problems


def check_store(ws: Workspace) -> tuple[int, list[StoreError]]:
    """Read every store file; return how many are fine and the broken ones."""
    good = 0
    problems: list[StoreError] = []
    for rel, _stat in sorted(ws.store.scan()):
        try:
            ws.store.load(rel)
            good += 1
        except StoreError as e:
            problems.append(e)
    return good, problems


def select_sources(config: Config, ids: Iterable[str]) -> list[Source]:
    """The enabled sources, or the named ones (any unknown id is a usage error)."""
    ids = list(ids)
    if not ids:
        return [s for s in config.sources if s.enabled]
    unknown = [i for i in ids if config.source(i) is None]
    if unknown:
        known = ", ".join(s.id for s in config.sources) or "none"
        raise AggregatorError(f"unknown source id {', '.join(unknown)} (known: {known})")
    return [s for s in (config.source(i) for i in ids) if s is not None]

