"""`aggregator serve` under load, beside nginx serving the same directory.

    python bench/serve_load.py [--seconds 10] [--connections 200] [--threads 2]

Builds an output directory from the shipped sample config (a copy of feeds.yaml,
examples/ and store/ in a temporary directory: `poll`, then `publish`), starts
`python -m aggregator serve` on it and Debian's nginx (bench/harness.py's config:
etag on, no access log, one worker) on the same directory, both on 127.0.0.1,
and runs Debian's wrk against `--path` (default /index.xml) on each:

    aggregator 200s    plain GETs
    nginx 200s
    aggregator 304s    GETs with If-None-Match: <the ETag that server gave>
    nginx 304s

A Lua `response` hook counts status codes; wrk counts socket errors. The table
(req/s, p50/p99 latency, non-2xx/3xx, socket errors, the aggregator/nginx ratio)
is printed and written to bench/RESULTS-serve.md.

Exit 1 if the aggregator had any socket error or an unexpected status (plain
run: anything but 200; conditional run: anything but 304, or no 304 at all);
2 if the set-up failed. nginx's figures are the yardstick and are not judged.
Every process started here is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from harness import Nginx, free_port, tail  # noqa: E402

WRK_LUA = r"""
-- Counts status codes per thread; done() sums them and prints one JSON line.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(total) do
    table.insert(parts, string.format('"%d": %d', k, v))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %.0f, "bytes": %.0f, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %.0f, ' ..
    '"p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f, ' ..
    '"statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, table.concat(parts, ", ")))
