"""The long-running daemon: APScheduler jobs around the same pipeline the CLI uses.

    start:   take store/.aggregator/daemon.lock (a second daemon exits 2), publish,
             optionally serve the output directory, schedule every source now
    job:     fetch_stage + store_stage (as poll_source) -> log one line -> publish soon if the store changed
             -> reschedule at schedule.next_poll_at() (interval with jitter, lengthened
             by the feed's ttl / max-age, Retry-After and error backoff)
    watch:   feeds.yaml every few seconds; a valid edit adds, removes and reschedules
             sources without a restart, an invalid one is logged and ignored
    threads: polls share the worker pool, but a host holds at most its fetch slots of
             it (HostQueue: the rest wait in a queue, not on a thread); the watcher and
             publish have a thread each, so no poll can delay them
    stop:    SIGTERM/SIGINT -> no new jobs, in-flight fetches abandoned, in-flight
             writes finished (the write lock), exit 0
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from aggregator.config import load_config
from aggregator.errors import ConfigError
from aggregator.fetch import PER_HOST, Fetcher
from aggregator.hook import HookRunner
from aggregator.lock import DaemonLock
from aggregator.metrics import record_polls, record_publish
from aggregator.model import Config, Source
from aggregator.pipeline import Workspace, fetch_stage, parser_chain, store_stage
from aggregator.schedule import AUTO_ITEMS, next_poll_at
from aggregator.store import Store, sweep_temp_files

log = logging.getLogger("aggregator.daemon")
PUBLISH_DELAY = timedelta(seconds=3)  # publish at most this long after a change, once
CONFIG_CHECK_SECONDS = 2.0
PUBLISH_TIMEOUT = 3600.0  # a publish of a very large store, bounded all the same
SHUTDOWN_GRACE = 8.0  # seconds to let in-flight writes finish (SIGTERM -> exit within 10 s)


def _say(line: str) -> None:
    """Start and stop lines: shown at every log level (systemd's journal keeps them)."""
    print(f"aggregator: {line}", file=sys.stderr, flush=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _config_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class HostQueue:
    """At most `slots` polls of one host at once; the others wait here, off the pool.

    A poll waiting for its host's fetch slot would hold a pool thread while it waits:
    sixteen sources on a host that never answers would hold every thread for a whole
    timeout, and every other source would wait behind them.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, deque[str]] = {}
        self._lock = threading.Lock()

    def enter(self, host: str, source_id: str) -> bool:
        """Take a slot of `host` for `source_id`, or queue it and say no."""
        with self._lock:
            if self._busy.get(host, 0) < self.slots:
                self._busy[host] = self._busy.get(host, 0) + 1
                return True
            waiting = self._waiting.setdefault(host, deque())
            if source_id not in waiting:
                waiting.append(source_id)
            return False

    def leave(self, host: str) -> str | None:
        """Give the slot back; the source that waits longest for `host`, if any."""
        with self._lock:
            self._busy[host] -= 1
            if not self._busy[host]:
                del self._busy[host]
            waiting = self._waiting.get(host)
            if not waiting:
                self._waiting.pop(host, None)
                return None
            return waiting.popleft()


def _host(source: Source) -> str | None:
    """The host a source is fetched from; None for a local file (no slots to share)."""
    if not source.is_http:
        return None
    return (urlsplit(source.url).hostname or "").lower()


class Daemon:
    def __init__(self, config_path: Path, config: Config, *, workers: int = 8,
                 serve_at: tuple[str, int] | None = None,
                 metrics_per_source: bool = False) -> None:
        self.config_path = config_path
        self.started = utc_now()  # /healthz gives a young daemon two intervals
        self.metrics_per_source = metrics_per_source
        self.hooks = HookRunner()  # after_publish, off the poll and publish paths
        self.ws = Workspace(config)
        self.stop = threading.Event()
        self.fetcher = Fetcher(stop=self.stop)
        self.rng = random.Random()
        self.serve_at = serve_at
        self.server = None
        self._server_thread: threading.Thread | None = None
        self._config_sig = _config_signature(config_path)
        self._publish_lock = threading.Lock()
        self.hosts = HostQueue(PER_HOST)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(1, workers)),
                       "watch": ThreadPoolExecutor(max_workers=1),
                       "publish": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    @property
    def config(self) -> Config:
        return self.ws.config

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        parser_chain()  # now, in this thread: the scheduler's threads only use it
        with self.ws.write_lock.held():  # leftovers of a daemon killed with -9
            sweep_temp_files(self.ws.store.tmp_dir)
        self.publish()
        if self.serve_at:
            from aggregator.monitor import Monitor
            from aggregator.serve import make_server

            host, port = self.serve_at
            monitor = Monitor(lambda: self.config, self.ws.index, started=self.started,
                              per_source=self.metrics_per_source)
            self.server = make_server(self.config.output_dir, host, port,
                                      routes=monitor.answer)
            self._server_thread = threading.Thread(target=self.server.run, name="serve",
                                                   daemon=True)
            self._server_thread.start()
            _say(f"serving {self.config.output_dir} on http://{host}:{port}/")
        self.scheduler.start()
        now = utc_now()
        for i, source in enumerate(s for s in self.config.sources if s.enabled):
            # The first poll of everything now, spread over a few seconds.
            self._schedule(source.id, now + timedelta(milliseconds=50 * i))
        self.scheduler.add_job(self.check_config, "interval", seconds=CONFIG_CHECK_SECONDS,
                               id="config", replace_existing=True, executor="watch")
        _say(f"daemon started: {len([s for s in self.config.sources if s.enabled])} sources, "
             f"store {self.config.store_dir}, output {self.config.output_dir} (pid {os.getpid()})")

    def shutdown(self) -> None:
        """Stop scheduling; wait (bounded) for in-flight writes; leave nothing half-done."""
        self.stop.set()
        self.scheduler.shutdown(wait=False)
        self.hooks.stop()
        if self.server is not None:
            from aggregator.serve import stop_server

            stop_server(self.server)
        done = threading.Event()

        def wait_for_writes() -> None:
            with self.ws.write_lock.held():  # in-flight store and output writes finish first
                done.set()

        threading.Thread(target=wait_for_writes, daemon=True).start()
        if not done.wait(SHUTDOWN_GRACE):
            log.warning("a write did not finish within %.0fs; exiting anyway", SHUTDOWN_GRACE)

    # -- jobs -------------------------------------------------------------------------------
    def _schedule(self, source_id: str, when: datetime) -> None:
        if self.stop.is_set():
            return
        self.scheduler.add_job(self.poll_job, "date", run_date=when, args=[source_id],
                               id=f"poll:{source_id}", replace_existing=True)

    def poll_job(self, source_id: str) -> None:
        source = self.config.source(source_id)
        if source is None or not source.enabled or self.stop.is_set():
            return
        host = _host(source)
        if host is None:
            self._poll(source)
            return
        if not self.hosts.enter(host, source.id):
            # Queued: the poll that frees a slot of this host schedules it now. Should
            # that never come (the source edited away meanwhile), an interval from now.
            self._schedule(source.id, utc_now() + source.interval)
            return
        try:
            self._poll(source)
        finally:
            waiting = self.hosts.leave(host)
            if waiting is not None:
                self._schedule(waiting, utc_now())

    def _poll(self, source: Source) -> None:
        source_id = source.id
        before = self.ws.index.source_state(source_id)
        try:
            fetched = fetch_stage(self.ws, source, utc_now, self.fetcher)
            if self.stop.is_set():
                return  # shutting down: store nothing half-way; the next start re-polls
            report = store_stage(self.ws, source, fetched)
        except Exception:  # keep the daemon alive whatever one source does
            log.exception("%s: poll failed", source_id)
            self._reschedule(source, unrecorded=True)
            return
        try:  # the daemon's round is one source: one small write per poll
            record_polls(self.ws.index, [report], utc_now())
        except Exception:  # metrics must not stop this source's schedule
            log.exception("%s: cannot record the poll's metrics", source_id)
        if report.status == "error":
            log.warning("poll %s error %s (%.1fs)", source_id, report.error, report.seconds)
        elif report.status == "skipped":
            log.info("poll %s skipped: %s", source_id, report.error)
        else:
            log.info("poll %s %s new=%d updated=%d (%.1fs)", source_id, report.status,
                     report.new, report.updated, report.seconds)
        if report.new or report.updated:
            self.request_publish()
        # An internal error (a bug caught in the pipeline) saves the state unchanged, so
        # next_poll_at would say "now" again and the job would hammer the server.
        unrecorded = report.status == "error" and self.ws.index.source_state(source_id) == before
        self._reschedule(source, unrecorded=unrecorded)

    def _reschedule(self, source: Source, *, unrecorded: bool = False) -> None:
        if self.stop.is_set():
            return
        now = utc_now()
        dates = (self.ws.index.source_item_times(source.id, AUTO_ITEMS)
                 if source.interval_auto else ())
        when = next_poll_at(source, self.ws.index.source_state(source.id), now, self.rng,
                            dates)
        if unrecorded:  # the poll left no trace in the state: still wait one interval
            when = max(when, now + source.interval)
        self._schedule(source.id, when)

    def request_publish(self) -> None:
        """Publish soon: many polls finishing together cause one publish, not one each."""
        if self.stop.is_set() or self.scheduler.get_job("publish") is not None:
            return
        self.scheduler.add_job(self.publish, "date", run_date=utc_now() + PUBLISH_DELAY,
                               id="publish", replace_existing=True, executor="publish")

    def publish(self) -> None:
        """Publish in a child process: a publish needs memory in proportion to the store,
        and a months-long daemon should give it back each time, not keep its peak."""
        with self._publish_lock:
            if self.stop.is_set():
                return
            command = [sys.executable, "-m", "aggregator", "--config", str(self.config_path),
                       "-q", "publish", "--json", "--no-hook"]
            started = utc_now()
            try:  # the child takes the store's write lock like any other publish
                done = subprocess.run(command, stdout=subprocess.PIPE, stderr=None,
                                      timeout=PUBLISH_TIMEOUT, check=False, text=True)
            except (OSError, subprocess.TimeoutExpired) as e:
                log.error("publish failed: %s", e)
                self._publish_failed(started, str(e))
                return
        try:
            result = json.loads(done.stdout or "{}")
        except ValueError:
            result = {}
        if done.returncode not in (0, 1) or not result:
            log.error("publish failed (exit %d)", done.returncode)
            if done.returncode not in (0, 1):  # it died before it could record that itself
                self._publish_failed(started, f"exit {done.returncode}")
            return
        log.info("published %d feeds (%d files written)", result.get("feeds", 0),
                 result.get("written", 0))
        if result.get("changed") and self.config.after_publish:
            self.hooks.submit(self.config, result["changed"])
        # `interval: auto` reads item dates from what a publish listed: a source polled
        # before this publish (a new one, say) takes up its own rhythm now, not a poll later.
        for source in self.config.sources:
            if source.interval_auto and self.scheduler.get_job(f"poll:{source.id}"):
                self._reschedule(source)

    def _publish_failed(self, started: datetime, error: str) -> None:
        try:
            record_publish(self.ws.index, (utc_now() - started).total_seconds(), utc_now(),
                           ok=False, error=error)
        except Exception:  # metrics must not take the daemon down
            log.exception("cannot record the failed publish")

    def check_config(self) -> None:
        """Pick up feeds.yaml edits: sources added, removed or changed; no restart."""
        signature = _config_signature(self.config_path)
        if signature == self._config_sig or signature is None:
            return
        self._config_sig = signature
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("%s; keeping the running config", e)
            return
        old = self.config
        if new.store_dir.resolve() != old.store_dir.resolve() or (
                new.output_dir.resolve() != old.output_dir.resolve()):
            log.error("%s: store and output cannot change while running; restart the daemon "
                      "(keeping the running config)", self.config_path)
            return
        self.ws.config = new
        if new.site.timezone != old.site.timezone:  # the store reads naive dates in it
            self.ws.store = Store(new.store_dir, new.site.timezone)
        old_sources = {s.id: s for s in old.sources}
        now = utc_now()
        for source in new.sources:
            before = old_sources.pop(source.id, None)
            if not source.enabled:
                self._unschedule(source.id)
            elif before is None or not before.enabled or before.url != source.url:
                _say(f"source {source.id} {'added' if before is None else 'changed'}; "
                     "polling it now")
                self._schedule(source.id, now)
            elif before != source:
                self._reschedule(source)
        for removed in old_sources:
            _say(f"source {removed} removed")
            self._unschedule(removed)
        self.request_publish()

    def _unschedule(self, source_id: str) -> None:
        try:
            self.scheduler.remove_job(f"poll:{source_id}")
        except JobLookupError:
            pass


def run_daemon(config_path: Path, *, serve_at: tuple[str, int] | None = None,
               workers: int = 8, metrics_per_source: bool = False) -> None:
    """Run until SIGTERM/SIGINT; raises LockedError if another daemon holds the store."""
    config = load_config(config_path)
    lock = DaemonLock(config.store_dir / ".aggregator" / "daemon.lock")
    lock.acquire()
    daemon = Daemon(config_path, config, workers=workers, serve_at=serve_at,
                    metrics_per_source=metrics_per_source)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        _say(f"received {signal.Signals(signum).name}, stopping")
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
        while not stop_requested.wait(1.0):
            pass
    finally:
        daemon.shutdown()
        lock.release()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
    # Threads blocked in a network read would hold the interpreter up to their read
    # timeout; every write has finished, so leave now.
    os._exit(0)
