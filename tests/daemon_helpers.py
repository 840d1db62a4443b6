"""Run the real daemon (or `aggregator serve`) as a subprocess, and wait on it boundedly.

    with running_daemon(config, tmp_path) as daemon:     # `aggregator -v daemon --serve`
        wait_until(lambda: "Story" in daemon.text("/index.xml"), what="the first publish")
        daemon.log()                                     # its stderr so far
    # on leaving: SIGTERM to its pid, then SIGKILL if it has not exited within 10 s

Every wait is a poll loop with a deadline (`wait_until`); nothing sleeps a fixed time
and calls that an assertion. A timed-out wait fails with the daemon's log attached.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import requests

from tests.helpers import REPO, write_config

WAIT = 20.0  # seconds any single condition may take before the test fails
STEP = 0.1
STOP_WAIT = 10.0  # SIGTERM -> exit, SPEC §5
T = TypeVar("T")


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it, let it go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], T], *, what: str, timeout: float = WAIT,
               context: Callable[[], str] | None = None) -> T:
    """Call `condition` every STEP seconds until it returns something truthy; return it.
    Fails after `timeout` seconds, naming `what` and appending `context()` (a log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{context()}" if context else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(STEP)


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}
    env.pop("AGGREGATOR_CONFIG", None)
    return env


def rewrite_config(config: Path, sources: list[dict[str, Any]], **kwargs: Any) -> None:
    """Replace feeds.yaml atomically, as an editor does, so the daemon never reads half."""
    staging = config.parent / ".staging"
    staging.mkdir(exist_ok=True)
    os.replace(write_config(staging, sources, **kwargs), config)


class ServerProcess:
    """A running `aggregator ...` subprocess that serves HTTP on 127.0.0.1:port."""

    def __init__(self, args: list[str], config: Path, port: int, logs: Path) -> None:
        self.config = config
        self.port = port
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logs / "stdout.txt"
        self.stderr_path = logs / "stderr.txt"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator", *args], cwd=config.parent,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=cli_env())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        out = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        return (f"exit code: {self.proc.poll()}\n--- stdout ---\n{out[-3000:]}"
                f"\n--- stderr ---\n{self.log()[-6000:]}")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url(path), timeout=5, **kwargs)

    def text(self, path: str) -> str:
        """The body of a 200 for `path`, or "" (not there yet, or not listening yet)."""
        try:
            response = self.get(path)
        except requests.ConnectionError:
            return ""
        return response.text if response.status_code == 200 else ""

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the process exited before serving\n{self.describe()}")
            return bool(self.text("/index.xml"))

        wait_until(ready, what=f"{self.url('/index.xml')} to answer", context=self.describe)

    def wait_log(self, pattern: str, *, count: int = 1, timeout: float = WAIT) -> list[str]:
        """Wait until `pattern` (a regex) matches at least `count` log lines; return them."""
        regex = re.compile(pattern)

        def matched() -> list[str]:
            lines = [line for line in self.log().splitlines() if regex.search(line)]
            return lines if len(lines) >= count else []

        return wait_until(matched, what=f"{count} log line(s) matching {pattern!r}",
                          timeout=timeout, context=self.describe)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_WAIT) -> int:
        """Send `signum` to the process (by its pid) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """End the process whatever it is doing: SIGTERM, then SIGKILL. For finally blocks."""
        if self.proc.poll() is not None:
            return
        try:
            self.stop(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_WAIT)


@contextmanager
def running(args: list[str], config: Path, port: int, logs: Path) -> Iterator[ServerProcess]:
    """Start `aggregator ARGS` and wait until it serves /index.xml; always end it."""
    process = ServerProcess(args, config, port, logs)
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()


@contextmanager
def running_daemon(config: Path, logs: Path, *, workers: int | None = None,
                   ) -> Iterator[ServerProcess]:
    """`aggregator -v --config CONFIG daemon --serve --bind 127.0.0.1:<free port>`."""
    port = free_port()
    args = ["-v", "--config", str(config), "daemon", "--serve", "--bind", f"127.0.0.1:{port}"]
    if workers is not None:
        args += ["--workers", str(workers)]
    with running(args, config, port, logs) as daemon:
        yield daemon


def rss_titles(xml_text: str) -> list[str]:
    """The item titles of an RSS 2.0 document ([] for "" or a document without items)."""
    if not xml_text:
        return []
    return [item.findtext("title") or "" for item in ET.fromstring(xml_text).iter("item")]


def has_titles(daemon: ServerProcess, path: str, titles: list[str]) -> bool:
    """Whether the served RSS at `path` lists every one of `titles`."""
    served = set(rss_titles(daemon.text(path)))
    return all(title in served for title in titles)


def publish_count(log: str) -> int:
    """How many publishes the daemon logged (at -v: "published N feeds ...")."""
    return len(re.findall(r"aggregator\.daemon: published \d+ feeds", log))
