"""The ``after_publish`` hook: a command run after a publish that changed output files.

    run_hook(config, changed)  ->  take store/.aggregator/hook.lock (runs never overlap,
                                   across processes too) -> write the changed paths to a
                                   file named by $AGGREGATOR_CHANGED -> run the argv (no
                                   shell) in feeds.yaml's folder, in its own process group
                                   -> past the timeout: kill the group -> one log line on
                                   failure

A hook's failure is logged and changes nothing else: publish's result and exit code are
those of the publish. The daemon runs hooks on a thread of their own (HookRunner), so a
slow Hugo build never holds up polling or the next publish.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from aggregator.model import Config

log = logging.getLogger("aggregator.hook")
KILL_WAIT = 5.0  # seconds for a killed group to go before we stop waiting for it


def _last_line(text: bytes) -> str:
    lines = [line for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def run_hook(config: Config, changed: Iterable[str],
             started: Callable[[subprocess.Popen[bytes] | None], None] | None = None) -> bool:
    """Run ``config.after_publish`` for the absolute output paths ``changed``; True if it
    ran and exited 0. Waits for a hook another process is running to end first.
    ``started`` is told the process when it starts, and None when it has ended."""
    argv = list(config.after_publish)
    paths = list(changed)
    if not argv or not paths:
        return True
    meta = config.store_dir / ".aggregator"
    meta.mkdir(parents=True, exist_ok=True)
    with open(meta / "hook.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=meta, prefix="changed-",
                                         suffix=".txt", delete=False) as listing:
            listing.write("".join(f"{p}\n" for p in paths))
        try:
            return _run(argv, config, Path(listing.name), started or (lambda _: None))
        finally:
            Path(listing.name).unlink(missing_ok=True)


def _run(argv: list[str], config: Config, listing: Path,
         started: Callable[[subprocess.Popen[bytes] | None], None]) -> bool:
    name = argv[0]
    where = config.path.parent.resolve()
    env = {**os.environ, "AGGREGATOR_CHANGED": str(listing)}
    try:
        process = subprocess.Popen(argv, cwd=where, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)  # its own group, killed whole
    except OSError as e:
        log.error("after_publish %s: cannot start: %s", name, e.strerror or e)
        return False
    started(process)
    try:
        return _wait(process, name, config, listing)
    finally:
        started(None)


def _wait(process: subprocess.Popen[bytes], name: str, config: Config, listing: Path) -> bool:
    try:
        _, err = process.communicate(timeout=config.after_publish_timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            _, err = process.communicate(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:  # a grandchild holds stderr open
            err = b""
        log.error("after_publish %s: killed after %gs (timeout)%s", name,
                  config.after_publish_timeout, _tail(err))
        return False
    if process.returncode != 0:
        log.error("after_publish %s: exit %d%s", name, process.returncode, _tail(err))
        return False
    log.info("after_publish %s: done (%d changed files)", name,
             sum(1 for _ in listing.open(encoding="utf-8")))
    return True


def _tail(err: bytes) -> str:
    line = _last_line(err)
    return f": {line}" if line else ""


class HookRunner:
    """The daemon's hook thread: one run at a time, changes that arrive meanwhile are
    merged into the next run (none lost, no queue of stale runs)."""

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}
        self._config: Config | None = None
        self._wake = threading.Condition()
        self._stopped = False
        self._running: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="after_publish", daemon=True)
        self._thread.start()

    def submit(self, config: Config, changed: Iterable[str]) -> None:
        with self._wake:
            self._pending.update(dict.fromkeys(changed))
            self._config = config
            self._wake.notify()

    def stop(self) -> None:
        """No more runs; a hook still running is ended (SIGTERM to its group), so a
        stopped daemon leaves nothing of its own behind."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
            running = self._running
        if running is not None and running.poll() is None:
            try:
                os.killpg(running.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _started(self, process: subprocess.Popen[bytes] | None) -> None:
        with self._wake:
            self._running = process

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                changed, self._pending = list(self._pending), {}
                config = self._config
            assert config is not None
            try:
                run_hook(config, changed, self._started)
            except Exception:  # the hook thread must outlive any one run
                log.exception("after_publish failed")
