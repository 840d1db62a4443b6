"""Timing, peak memory, nginx and file-tree helpers for the benchmark."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


# --- one timed process -----------------------------------------------------


@dataclass
class Sample:
    seconds: float
    peak_kb: int  # max(ru_maxrss of the tree, sampled sum of RSS over the tree)
    rc: int
    stdout: str
    stderr: str


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_kb(root: int) -> int:
    """Sum of resident memory over ``root`` and all its descendants."""
    kids = _children_map()
    todo, total = [root], 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE // 1024
        except (OSError, IndexError, ValueError):
            pass
    return total


def measure(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None,
            log: Path, timeout: float | None = None, interval: float = 0.1) -> Sample:
    """Run ``cmd`` as one process tree; wall time, peak RSS of the tree, exit code.

    The wall time runs from fork to reaping the process. Peak memory is the
    larger of the kernel's ru_maxrss (the largest single process of the tree,
    never missed) and the sum of RSS over the tree sampled every ``interval``.
    stdout and stderr go to ``log``.out / ``log``.err (read back afterwards).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    out_p, err_p = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(interval):
                with contextlib.suppress(Exception):
                    peak[0] = max(peak[0], tree_rss_kb(proc.pid))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        timer = None
        if timeout:
            timer = threading.Timer(timeout, lambda: _kill_group(proc.pid))
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: take the measured process tree down with us
            _kill_group(proc.pid)
            proc.wait()
            done.set()
            raise
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        th.join()
        if timer:
            timer.cancel()
    return Sample(elapsed, max(peak[0], usage.ru_maxrss), proc.returncode,
                  out_p.read_text(errors="replace"), err_p.read_text(errors="replace"))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Stats:
    """Several runs of one command."""

    samples: list[Sample] = field(default_factory=list)
    error: str = ""  # set when a run failed: the figures are then not comparable
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.samples) and not self.error

    @property
    def times(self) -> list[float]:
        return [s.seconds for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def peak_mb(self) -> float:
        return max(s.peak_kb for s in self.samples) / 1024

    def cell(self) -> str:
        if not self.samples:
            return "—"
        t = self.times
        if len(t) == 1:
            return f"{t[0]:.2f} s"
        return f"{self.median:.2f} s ({min(t):.2f}–{max(t):.2f})"


def why(s: Sample) -> str:
    """A one-line reason for a failed run: its exit code and the last line it printed."""
    for text in (s.stderr, s.stdout):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            return f"exit {s.rc}: {tail(lines[-1], 200)}"
    return f"exit {s.rc}"


def tail(text: str, n: int = 300) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= n else "…" + text[-n:]


# --- nginx -----------------------------------------------------------------


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
        try:
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    types {{ application/xml xml; }}
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
        if_modified_since exact;
        gzip off;
    }}
}}
"""


class Nginx:
    """Debian's nginx serving ``root`` on 127.0.0.1; stopped by the pid we started."""

    def __init__(self, root: Path, prefix: Path, port: int = 0) -> None:
        self.root = root.resolve()
        self.prefix = prefix.resolve()
        self.port = free_port(port)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix, port=self.port, root=self.root))
        cmd = [binary, "-p", str(self.prefix), "-c", str(conf), "-e",
               str(self.prefix / "error.log")]
        print(f"  nginx: {' '.join(cmd)}  ({self.url}/ -> {self.root})")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.prefix / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {tail(err)}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: master stops its workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(5)
            print(f"  nginx (pid {self.proc.pid}) stopped")
        self.proc = None

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- file trees ------------------------------------------------------------


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def copytree(src: Path, dst: Path) -> None:
    """A full copy (not hard links: the tools may rewrite files in place)."""
    rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """relative path -> (size, mtime_ns, inode) for every file under root."""
    out: dict[str, tuple[int, int, int]] = {}
    if not root.exists():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def diff_listing(before: dict, after: dict) -> tuple[int, int, int]:
    """(added, changed, removed) files between two listings."""
    added = sum(1 for k in after if k not in before)
    removed = sum(1 for k in before if k not in after)
    changed = sum(1 for k, v in after.items() if k in before and before[k] != v)
    return added, changed, removed


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under root."""
    n = size = 0
    for _d, _s, files in os.walk(root):
        for name in files:
            n += 1
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(_d, name)).st_size
    return n, size
