"""Soak: the daemon against 500 loopback feeds that change, fail and recover at random.

    python bench/soak.py [--minutes 10] [--feeds 500] [--seed 1]

An in-process feed server (stdlib ThreadingHTTPServer on 127.0.0.1) serves
`--feeds` feeds made with bench/corpus.py (RSS 2.0, Atom, RSS 1.0; Chinese and
English), with an ETag per version and 304s for If-None-Match. While the run
lasts, feeds gain new items at random (one every `--add-every` seconds per feed
on average), item titles are edited at random (`--edit-every`), and a fraction
of the feeds (`--fail-fraction`) go through a failure episode: HTTP 500, 503
with Retry-After: 5, 404, or a timeout (the answer delayed past the source's
3 s timeout), lasting 5 s to 2.5 min, after which the feed answers again.

`python -m aggregator -v daemon --serve` runs against it (every source with an
interval of 10-30 s, keep_items 20) for `--minutes`, its resident memory
sampled every 10 s from /proc; then SIGTERM, and the checks:

- the daemon exits 0 within 10 s of SIGTERM;
- no source starves: from the server's request log, every gap between two
  polls of a source (and from its last poll to the end) is within its
  interval + 10 % jitter, or its error backoff / Retry-After, + `--slack`;
  every source was polled at least N times;
- nothing is lost: every item the server delivered in a 200 (more than
  `--grace` seconds before SIGTERM: a poll in flight at SIGTERM is abandoned
  by design) is in the store, with the newest title delivered before then;
- one store file per item link (no duplicates) and every store file parses
  (aggregator.store.read_item, and `aggregator check` exits 0);
- errors recover: every source that failed and was then answered again has
  status ok / not_modified and error_count 0 in `aggregator sources --json`;
  one whose failure episode ended early enough to be retried must have been;
  no source reports an error the server did not cause;
- no internal error (traceback, "poll failed", "publish failed") in the log;
- memory stays flat: RSS at the end is within `--rss-growth-mb` MB (or 25 %)
  of the RSS once every source has been polled (warm);
- serving while soaking: GETs of /index.xml every 5 s all answer 200 or 304.

Prints a summary, writes bench/RESULTS-soak.md; exit 1 if a check failed,
2 if the set-up failed. Everything is on 127.0.0.1; the daemon is stopped by
its own pid.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import corpus  # noqa: E402
from harness import free_port, tail  # noqa: E402

SOURCE_TIMEOUT = 3.0  # defaults.timeout in the generated feeds.yaml
TIMEOUT_DELAY = 6.0  # a "timeout" answer waits this long: past the source's timeout
BACKOFF_BASE = 60.0  # aggregator.schedule: 1 min, 2 min, 4 min ... after errors
RETRY_FLOOR = 60.0  # aggregator.schedule: Retry-After is honoured as at least 1 min
JITTER = 0.10  # aggregator.schedule: up to 10 % of the interval
FAIL_KINDS = (("500", 0.30), ("503", 0.25), ("404", 0.25), ("timeout", 0.20))
TYPES = {"rss2": "application/rss+xml; charset=utf-8",
         "atom": "application/atom+xml; charset=utf-8",
         "rss1": "application/rdf+xml; charset=utf-8"}
REV = re.compile(r"\(rev (\d+)\)\s*$")


def backoff(errors: int) -> float:
    return BACKOFF_BASE * 2 ** max(errors - 1, 0)


# --- the feeds ---------------------------------------------------------------


@dataclass
class Episode:
    start: float
    end: float
    kind: str
    recover_by: float  # when the daemon must have seen it answer again, at the latest
    checkable: bool  # recover_by falls before the end of the run


@dataclass
class Feed:
    index: int
    id: str
    interval: float
    shell: corpus.Feed  # format, language, title, site (items kept below)
    count: int  # items 0..count-1 exist; newest first in the feed
    version: int = 0
    revs: dict[int, int] = field(default_factory=dict)  # item n -> title revision
    added: dict[int, float] = field(default_factory=dict)  # item n -> when it appeared
    episodes: list[Episode] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return f'"{self.id}-v{self.version}"'

    def failing(self, t: float) -> Episode | None:
        return next((e for e in self.episodes if e.start <= t < e.end), None)


@dataclass
class Served:
    feed: int
    t: float  # request read (seconds since the daemon started)
    answered: float | None  # response written; None for a timeout
    kind: str  # 200 304 500 503 404 timeout
    version: int
    size: int = 0
    daemon_error: str | None = None  # the daemon logged an error for this poll

    @property
    def failed(self) -> bool:
        """Failed as the daemon saw it: the server failed it, or the daemon did."""
        return self.kind not in ("200", "304") or self.daemon_error is not None


class World:
    """The 500 feeds, their mutations and failures, and the log of what was served."""

    def __init__(self, a: argparse.Namespace, base_url: str) -> None:
        self.a = a
        self.base_url = base_url
        self.rng = random.Random(a.seed)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()  # reset when the daemon starts
        self.log: list[Served] = []
        self.snapshots: dict[tuple[int, int], tuple[int, dict[int, int]]] = {}
        self._items: dict[tuple[int, int], corpus.Item] = {}
        self._bodies: dict[tuple[int, int], bytes] = {}
        self.feeds: list[Feed] = []
        for i in range(a.feeds):
            shell = corpus.make_feed(a.seed, i, a.feeds, 0)
            feed = Feed(i, shell.id, float(self.rng.randint(10, 30)), shell, a.initial_items)
            feed.added = dict.fromkeys(range(a.initial_items), 0.0)
            self.feeds.append(feed)
            self._snapshot(feed)
        self._plan_failures()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- failure plan ---------------------------------------------------------------
    def _plan_failures(self) -> None:
        a, rng, run = self.a, self.rng, self.a.minutes * 60
        chosen = rng.sample(self.feeds, round(len(self.feeds) * a.fail_fraction))
        kinds, weights = zip(*FAIL_KINDS, strict=True)
        for feed in chosen:
            kind = rng.choices(kinds, weights)[0]
            # Mostly short (one error, then the 1 min backoff outlasts it); some long
            # enough for two or three errors in a row (backoff 1, 2, 4 min).
            length = rng.uniform(5, 40) if rng.random() < 0.7 else rng.uniform(60, 150)
            start = rng.uniform(5, max(run * 0.5, run - 180))
            for _ in range(20):  # prefer an episode the run can see recover
                if self._recover_by(feed, start, start + length) <= run - 10:
                    break
                length = max(5.0, length * 0.7)
                start = rng.uniform(5, max(6, start * 0.7))
            end = start + length
            by = self._recover_by(feed, start, end)
            feed.episodes.append(Episode(start, end, kind, by, by <= run - 10))

    def _recover_by(self, feed: Feed, start: float, end: float) -> float:
        """The latest time the daemon re-polls, and finds well, a feed failing over
        [start, end): its first failing poll comes at most one interval + jitter after
        the start (or after its first-round poll); each error backs off 1, 2, 4 min,
        plus up to 10 % jitter, so a poll may land anywhere in [lo, hi]."""
        first = max(start, 30 + 0.05 * feed.index)
        worst = 0.0
        for step in range(11):  # more errors can come from an earlier first failing poll
            lo = hi = start + (first + feed.interval * (1 + JITTER) - start) * step / 10
            errors = 0
            while lo < end:
                errors += 1
                wait = max(backoff(errors), feed.interval)
                lo, hi = lo + wait, hi + wait + feed.interval * JITTER
            worst = max(worst, hi)
        return worst + self.a.slack

    # -- mutation -------------------------------------------------------------------
    def _snapshot(self, feed: Feed) -> None:
        self.snapshots[(feed.index, feed.version)] = (feed.count, dict(feed.revs))

    def mutate(self, dt_s: float) -> None:
        """One tick of random changes: new items, edited titles."""
        a, rng = self.a, self.rng
        p_add = dt_s / a.add_every
        p_edit = dt_s / a.edit_every if a.edit_every else 0.0
        t = self.now()
        with self.lock:
            for feed in self.feeds:
                changed = False
                if rng.random() < p_add:
                    for _ in range(rng.choice((1, 1, 1, 2))):
                        feed.added[feed.count] = t
                        feed.count += 1
                    changed = True
                if p_edit and rng.random() < p_edit:
                    n = rng.randrange(feed.count)
                    feed.revs[n] = feed.revs.get(n, 0) + 1
                    changed = True
                if changed:
                    feed.version += 1
                    self._snapshot(feed)

    # -- serving ----------------------------------------------------------------------
    def item(self, feed: Feed, n: int, rev: int) -> corpus.Item:
        key = (feed.index, n)
        it = self._items.get(key)
        if it is None:
            it = corpus.make_item(self.a.seed, feed.index, n, feed.shell.zh, feed.shell.site)
            self._items[key] = it
        return replace(it, title=f"{it.title} (rev {rev})") if rev else it

    def body(self, feed: Feed, version: int) -> bytes:
        key = (feed.index, version)
        data = self._bodies.get(key)
        if data is None:
            count, revs = self.snapshots[key]
            items = [self.item(feed, n, revs.get(n, 0)) for n in range(count - 1, -1, -1)]
            shell = replace(feed.shell, items=items)
            data = corpus.render(shell, f"{self.base_url}/feeds/{feed.id}.xml")
            self._bodies.pop((feed.index, version - 1), None)
            self._bodies[key] = data
        return data

    def record(self, served: Served) -> None:
        with self.lock:
            self.log.append(served)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FeedServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        world = self.server.world
        t = world.now()
        m = re.fullmatch(r"/feeds/f(\d{5})\.xml", self.path.split("?")[0])
        index = int(m.group(1)) if m else -1
        if not 0 <= index < len(world.feeds):
            self._send(404, b"no such feed\n", "text/plain")
            return
        feed = world.feeds[index]
        with world.lock:
            version, etag = feed.version, feed.etag
            episode = feed.failing(t)
        if episode is not None:
            if episode.kind == "timeout":
                self.server.stop.wait(TIMEOUT_DELAY)
                world.record(Served(index, t, None, "timeout", version))
                self.close_connection = True
                return
            status = int(episode.kind)
            extra = {"Retry-After": "5"} if status == 503 else {}
            self._send(status, f"{status} soak failure\n".encode(), "text/plain", extra)
            world.record(Served(index, t, world.now(), episode.kind, version))
            return
        if self.headers.get("If-None-Match") == etag:
            self._send(304, b"", None, {"ETag": etag})
            world.record(Served(index, t, world.now(), "304", version))
            return
        body = world.body(feed, version)
        self._send(200, body, TYPES[feed.shell.fmt], {"ETag": etag})
        world.record(Served(index, t, world.now(), "200", version, len(body)))

    def _send(self, status: int, body: bytes, ctype: str | None,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, world: World) -> None:
        self.world = world
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)

    def server_bind(self) -> None:  # no getfqdn() DNS lookup
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: object) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, ConnectionError | TimeoutError):
            print(f"feed server: {type(err).__name__}: {err}", file=sys.stderr)


# --- the daemon ----------------------------------------------------------------


def write_config(path: Path, world: World, port: int) -> None:
    cats = corpus.SOURCE_CATEGORIES
    lines = [
        "site:",
        "  title: soak",
        "  description: the soak test's site",
        f"  base_url: http://127.0.0.1:{port}/",
        "  language: en",
        "  timezone: UTC",
        "store: store",
        "output: public",
        "defaults:",
        "  interval: 20s",
        f"  timeout: {SOURCE_TIMEOUT:g}s",
        "  max_bytes: 10MB",
        "  keep_items: 20",
        "sources:",
    ]
    for f in world.feeds:
        lines += [f"  - id: {f.id}",
                  f"    url: {world.base_url}/feeds/{f.id}.xml",
                  f"    interval: {f.interval:g}s",
                  f"    categories: [{json.dumps(cats[f.index % len(cats)], ensure_ascii=False)}]"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        pass
    return out


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_listening(port: int, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    return False


# --- checks --------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def consecutive_errors(seq: list[Served], j: int) -> int:
    k = 0
    while j >= 0 and seq[j].failed:
        k += 1
        j -= 1
    return k


def allowed_gap(feed: Feed, seq: list[Served], j: int, slack: float) -> float:
    """The longest the daemon may wait after request j before polling the feed again."""
    wait = feed.interval
    if seq[j].failed:
        wait = max(wait, backoff(consecutive_errors(seq, j)))
        if seq[j].kind == "503":
            wait = max(wait, RETRY_FLOOR)
        if seq[j].kind == "timeout" or seq[j].daemon_error:
            wait += SOURCE_TIMEOUT  # last_poll is when the fetch began
    return wait + feed.interval * JITTER + slack


def check_starvation(world: World, end: float, slack: float, startup: float,
                     per_feed: dict[int, list[Served]]) -> tuple[list[Check], dict]:
    late: list[str] = []
    never: list[str] = []
    counts = []
    min_expected = []
    for feed in world.feeds:
        seq = per_feed.get(feed.index, [])
        counts.append(len(seq))
        if not seq:
            never.append(feed.id)
            continue
        first_by = startup + 0.05 * feed.index + slack
        if seq[0].t > first_by:
            late.append(f"{feed.id}: first poll at {seq[0].t:.0f}s (allowed {first_by:.0f}s)")
        for j in range(len(seq)):
            nxt = seq[j + 1].t if j + 1 < len(seq) else end
            allowed = allowed_gap(feed, seq, j, slack)
            if nxt - seq[j].t > allowed:
                what = "the end" if j + 1 == len(seq) else "the next poll"
                late.append(f"{feed.id} (every {feed.interval:g}s): {nxt - seq[j].t:.0f}s "
                            f"from the poll at {seq[j].t:.0f}s ({seq[j].kind}) to {what}, "
                            f"allowed {allowed:.0f}s")
        if not any(s.failed for s in seq):
            min_expected.append((len(seq), max(1, math.floor(
                (end - first_by) / (feed.interval * (1 + JITTER) + slack)))))
    short = [(n, e) for n, e in min_expected if n < e]
    figures = {"polls_min": min(counts), "polls_median": statistics.median(counts),
               "polls_max": max(counts), "polls_total": sum(counts),
               "n_required": min((e for _, e in min_expected), default=0)}
    checks = [
        Check("every source polled", not never,
              f"{len(world.feeds) - len(never)}/{len(world.feeds)} sources polled; polls per "
              f"source min {figures['polls_min']}, median {figures['polls_median']:g}, "
              f"max {figures['polls_max']}" + (f"; never: {', '.join(never[:10])}" if never
                                               else "")),
        Check("no source starves", not late and not short,
              (f"{len(late)} late polls: " + "; ".join(late[:8])) if late else
              "every gap between polls within interval + jitter (or backoff / Retry-After) "
              f"+ {slack:g}s; every source that never failed polled at least as often as its "
              f"interval allows (the least: {figures['n_required']} times)"
              + (f"; {len(short)} sources polled fewer times than their interval allows"
                 if short else "")),
    ]
    return checks, figures


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0912, PLR0915
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--feeds", type=int, default=500)
    ap.add_argument("--initial-items", type=int, default=5)
    ap.add_argument("--add-every", type=float, default=120,
                    help="mean seconds between new items, per feed")
    ap.add_argument("--edit-every", type=float, default=900,
                    help="mean seconds between title edits, per feed (0: none)")
    ap.add_argument("--fail-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slack", type=float, default=20,
                    help="seconds of scheduling lag allowed on a shared machine")
    ap.add_argument("--grace", type=float, default=10,
                    help="items first delivered this close to SIGTERM may be missing")
    ap.add_argument("--rss-growth-mb", type=float, default=30)
    ap.add_argument("--workers", type=int, default=8, help="the daemon's --workers")
    ap.add_argument("--results", type=Path, default=BENCH / "RESULTS-soak.md")
    ap.add_argument("--python", default=os.environ.get("PYTHON") or sys.executable)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args(argv)
    run = a.minutes * 60

    work = Path(tempfile.mkdtemp(prefix="aggregator-soak-"))
    print(f"soak: {a.feeds} feeds, {a.minutes:g} min, working in {work}")
    world = World(a, "")
    server = FeedServer(world)
    world.base_url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, name="feeds", daemon=True).start()
    port = free_port()
    config = work / "feeds.yaml"
    write_config(config, world, port)
    episodes = [e for f in world.feeds for e in f.episodes]
    print(f"  feed server {world.base_url}/feeds/f00000.xml ... ; {len(episodes)} failure "
          f"episodes planned ({sum(e.checkable for e in episodes)} can recover within the run)")

    cmd = [a.python, "-m", "aggregator", "--config", str(config), "-v", "daemon", "--serve",
           "--bind", f"127.0.0.1:{port}", "--workers", str(a.workers)]
    print(f"  daemon: {' '.join(cmd)}")
    log_path = work / "daemon.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed below
    rss: list[tuple[float, dict[str, int]]] = []
    probes: dict[str, int] = {}
    probe_errors: list[str] = []
    stop = threading.Event()
    proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT)
    world.t0, t0_wall = time.monotonic(), time.time()

    def sampler() -> None:
        while not stop.is_set():
            st = proc_status(proc.pid)
            if st:
                rss.append((world.now(), st))
            stop.wait(10)

    def mutator() -> None:
        last = time.monotonic()
        while not stop.wait(1.0):
            now = time.monotonic()
            world.mutate(now - last)
            last = now

    def prober() -> None:
        etag = None
        url = f"http://127.0.0.1:{port}/index.xml"
        while not stop.wait(5.0):
            try:
                status, headers, body = get(url, {"If-None-Match": etag} if etag else None)
            except OSError as e:
                if world.now() > 20:  # the daemon publishes before it listens
                    probe_errors.append(f"{world.now():.0f}s: {e}")
                continue
            probes[str(status)] = probes.get(str(status), 0) + 1
            if status == 200:
                etag = headers.get("etag")
                try:
                    ET.fromstring(body)
                except ET.ParseError as e:
                    probe_errors.append(f"{world.now():.0f}s: /index.xml does not parse: {e}")
            elif status != 304:
                probe_errors.append(f"{world.now():.0f}s: /index.xml -> {status}")

    threads = [threading.Thread(target=f, daemon=True) for f in (sampler, mutator, prober)]
    checks: list[Check] = []
    figures: dict = {}
    try:
        if not wait_listening(port, proc, 60):
            print(f"soak: the daemon did not start: exit {proc.poll()}; "
                  f"{tail(log_path.read_text(errors='replace'))}", file=sys.stderr)
            return 2
        for th in threads:
            th.start()
        last_report = 0.0
        while world.now() < run:
            if proc.poll() is not None:
                break
            time.sleep(1)
            if world.now() - last_report >= 60:
                last_report = world.now()
                st = rss[-1][1] if rss else {}
                print(f"  {world.now() / 60:4.1f} min: {len(world.log)} requests served, "
                      f"RSS {st.get('VmRSS', 0) / 1024:.0f} MB, {st.get('Threads', '?')} threads, "
                      f"{st.get('fds', '?')} fds")
        died = proc.poll()
        stop.set()
        end = world.now()
        st_end = proc_status(proc.pid)
        if st_end:
            rss.append((end, st_end))
        if died is None:
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(5)
            took = time.monotonic() - t_term
            checks.append(Check("SIGTERM: exit 0 within 10 s", rc == 0 and took <= 10,
                                f"exit {rc} after {took:.1f} s"))
        else:
            checks.append(Check("the daemon runs until SIGTERM", False,
                                f"exited {died} after {end:.0f} s"))
        for th in threads:
            th.join(15)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log_file.close()
        server.stop.set()
        server.shutdown()
        server.server_close()

    # -- what the daemon left -------------------------------------------------------
    env = {**os.environ}
    env.pop("AGGREGATOR_CONFIG", None)

    def agg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([a.python, "-m", "aggregator", "--config", str(config), *args],
                              cwd=work, capture_output=True, text=True, timeout=600, env=env)

    src = agg("sources", "--json")
    states = {s["id"]: s for s in json.loads(src.stdout)["sources"]} if src.returncode == 0 \
        else {}
    chk = agg("check")
    checks.append(Check("`aggregator check`", chk.returncode == 0,
                        tail(chk.stderr, 300) or f"exit {chk.returncode}"))

    # -- the store ------------------------------------------------------------------
    sys.path.insert(0, str(REPO))
    from aggregator.dedupe import normalize_link
    from aggregator.store import read_item

    tz = ZoneInfo("UTC")
    store = work / "store"
    by_link: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    broken: list[str] = []
    n_files = 0
    for path in sorted(store.rglob("*.md")):
        rel = path.relative_to(store).as_posix()
        if rel.startswith("."):
            continue
        n_files += 1
        try:
            item = read_item(path.read_text(encoding="utf-8"), tz, path.name)
        except (ValueError, UnicodeDecodeError) as e:
            broken.append(f"{rel}: {e}")
            continue
        if not item.link:
            broken.append(f"{rel}: no link")
            continue
        key = normalize_link(item.link)
        by_link.setdefault(key, []).append(rel)
        titles[key] = item.title
    dupes = {k: v for k, v in by_link.items() if len(v) > 1}
    checks.append(Check("every store file parses (read_item)", not broken,
                        f"{n_files} files" + (f"; broken: {'; '.join(broken[:5])}" if broken
                                              else "")))
    checks.append(Check("one store file per link", not dupes,
                        f"{len(by_link)} distinct links" + (
                            f"; {len(dupes)} with several files: " + "; ".join(
                                f"{k} -> {v}" for k, v in list(dupes.items())[:5])
                            if dupes else "")))

    # -- the daemon's errors, matched to what was served --------------------------------
    per_feed: dict[int, list[Served]] = {}
    for s in sorted(world.log, key=lambda s: s.t):
        per_feed.setdefault(s.feed, []).append(s)
    log_text = log_path.read_text(errors="replace")
    unexpected: list[str] = []
    for m in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) WARNING aggregator.daemon: "
                         r"poll (f\d{5}) error (.*) \((\d+\.\d)s\)$", log_text, re.M):
        stamp, fid, message, seconds = m.groups()
        # Logged when the poll ended (to the second); the fetch began `seconds` before,
        # and its request reached the server in between (after any wait for the host slot).
        ended = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() - t0_wall
        began = ended - float(seconds)
        seq = per_feed.get(int(fid[1:]), [])
        window = [s for s in seq if began - 1.5 <= s.t <= ended + 1.5]
        near = min(window, key=lambda s: (s.kind in ("200", "304"), abs(s.t - began)),
                   default=None)
        if near is None:
            unexpected.append(f"{fid} at {began:.0f}s: {message} (no request reached the "
                              "server then)")
            continue
        near.daemon_error = message
        if near.kind in ("200", "304"):
            took = f"answered in {near.answered - near.t:.2f}s" if near.answered else ""
            unexpected.append(f"{fid} at {near.t:.0f}s: the daemon logged `{message}`; the "
                              f"server had served {near.kind}"
                              + (f" ({near.size:,} bytes)" if near.size else "") + f", {took}")

    # -- nothing lost ---------------------------------------------------------------
    cutoff = end - a.grace
    must: dict[str, tuple[str, int]] = {}  # link -> (feed id, newest rev delivered before cutoff)
    late_only: set[str] = set()
    delivered_rev: dict[str, int] = {}
    for feed in world.feeds:
        for s in per_feed.get(feed.index, []):
            if s.kind != "200" or s.daemon_error:  # the daemon dropped that answer
                continue
            count, revs = world.snapshots[(feed.index, s.version)]
            for n in range(count):
                link = normalize_link(world.item(feed, n, 0).link)
                rev = revs.get(n, 0)
                delivered_rev[link] = max(delivered_rev.get(link, 0), rev)
                if s.answered is not None and s.answered <= cutoff:
                    old = must.get(link, (feed.id, 0))[1]
                    must[link] = (feed.id, max(old, rev))
                else:
                    late_only.add(link)
    late_only -= must.keys()
    lost = [f"{fid}: {link}" for link, (fid, _) in must.items() if link not in by_link]
    stale = []
    for link, (fid, rev) in must.items():
        if link in titles:
            m = REV.search(titles[link])
            have = int(m.group(1)) if m else 0
            if not rev <= have <= delivered_rev.get(link, 0):
                stale.append(f"{fid}: {link} has rev {have}, delivered rev {rev}")
    extra = [k for k in by_link if k not in must and k not in late_only]
    undelivered = sum(1 for f in world.feeds for n in range(f.count)
                      if normalize_link(world.item(f, n, 0).link) not in delivered_rev)
    published = sum(f.count for f in world.feeds)
    checks.append(Check("nothing lost", not lost,
                        f"{len(must)} items delivered in a 200 more than {a.grace:g}s before "
                        f"SIGTERM, {len(must) - len(lost)} in the store"
                        + (f"; LOST {len(lost)}: {'; '.join(lost[:5])}" if lost else "")
                        + f"; {len(late_only)} delivered only in the last {a.grace:g}s "
                        f"({sum(1 for k in late_only if k in by_link)} of them stored); "
                        f"{undelivered} of {published} published items not fetched yet"))
    checks.append(Check("title edits applied", not stale,
                        f"{sum(1 for _, r in must.values() if r)} edited items delivered"
                        + (f"; {len(stale)} stale: {'; '.join(stale[:5])}" if stale else "")))
    checks.append(Check("no store file for an item never delivered", not extra,
                        f"{len(extra)} such files" + (f": {', '.join(extra[:5])}" if extra
                                                      else "")))

    # -- starvation -----------------------------------------------------------------
    startup = 30.0
    starve_checks, poll_figures = check_starvation(world, end, a.slack, startup, per_feed)
    checks += starve_checks
    figures.update(poll_figures)

    # -- errors recover -------------------------------------------------------------
    recovered, waiting, not_recovered = [], [], []
    failed_kinds: dict[str, int] = {}
    for feed in world.feeds:
        seq = per_feed.get(feed.index, [])
        fails = [j for j, s in enumerate(seq) if s.failed]
        state = states.get(feed.id, {})
        if not fails:
            if state.get("status") == "error":
                unexpected.append(f"{feed.id}: status error at the end ({state.get('error')})")
            continue
        for j in fails:
            kind = seq[j].kind if seq[j].kind not in ("200", "304") else "daemon-side"
            failed_kinds[kind] = failed_kinds.get(kind, 0) + 1
        last = fails[-1]
        if last < len(seq) - 1:  # polled again after its last failure, and answered well
            if state.get("status") in ("ok", "not_modified") and state.get("error_count") == 0:
                recovered.append(feed.id)
            else:
                not_recovered.append(f"{feed.id}: answered {seq[-1].kind} at {seq[-1].t:.0f}s "
                                     f"but status {state.get('status')}, error_count "
                                     f"{state.get('error_count')}")
        elif seq[last].t + allowed_gap(feed, seq, last, a.slack) <= end:
            not_recovered.append(f"{feed.id}: failed ({seq[last].kind}) at {seq[last].t:.0f}s "
                                 f"and was not polled again by {end:.0f}s")
        elif state.get("status") == "error" and state.get("error_count", 0) >= 1:
            waiting.append(feed.id)  # its backoff / Retry-After reaches past the end
        else:
            not_recovered.append(f"{feed.id}: last poll failed at {seq[last].t:.0f}s, yet "
                                 f"status {state.get('status')}, error_count "
                                 f"{state.get('error_count')}")
    checkable = [f for f in world.feeds if any(e.checkable for e in f.episodes)]
    checks.append(Check(
        "errors recover", not not_recovered,
        f"{len(recovered)} sources failed and recovered (status ok or not_modified, error "
        f"count 0); {len(waiting)} still backing off at the end (their next poll was due "
        f"after it); failed polls: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(failed_kinds.items()))}; the plan had "
        f"{len(checkable)} sources with an episode that ends early enough to recover"
        + (f"; NOT RECOVERED {len(not_recovered)}: {'; '.join(not_recovered[:5])}"
           if not_recovered else "")))
    checks.append(Check("no error the server did not cause", not unexpected,
                        f"{len(unexpected)}: " + "; ".join(unexpected[:5]) if unexpected
                        else "none"))

    internal = [ln for ln in log_text.splitlines()
                if "Traceback" in ln or "poll failed" in ln or "publish failed" in ln
                or "internal error" in ln]
    checks.append(Check("no internal error in the daemon log", not internal,
                        "; ".join(tail(ln, 200) for ln in internal[:3]) if internal else "none"))
    checks.append(Check("serving /index.xml while soaking", not probe_errors and bool(probes),
                        ", ".join(f"{k}: {v}" for k, v in sorted(probes.items()))
                        + (f"; errors: {'; '.join(probe_errors[:3])}" if probe_errors else "")))

    # -- memory ---------------------------------------------------------------------
    # Warm: every source polled at least once (the first round spreads them 0.05 s apart).
    warm_at = startup + 0.05 * a.feeds + 30 * (1 + JITTER)
    judged = run >= 2 * warm_at  # else the baseline is taken while the store still fills
    warm = next((s for s in rss if s[0] >= min(warm_at, run / 2)), rss[0] if rss else None)
    first = rss[0] if rss else None
    last = rss[-1] if rss else None
    if warm and last and first:
        growth = (last[1]["VmRSS"] - warm[1]["VmRSS"]) / 1024
        limit = max(a.rss_growth_mb, warm[1]["VmRSS"] / 1024 * 0.25)
        after = [(t, s["VmRSS"] / 1024) for t, s in rss if t >= warm[0]]
        slope = 0.0
        if len(after) >= 3:
            mt = statistics.fmean(t for t, _ in after)
            mr = statistics.fmean(r for _, r in after)
            den = sum((t - mt) ** 2 for t, _ in after)
            slope = sum((t - mt) * (r - mr) for t, r in after) / den * 60 if den else 0.0
        figures.update(rss_first=first[1]["VmRSS"] / 1024, rss_warm=warm[1]["VmRSS"] / 1024,
                       rss_warm_t=warm[0], rss_end=last[1]["VmRSS"] / 1024,
                       rss_peak=last[1].get("VmHWM", 0) / 1024, rss_slope=slope,
                       threads=(warm[1].get("Threads"), last[1].get("Threads")),
                       fds=(warm[1].get("fds"), last[1].get("fds")))
        checks.append(Check(
            "memory flat", growth <= limit or not judged,
            ("not judged (the run is too short for a warm baseline): " if not judged else "")
            + f"RSS {first[1]['VmRSS'] / 1024:.0f} MB at {first[0]:.0f}s, "
            f"{warm[1]['VmRSS'] / 1024:.0f} MB warm ({warm[0]:.0f}s), "
            f"{last[1]['VmRSS'] / 1024:.0f} MB at the end: {growth:+.1f} MB "
            f"(limit {limit:.0f} MB), trend {slope:+.2f} MB/min after warm-up; peak "
            f"{last[1].get('VmHWM', 0) / 1024:.0f} MB; threads {warm[1].get('Threads')} -> "
            f"{last[1].get('Threads')}, fds {warm[1].get('fds')} -> {last[1].get('fds')}"))
    else:
        checks.append(Check("memory flat", False, "no RSS samples"))

    statuses: dict[str, int] = {}
    for m in re.finditer(r" poll f\d{5} (ok|not_modified|error|skipped)", log_text):
        statuses[m.group(1)] = statuses.get(m.group(1), 0) + 1
    served: dict[str, int] = {}
    for s in world.log:
        served[s.kind] = served.get(s.kind, 0) + 1
    figures.update(
        served=served, log_statuses=statuses, published=published,
        publishes=len(re.findall(r"published \d+ feeds", log_text)),
        store_files=n_files, end=end, episodes=len(episodes),
        new_items=sum(f.count - a.initial_items for f in world.feeds),
        edits=sum(sum(f.revs.values()) for f in world.feeds))

    with open(work / "served.jsonl", "w") as out:  # for a post-mortem with --keep
        for srv in sorted(world.log, key=lambda x: x.t):
            out.write(json.dumps({"feed": world.feeds[srv.feed].id, "t": round(srv.t, 3),
                                  "answered": srv.answered and round(srv.answered, 3),
                                  "kind": srv.kind, "version": srv.version, "size": srv.size,
                                  "daemon_error": srv.daemon_error}) + "\n")
    ok = all(c.ok for c in checks)
    report = summary(a, argv, figures, checks, rss, ok)
    print()
    print(report)
    a.results.write_text(report)
    print(f"\nwrote {a.results}")
    if a.keep or not ok:
        print(f"soak: kept {work} (daemon.log, served.jsonl, store, public)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def summary(a: argparse.Namespace, argv: list[str], f: dict, checks: list[Check],
            rss: list[tuple[float, dict[str, int]]], ok: bool) -> str:
    cpu = load = "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "?")
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "aggregator"],
                           capture_output=True, text=True).stdout.strip()
    u = os.uname()
    served = ", ".join(f"{k} {v:,}" for k, v in sorted(f.get("served", {}).items()))
    polls = ", ".join(f"{k} {v:,}" for k, v in sorted(f.get("log_statuses", {}).items()))
    lines = [
        "# Soak: the daemon against loopback feeds that change, fail and recover",
        "",
        f"Written by `bench/soak.py` on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- machine: {os.cpu_count()} × {cpu}; {u.sysname} {u.release}; load average at the "
        f"end {load} (shared)",
        f"- aggregator git {rev}{', with uncommitted changes' if dirty else ''}",
        f"- command: `python bench/soak.py {' '.join(argv)}`",
        f"- {a.feeds} feeds (bench/corpus.py: RSS 2.0, Atom, RSS 1.0), {a.initial_items} items "
        f"each at the start, a new item every {a.add_every:g} s per feed on average, "
        + (f"a title edit every {a.edit_every:g} s" if a.edit_every else "no title edits")
        + f"; intervals 10-30 s, timeout {SOURCE_TIMEOUT:g} s, "
        f"keep_items 20; `daemon --serve --workers {a.workers}`",
        f"- run: {f.get('end', 0) / 60:.1f} min; {f.get('episodes', 0)} failure episodes "
        f"(500, 503 + Retry-After: 5, 404, timeout) on {a.fail_fraction:.0%} of the feeds",
        f"- served: {served}",
        f"- the daemon's polls (its log): {polls}; {f.get('publishes', 0)} publishes",
        f"- items: {f.get('published', 0):,} published by the feeds ({f.get('new_items', 0):,} "
        f"added during the run, {f.get('edits', 0)} title edits); "
        f"{f.get('store_files', 0):,} store files",
        f"- polls per source: min {f.get('polls_min')}, median {f.get('polls_median')}, "
        f"max {f.get('polls_max')}",
    ]
    if "rss_warm" in f:
        lines.append(f"- RSS: {f['rss_first']:.0f} MB first sample, {f['rss_warm']:.0f} MB "
                     f"warm ({f['rss_warm_t']:.0f} s), {f['rss_end']:.0f} MB at the end, "
                     f"peak {f['rss_peak']:.0f} MB; trend after warm-up "
                     f"{f['rss_slope']:+.2f} MB/min")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'ok' if c.ok else '**FAIL**'} | {c.detail} |" for c in checks]
    step = max(1, len(rss) // 12)
    lines += ["", "RSS samples (s: MB): " + ", ".join(
        f"{t}: {mb}" for t, mb in dict((f"{t:.0f}", f"{s['VmRSS'] / 1024:.0f}")
                                         for t, s in rss[::step] + rss[-1:]).items()),
        "",
        f"Result: {'pass' if ok else 'FAIL'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