end
"""


@dataclass
class Run:
    server: str  # aggregator | nginx
    kind: str  # 200 | 304
    expect: int
    requests: int = 0
    seconds: float = 0.0
    bytes: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # connect read write timeout
    non_2xx_3xx: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failure: str = ""  # wrk did not run or printed nothing we could read

    @property
    def label(self) -> str:
        return f"{self.server} {self.kind}s"

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def unexpected(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != self.expect)

    def problems(self) -> list[str]:
        out = []
        if self.failure:
            out.append(self.failure)
        if self.socket_errors:
            out.append("socket errors " + ", ".join(f"{k} {v}" for k, v in self.errors.items()
                                                    if v))
        if self.non_2xx_3xx:
            out.append(f"{self.non_2xx_3xx} responses not 2xx/3xx")
        if self.unexpected:
            out.append(f"{self.unexpected} responses not {self.expect}: {self.statuses}")
        if not self.failure and self.statuses.get(self.expect, 0) == 0:
            out.append(f"no {self.expect} response at all")
        return out


# --- set-up ----------------------------------------------------------------


def build_site(work: Path, python: str) -> Path:
    """A copy of the sample config, polled and published; returns the output dir."""
    site = work / "site"
    site.mkdir()
    shutil.copy2(REPO / "feeds.yaml", site / "feeds.yaml")
    shutil.copytree(REPO / "examples", site / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if (REPO / "store").is_dir():
        shutil.copytree(REPO / "store", site / "store",
                        ignore=shutil.ignore_patterns(".aggregator"))
    for cmd in (["poll", "--json"], ["publish", "--json"]):
        r = subprocess.run([python, "-m", "aggregator", "--config", str(site / "feeds.yaml"),
                            *cmd], cwd=site, capture_output=True, text=True, timeout=300)
        print(f"  aggregator {' '.join(cmd)}: exit {r.returncode}")
        if r.returncode != 0:
            raise SystemExit(f"aggregator {cmd[0]} failed (exit {r.returncode}): "
                             f"{tail(r.stderr or r.stdout)}")
    out = site / "public"
    if not (out / "index.xml").is_file():
        raise SystemExit(f"{out}/index.xml was not published")
    return out


def wait_listening(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {seconds:.0f} s")


def stop_process(proc: subprocess.Popen, name: str) -> int | None:
    """SIGINT (serve's clean stop), then SIGTERM, then SIGKILL; by this pid only."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                print(f"  {name} (pid {proc.pid}) still running after {sig.name}")
    print(f"  {name} (pid {proc.pid}) stopped: exit {proc.returncode}")
    return proc.returncode


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def conditional_closes(url: str, etag: str) -> tuple[int, bool]:
    """The status of a conditional GET on a keep-alive connection (http.client asks for
    none to be closed, unlike urllib), and whether the server closes it after that."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path, headers={"If-None-Match": etag})
        r = conn.getresponse()
        r.read()
        return r.status, r.will_close
    finally:
        conn.close()


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- wrk -------------------------------------------------------------------


def run_wrk(run: Run, url: str, script: Path, args: argparse.Namespace, log: Path,
            etag: str | None = None) -> Run:
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections),
           "-d", f"{args.seconds}s", "--timeout", f"{args.timeout}s", "-s", str(script)]
    if etag:
        cmd += ["-H", f"If-None-Match: {etag}"]
    cmd.append(url)
    print(f"  {run.label}: {' '.join(cmd)}")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60)
    except subprocess.TimeoutExpired:
        run.failure = "wrk did not finish"
        return run
    log.write_text(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if r.returncode != 0 or line is None:
        run.failure = f"wrk exit {r.returncode}: {tail(r.stderr or r.stdout, 200)}"
        return run
    data = json.loads(line.removeprefix("WRKJSON "))
    run.requests = data["requests"]
    run.seconds = data["duration_us"] / 1e6
    run.bytes = int(data["bytes"])
    run.p50_ms = data["p50_us"] / 1000
    run.p99_ms = data["p99_us"] / 1000
    run.errors = {k: data[k] for k in ("connect", "read", "write", "timeout")}
    run.non_2xx_3xx = data["status"]
    run.statuses = {int(k): v for k, v in data["statuses"].items()}
    return run


# --- report ----------------------------------------------------------------


HEADER = ["server", "req/s", "p50 latency", "p99 latency", "non-2xx/3xx",
          "socket errors (connect/read/write/timeout)", "statuses"]


def rows(runs: list[Run]) -> list[list[str]]:
    out = []
    for r in runs:
        if r.failure:
            out.append([r.label, "—", "—", "—", "—", "—", r.failure])
            continue
        e = r.errors
        out.append([r.label, f"{r.rps:,.0f}", f"{r.p50_ms:.1f} ms", f"{r.p99_ms:.1f} ms",
                    str(r.non_2xx_3xx),
                    f"{r.socket_errors} ({e['connect']}/{e['read']}/{e['write']}/{e['timeout']})",
                    ", ".join(f"{k}: {v:,}" for k, v in sorted(r.statuses.items()))])
    by = {(r.server, r.kind): r for r in runs}
    for kind in ("200", "304"):
        a, n = by.get(("aggregator", kind)), by.get(("nginx", kind))
        if a and n and a.rps and n.rps:
            out.append([f"ratio aggregator/nginx, {kind}s", f"{a.rps / n.rps:.3f}",
                        f"{a.p50_ms / n.p50_ms:.1f}×" if n.p50_ms else "—",
                        f"{a.p99_ms / n.p99_ms:.1f}×" if n.p99_ms else "—", "", "", ""])
    return out


def term_table(rs: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rs]) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [HEADER, *rs])


def md_table(rs: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rs]
    return "\n".join(lines)


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = "?"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    uname = os.uname()
    return [f"- machine: {os.cpu_count()} × {cpu}; {uname.sysname} {uname.release}",
            f"- load average at start: {load} (the machine is shared; wrk runs on it too)"]


def versions(python: str) -> list[str]:
    def out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (r.stdout.strip() or r.stderr.strip()).splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    rev = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "aggregator"],
                           capture_output=True, text=True).stdout.strip()
    agg = out([python, "-c", "import aggregator; print(aggregator.__version__)"])
    waitress = out([python, "-c", "from importlib.metadata import version; "
                    "print(version('waitress'))"])
    return [f"- aggregator {agg} (git {rev}{', with uncommitted changes' if dirty else ''}), "
            f"waitress {waitress}, python {out([python, '-V']).split()[-1]}",
            f"- {out(['nginx', '-v'])}; {out(['wrk', '--version']).split(' Copyright')[0]}"]


def write_report(path: Path, runs: list[Run], args: argparse.Namespace, info: dict,
                 argv: list[str]) -> None:
    cmd = "python bench/serve_load.py " + " ".join(argv)
    lines = [
        "# `aggregator serve` under load, beside nginx",
        "",
        f"Written by `bench/serve_load.py` on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        *machine(),
        *versions(info["python"]),
        f"- command: `{cmd.strip()}`",
        f"- load: wrk, {args.threads} threads, {args.connections} connections, "
        f"{args.seconds} s per row, timeout {args.timeout} s, on `{args.path}` "
        f"({info['size']:,} bytes, no Accept-Encoding, so no gzip on either side)",
        "- aggregator: `python -m aggregator serve --bind 127.0.0.1:PORT` (waitress, 16 "
        "threads, one process); nginx: one worker, `etag on`, `access_log off`, sendfile, "
        "same directory",
        "- 304 rows send `If-None-Match` with the ETag that server gave for the file",
        f"- aggregator RSS: {info.get('rss_before', '?')} kB before the runs, "
        f"{info.get('rss_after', '?')} kB after",
        "",
        md_table(rows(runs)),
        "",
    ]
    for note in info.get("notes", []):
        lines.append(f"- ⚠ {note}")
    verdict = info["verdict"]
    lines += ["", f"Result: {verdict}", ""]
    path.write_text("\n".join(lines))


# --- main ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5, help="wrk's per-request timeout (s)")
    ap.add_argument("--path", default="/index.xml")
    ap.add_argument("--results", type=Path, default=BENCH / "RESULTS-serve.md")
    ap.add_argument("--python", default=os.environ.get("PYTHON") or sys.executable,
                    help="the python that runs the aggregator")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if not shutil.which("wrk") or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("serve_load: needs Debian's wrk and nginx (apt-get install wrk nginx)",
              file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="aggregator-serve-load-"))
    work.chmod(0o755)  # mkdtemp makes 0700: nginx's workers (another user) must get in
    print(f"serve_load: working in {work}")
    info: dict = {"python": args.python, "notes": []}
    runs: list[Run] = []
    serve: subprocess.Popen | None = None
    nginx: Nginx | None = None
    try:
        out = build_site(work, args.python)
        script = work / "status.lua"
        script.write_text(WRK_LUA)
        port = free_port()
        serve_log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed in finally
        cmd = [args.python, "-m", "aggregator", "--config", str(out.parent / "feeds.yaml"),
               "serve", "--bind", f"127.0.0.1:{port}"]
        print(f"  serve: {' '.join(cmd)}")
        # SIGINT is serve's clean stop; a shell's background job would inherit it ignored.
        serve = subprocess.Popen(cmd, cwd=out.parent, stdin=subprocess.DEVNULL,
                                 stdout=serve_log, stderr=subprocess.STDOUT,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_listening(port, serve)
        nginx = Nginx(out, work / "nginx")
        nginx.start()
        urls = {"aggregator": f"http://127.0.0.1:{port}{args.path}",
                "nginx": f"{nginx.url}{args.path}"}

        # Preflight: both serve the same bytes; each gives an ETag and a 304 for it.
        etags: dict[str, str] = {}
        bodies: dict[str, bytes] = {}
        for name, url in urls.items():
            status, headers, body = get(url)
            if name == "nginx" and status == 403:
                mode = oct((out / args.path.lstrip("/")).stat().st_mode & 0o777)
                note = (f"nginx answered 403 for {args.path}: the published files are mode "
                        f"{mode} (aggregator/store.py write_atomic: tempfile.mkstemp makes "
                        "0600 files and nothing widens them), so a web server running as "
                        "another user (nginx's workers) cannot read the output directory. "
                        "Measured after `chmod -R a+rX` on the output.")
                print(f"  ⚠ {note}")
                info["notes"].append(note)
                subprocess.run(["chmod", "-R", "a+rX", str(out)], check=True)
                status, headers, body = get(url)
            if status != 200 or "etag" not in headers:
                raise SystemExit(f"{name}: GET {url} -> {status}, ETag {headers.get('etag')}")
            etags[name], bodies[name] = headers["etag"], body
            cstatus, closes = conditional_closes(url, headers["etag"])
            if closes:
                note = (f"{name} closes the connection after every 304 (`Connection: close`): "
                        "each conditional request costs a new TCP connection")
                if name == "aggregator":
                    note += (" (waitress ends a keep-alive connection after any response "
                             "without Content-Length, and it never sends one with a 304: "
                             "waitress/task.py build_response_header)")
                info["notes"].append(note)
            print(f"  {name}: {url} -> 200, {len(body):,} bytes, ETag {headers['etag']}; "
                  f"conditional -> {cstatus}")
        if bodies["aggregator"] != bodies["nginx"]:
            raise SystemExit("the two servers returned different bytes for the same file")
        info["size"] = len(bodies["aggregator"])
        info["rss_before"] = rss_kb(serve.pid)

        plan = [Run("aggregator", "200", 200), Run("nginx", "200", 200),
                Run("aggregator", "304", 304), Run("nginx", "304", 304)]
        for run in plan:
            etag = etags[run.server] if run.kind == "304" else None
            runs.append(run_wrk(run, urls[run.server], script, args,
                                work / f"wrk-{run.server}-{run.kind}.log", etag))
            if serve.poll() is not None:
                info["notes"].append(f"aggregator serve exited {serve.returncode} during the "
                                     f"{run.label} run")
                break
        info["rss_after"] = rss_kb(serve.pid)
    except SystemExit as e:
        print(f"serve_load: {e}", file=sys.stderr)
        return 2
    finally:
        if nginx is not None:
            nginx.stop()
        if serve is not None:
            rc = stop_process(serve, "aggregator serve")
            if rc not in (0, None):
                info["notes"].append(f"aggregator serve exited {rc} when stopped with SIGINT")
            log = (work / "serve.log").read_text(errors="replace")
            if "Traceback" in log:
                info["notes"].append("aggregator serve printed a traceback: "
                                     + tail(log[log.index("Traceback"):], 300))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"serve_load: kept {work}")

    problems = [f"{r.label}: {p}" for r in runs if r.server == "aggregator"
                for p in r.problems()]
    problems += [n for n in info["notes"] if n.startswith("aggregator serve")]
    info["verdict"] = ("FAIL — " + "; ".join(problems)) if problems else (
        "pass — the aggregator answered every request with the expected status, "
        "no socket errors, 304 for every conditional request")
    table = term_table(rows(runs))
    print()
    print(table)
    for r in runs:
        if r.server == "nginx" and r.problems():
            print(f"(nginx {r.kind}s: {'; '.join(r.problems())})")
    for note in info["notes"]:
        print(f"⚠ {note}")
    print(f"\n{info['verdict']}")
    write_report(args.results, runs, args, info, argv)
    print(f"wrote {args.results}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
