"""The project's benchmark: aggregator and its anchors, side by side, in one run.

See bench/README.md. Entry point: ``bench/run`` (which runs this file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402
from harness import (  # noqa: E402
    Nginx,
    Sample,
    Stats,
    copytree,
    diff_listing,
    listing,
    measure,
    rmtree,
    tail,
    tree_size,
    why,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
AGG = "aggregator"
READER = "reader"
HUGO = "hugo"
FEEDPARSER = "feedparser.parse"
LXML = "lxml.etree.fromstring"
WORKLOAD_TITLES = {
    1: "cold poll",
    2: "warm poll (all 304)",
    3: "delta poll (after --mutate 10)",
    4: "full publish",
    5: "incremental publish",
    6: "publish, store unchanged",
    7: "scaling",
}

# --- options ---------------------------------------------------------------


@dataclass
class Options:
    feeds: int
    items: int
    runs: int
    scale_runs: int
    store_items: int
    publish_delta: int
    scale: list[int]
    workloads: set[int]
    fs: list[str]
    seed: int
    workdir: Path
    results: Path
    reader_workers: int
    anchors: bool
    timeout: float
    port: int
    quick: bool
    keep: bool
    argv: list[str]


def parse_args(argv: list[str]) -> Options:
    ap = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark aggregator against reader, hugo, feedparser and lxml "
                    "on one generated corpus served by nginx; prints ratios.")
    ap.add_argument("--feeds", type=int, help="feeds for workloads 1-3 (default 1000)")
    ap.add_argument("--items", type=int, help="items per feed (default 20)")
    ap.add_argument("--runs", type=int, help="runs per figure, median reported (default 3)")
    ap.add_argument("--scale-runs", type=int, help="runs per scaling point (default: --runs)")
    ap.add_argument("--store-items", type=int,
                    help="items in the store of workloads 4-6 (default 50000)")
    ap.add_argument("--publish-delta", type=int,
                    help="items the poll before workload 5 adds (default 100)")
    ap.add_argument("--scale", help="store sizes for workload 7, in items "
                                    "(default 1000,10000,50000,100000)")
    ap.add_argument("--workloads", default="1,2,3,4,5,6,7", help="e.g. 1,2,3 (default all)")
    ap.add_argument("--fs", default=None,
                    help="where stores, databases and outputs live: disk, tmpfs or "
                         "disk,tmpfs (default both)")
    ap.add_argument("--tmpfs", action="store_true", help="same as --fs tmpfs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 50 feeds x 10 items, 1 run, small store and scale")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=BENCH / "work")
    ap.add_argument("--results", type=Path,
                    help="report file (default bench/RESULTS.md; with --quick "
                         "bench/work/RESULTS-quick.md)")
    ap.add_argument("--reader-workers", type=int, default=2,
                    help="reader update_feeds(workers=N); the aggregator makes at most 2 "
                         "requests at once to one host (default 2)")
    ap.add_argument("--no-anchors", action="store_true", help="run only the aggregator")
    ap.add_argument("--timeout", type=float, default=3600, help="per process, seconds")
    ap.add_argument("--port", type=int, default=18765, help="nginx port, if free")
    ap.add_argument("--keep", action="store_true",
                    help="keep the stores, databases and outputs (default: removed)")
    a = ap.parse_args(argv)
    q = a.quick
    feeds = a.feeds or (50 if q else 1000)
    items = a.items or (10 if q else 20)
    runs = a.runs or (1 if q else 3)
    scale = a.scale or ("200,500" if q else "1000,10000,50000,100000")
    fs = "tmpfs" if a.tmpfs else (a.fs or "disk,tmpfs")
    return Options(
        feeds=feeds, items=items, runs=runs, scale_runs=a.scale_runs or runs,
        store_items=a.store_items or (1000 if q else 50000),
        publish_delta=a.publish_delta or (10 if q else 100),
        scale=[int(x) for x in scale.split(",") if x.strip()],
        workloads={int(x) for x in a.workloads.split(",") if x.strip()},
        fs=[x.strip() for x in fs.split(",") if x.strip()],
        seed=a.seed, workdir=a.workdir.resolve(),
        results=(a.results or (a.workdir / "RESULTS-quick.md" if q else BENCH / "RESULTS.md")
                 ).resolve(),
        reader_workers=a.reader_workers, anchors=not a.no_anchors, timeout=a.timeout,
        port=a.port, quick=q, keep=a.keep, argv=argv)


# --- results ---------------------------------------------------------------


@dataclass
class Entry:
    fs: str
    key: str  # "1" .. "6", "7:poll:1000", "7:publish:1000"
    label: str
    tool: str
    stats: Stats


@dataclass
class Task:
    tool: str
    cmd: list[str]
    prepare: Callable[[], None] | None = None
    check: Callable[[Sample], tuple[str, str]] | None = None  # -> (error, note)
    cwd: Path | None = None
    env: dict | None = None


@dataclass
class Context:
    opt: Options
    nginx: Nginx
    python: str
    reader_python: str | None
    hugo: str | None
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    corpora: dict[str, dict] = field(default_factory=dict)
    floors_done: bool = False
    nginx_bin: str = ""
    anchors_on: bool = True
    src: Path = REPO  # where `aggregator` is imported from (a copy of the working tree)
    version: str = ""

    def corpus(self, n_feeds: int, n_items: int) -> tuple[Path, str]:
        """Generate (or reset to unmutated) a corpus; return its dir and its base URL."""
        name = f"n{n_feeds}x{n_items}s{self.opt.seed}"
        root = self.opt.workdir / "corpora" / name
        url = f"{self.nginx.url}/{name}"
        t0 = time.perf_counter()
        m = corpus.generate(root, n_feeds, n_items, self.opt.seed, url)
        print(f"  corpus {name}: {n_feeds} feeds x {n_items} items, "
              f"{m['bytes'] / 1e6:.1f} MB ({time.perf_counter() - t0:.1f} s)")
        self.corpora[name] = m
        return root, url

    def agg(self, config: Path, *args: str) -> list[str]:
        return [self.python, "-m", "aggregator", "--config", str(config), *args]

    @property
    def agg_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.src)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.pop("AGGREGATOR_CONFIG", None)
        return env


def run_series(ctx: Context, fs: str, key: str, label: str, tasks: list[Task],
               runs: int) -> dict[str, Stats]:
    """Run every task ``runs`` times, interleaved (A B A B ...), so drift hits all alike."""
    stats = {t.tool: Stats() for t in tasks}
    for t in tasks:
        ctx.commands.setdefault(f"{label} — {t.tool}", " ".join(t.cmd))
    for r in range(runs):
        for t in tasks:
            st = stats[t.tool]
            if st.error:
                continue
            try:
                if t.prepare:
                    t.prepare()
            except Exception as e:  # a failed set-up is recorded, not fatal
                st.error = f"set-up failed: {type(e).__name__}: {tail(str(e))}"
                print(f"  [{fs} {key}] {t.tool}: {st.error}")
                continue
            log = ctx.opt.workdir / "logs" / f"{fs}-{key.replace(':', '-')}-{t.tool}-{r}"
            s = measure(t.cmd, cwd=t.cwd, env=t.env, log=log, timeout=ctx.opt.timeout)
            st.samples.append(s)
            err, note = "", ""
            if t.check:
                err, note = t.check(s)
            elif s.rc != 0:
                err = why(s)
            if err:
                st.error = err
            if note:
                st.note = note
            print(f"  [{fs} {key}] {t.tool} run {r + 1}/{runs}: {s.seconds:.2f} s, "
                  f"{s.peak_kb / 1024:.0f} MB" + (f" — {note}" if note else "")
                  + (f" — ERROR {err}" if err else ""))
    for t in tasks:
        ctx.entries.append(Entry(fs, key, label, t.tool, stats[t.tool]))
    return stats


def last_json(text: str) -> dict | None:
    text = text.strip()
    try:
        v = json.loads(text)
        return v if isinstance(v, dict) else None
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def poll_check(expect_new: int | None, expect_304: int | None = None):
    """Check ``poll --json`` (aggregator) or reader_anchor output."""

    def check(s: Sample) -> tuple[str, str]:
        out = last_json(s.stdout)
        if s.rc not in (0, 1) or out is None:
            return why(s), ""
        new, upd = out.get("new"), out.get("updated")
        errors = out.get("errors")
        n_err = len(errors) if isinstance(errors, list) else (errors or 0)
        not_mod = out.get("not_modified")
        if not_mod is None and isinstance(out.get("sources"), list):
            not_mod = sum(1 for x in out["sources"] if x.get("status") == "not_modified")
        note = f"new={new} updated={upd} 304={not_mod} errors={n_err}"
        warn = []
        if expect_new is not None and new != expect_new:
            warn.append(f"expected {expect_new} new")
        if expect_304 is not None and not_mod != expect_304:
            warn.append(f"expected {expect_304} not modified")
        if n_err:
            warn.append(f"{n_err} errors: {tail(str(out.get('first_errors') or ''), 150)}")
        if s.rc != 0:
            warn.append(f"exit {s.rc}")
        if warn:
            note += " ⚠ " + "; ".join(warn)
        return "", note

    return check


def rc_check(s: Sample) -> tuple[str, str]:
    if s.rc != 0:
        return why(s), ""
    return "", ""


# --- configs and sites -----------------------------------------------------


def write_config(path: Path, base_url: str, n_feeds: int, ids: list[int] | None = None) -> None:
    """feeds.yaml (SPEC section 2) for a corpus: one source per feed, 50 categories."""
    q = json.dumps
    lines = [
        "site:",
        "  title: 智能医疗资讯 (bench)",
        "  description: aggregator benchmark",
        "  base_url: http://127.0.0.1:8000/",
        "  language: zh-CN",
        "  timezone: Asia/Shanghai",
        "store: store",
        "output: public",
        "defaults:",
        "  interval: 30m",
        "  timeout: 20s",
        "  max_bytes: 10MB",
        "  keep_items: 50",
        "sources:",
    ]
    for i in ids if ids is not None else range(n_feeds):
        fid = corpus.feed_id(i)
        cat = corpus.SOURCE_CATEGORIES[i % corpus.N_CATEGORIES]
        lines += [f"  - id: {fid}", f"    url: {base_url}/feeds/{fid}.xml",
                  f"    categories: [{q(cat, ensure_ascii=False)}]"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


HUGO_CONFIG = """\
# Only the RSS of the home page and of every tag and category term is built;
# pages are listed in those feeds but not rendered (_build.render = "link").
baseURL = "http://127.0.0.1:8000/"
languageCode = "zh-CN"
title = "aggregator bench"
contentDir = {content}
timeZone = "Asia/Shanghai"
rssLimit = 50
disableKinds = ["taxonomy", "section", "sitemap", "robotsTXT", "404"]
ignoreErrors = ["error-disable-taxonomy"]
ignoreFiles = ['[\\\\/]\\.aggregator[\\\\/]']
[taxonomies]
  tag = "tags"
  category = "categories"
[outputs]
  home = ["RSS"]
  term = ["RSS"]
[[cascade]]
  [cascade._build]
    render = "link"
    list = "always"
  [cascade._target]
    kind = "page"
"""


def write_hugo_site(site: Path, content: Path) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "config.toml").write_text(HUGO_CONFIG.format(content=json.dumps(str(content))))


def hugo_cmd(ctx: Context, site: Path, out: Path) -> list[str]:
    return [ctx.hugo or "hugo", "--quiet", "--noBuildLock", "-s", str(site), "-d", str(out),
            "--cacheDir", str(site / "cache")]


def reader_setup(ctx: Context, db_dir: Path, base_url: str, n_feeds: int) -> None:
    rmtree(db_dir)
    db_dir.mkdir(parents=True)
    urls = db_dir / "urls.txt"
    urls.write_text("".join(f"{base_url}/feeds/{corpus.feed_id(i)}.xml\n"
                            for i in range(n_feeds)))
    subprocess.run([ctx.reader_python, str(BENCH / "reader_anchor.py"), "setup",
                    str(db_dir / "db.sqlite"), str(urls)], check=True, capture_output=True)


def reader_update_cmd(ctx: Context, db_dir: Path) -> list[str]:
    return [ctx.reader_python, str(BENCH / "reader_anchor.py"), "update",
            str(db_dir / "db.sqlite"), "--workers", str(ctx.opt.reader_workers)]


def output_note(path: Path) -> str:
    n, size = tree_size(path)
    return f"{n} files, {size / 1e6:.1f} MB"


# --- workloads 1-3 ---------------------------------------------------------


def poll_workloads(ctx: Context, fs: str, base: Path) -> None:
    o = ctx.opt
    n, m = o.feeds, o.items
    print(f"\n== {fs}: workloads 1-3, {n} feeds x {m} items")
    root, url = ctx.corpus(n, m)
    d = base / "poll"
    rmtree(d)
    agg_dir, rdr_dir = d / "agg", d / "reader"
    cfg = agg_dir / "feeds.yaml"
    write_config(cfg, url, n)
    use_reader = ctx.anchors_on and ctx.reader_python

    def agg_cold_prep() -> None:
        rmtree(agg_dir / "store")
        rmtree(agg_dir / "public")

    label = f"cold poll, {n:,} feeds × {m} ({n * m:,} items)"
    tasks = [Task(AGG, ctx.agg(cfg, "poll", "--json"), agg_cold_prep,
                  poll_check(n * m, 0), agg_dir, ctx.agg_env)]
    if use_reader:
        tasks.append(Task(READER, reader_update_cmd(ctx, rdr_dir),
                          lambda: reader_setup(ctx, rdr_dir, url, n), poll_check(n * m, 0)))
    if ctx.anchors_on and not ctx.floors_done:
        for tool, lib in ((FEEDPARSER, "feedparser"), (LXML, "lxml")):
            tasks.append(Task(tool, [ctx.python, str(BENCH / "floor.py"), lib, str(root)],
                              check=rc_check))
    if 1 in o.workloads or 2 in o.workloads or 3 in o.workloads:
        stats = run_series(ctx, fs, "1", label, tasks, o.runs if 1 in o.workloads else 1)
        if FEEDPARSER in stats:
            ctx.floors_done = True
        if 1 not in o.workloads:  # only the set-up for 2 and 3
            ctx.entries = [e for e in ctx.entries if not (e.fs == fs and e.key == "1")]
    if 2 in o.workloads:
        label = f"warm poll, {n:,} feeds, nothing changed"
        tasks = [Task(AGG, ctx.agg(cfg, "poll", "--json"), None, poll_check(0, n), agg_dir,
                      ctx.agg_env)]
        if use_reader:
            tasks.append(Task(READER, reader_update_cmd(ctx, rdr_dir), None, poll_check(0, n)))
        run_series(ctx, fs, "2", label, tasks, o.runs)
    if 3 in o.workloads:
        snap = d / "snap"
        copytree(agg_dir, snap / "agg")
        if use_reader:
            copytree(rdr_dir, snap / "reader")
        chosen = corpus.mutate(root, 10)
        k = len(chosen)
        label = f"delta poll, {k} of {n:,} feeds changed ({2 * k} new items)"
        tasks = [Task(AGG, ctx.agg(cfg, "poll", "--json"),
                      lambda: copytree(snap / "agg", agg_dir), poll_check(2 * k, n - k),
                      agg_dir, ctx.agg_env)]
        if use_reader:
            tasks.append(Task(READER, reader_update_cmd(ctx, rdr_dir),
                              lambda: copytree(snap / "reader", rdr_dir),
                              poll_check(2 * k, n - k)))
        run_series(ctx, fs, "3", label, tasks, o.runs)


# --- building a store ------------------------------------------------------


def build_store(ctx: Context, agg_dir: Path, cfg: Path, root: Path, n_items: int) -> str:
    """Fill agg_dir/store by a cold poll; if the aggregator cannot, write it directly."""
    rmtree(agg_dir / "store")
    rmtree(agg_dir / "public")
    s = measure(ctx.agg(cfg, "poll", "--json"), cwd=agg_dir, env=ctx.agg_env,
                log=ctx.opt.workdir / "logs" / f"build-store-{agg_dir.parent.name}",
                timeout=ctx.opt.timeout)
    out = last_json(s.stdout)
    new = out.get("new") if out else None
    if s.rc in (0, 1) and isinstance(new, int) and new >= 0.95 * n_items:
        return (f"store built by `aggregator poll` ({s.seconds:.1f} s, {new} new items"
                + ("" if new == n_items else f" ⚠ of {n_items}") + ")")
    reason = f"{why(s)}; new={out.get('new') if out else None}"
    rmtree(agg_dir / "store")
    n = corpus.write_store(root, agg_dir / "store")
    return f"store generated directly in the SPEC §3 format ({n} files): poll failed ({reason})"


# --- workload 7 ------------------------------------------------------------


def scale_workloads(ctx: Context, fs: str, base: Path) -> None:
    o = ctx.opt
    for size in o.scale:
        n = max(1, size // o.items)
        print(f"\n== {fs}: workload 7, {size:,} items ({n} feeds x {o.items})")
        root, url = ctx.corpus(n, o.items)
        d = base / f"scale-{size}"
        rmtree(d)
        agg_dir, rdr_dir, hugo_dir = d / "agg", d / "reader", d / "hugo"
        cfg = agg_dir / "feeds.yaml"
        write_config(cfg, url, n)

        def prep(agg_dir: Path = agg_dir) -> None:
            rmtree(agg_dir / "store")
            rmtree(agg_dir / "public")

        tasks = [Task(AGG, ctx.agg(cfg, "poll", "--json"), prep, poll_check(n * o.items, 0),
                      agg_dir, ctx.agg_env)]
        if ctx.anchors_on and ctx.reader_python:
            tasks.append(Task(READER, reader_update_cmd(ctx, rdr_dir),
                              lambda rdr_dir=rdr_dir, url=url, n=n: reader_setup(
                                  ctx, rdr_dir, url, n),
                              poll_check(n * o.items, 0)))
        stats = run_series(ctx, fs, f"7:poll:{size}", f"scaling: cold poll, {size:,} items",
                           tasks, o.scale_runs)
        rmtree(rdr_dir)
        if not stats[AGG].ok or not (agg_dir / "store").is_dir():
            note = build_store(ctx, agg_dir, cfg, root, n * o.items)
            ctx.notes.append(f"{fs}, scaling {size:,}: {note}")
        publish_series(ctx, fs, f"7:publish:{size}", f"scaling: full publish, {size:,} items",
                       agg_dir, cfg, hugo_dir, o.scale_runs)
        if size != o.store_items:
            rmtree(d)


def publish_series(ctx: Context, fs: str, key: str, label: str, agg_dir: Path, cfg: Path,
                   hugo_dir: Path, runs: int) -> dict[str, Stats]:
    """Full publish into an empty output directory, aggregator and hugo."""
    out = agg_dir / "public"

    def check(s: Sample) -> tuple[str, str]:
        if s.rc != 0:
            return why(s), ""
        return "", output_note(out)

    tasks = [Task(AGG, ctx.agg(cfg, "publish", "--json"), lambda: rmtree(out), check,
                  agg_dir, ctx.agg_env)]
    if ctx.anchors_on and ctx.hugo:
        write_hugo_site(hugo_dir / "site", agg_dir / "store")
        hout = hugo_dir / "out"

        def hcheck(s: Sample) -> tuple[str, str]:
            if s.rc != 0:
                return why(s), ""
            return "", output_note(hout)

        tasks.append(Task(HUGO, hugo_cmd(ctx, hugo_dir / "site", hout),
                          lambda: rmtree(hout), hcheck))
    stats = run_series(ctx, fs, key, label, tasks, runs)
    if ctx.hugo and HUGO in stats and stats[HUGO].ok and stats[AGG].ok:
        ctx.notes.append(f"{fs}, {label}: " + compare_terms(out, hugo_dir / "out"))
    return stats


def compare_terms(agg_out: Path, hugo_out: Path) -> str:
    """Are the term feeds where Hugo puts them (SPEC section 4)? Same paths, same count."""
    def feeds(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for kind in ("tags", "categories")
                for p in (root / kind).rglob("index.xml") if p.parent != root / kind}
    a, h = feeds(agg_out), feeds(hugo_out)
    missing = sorted(h - a)
    extra = sorted(a - h)
    text = (f"{len(h)} tag and category feeds built by hugo, {len(h) - len(missing)} of them "
            f"at the same path in the aggregator's output")
    if missing:
        text += " ⚠ not there: " + ", ".join(f"`{m}`" for m in missing[:6])
        text += f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""
    if extra:
        text += f"; {len(extra)} the aggregator has and hugo has not: "
        text += ", ".join(f"`{m}`" for m in extra[:6])
    return text


# --- workloads 4-6 ---------------------------------------------------------


def publish_workloads(ctx: Context, fs: str, base: Path) -> None:
    o = ctx.opt
    n = max(1, o.store_items // o.items)
    size = n * o.items
    print(f"\n== {fs}: workloads 4-6, store of {size:,} items ({n} feeds x {o.items})")
    d = base / f"scale-{size}"
    agg_dir, hugo_dir = d / "agg", d / "hugo"
    cfg = agg_dir / "feeds.yaml"
    have_store = 7 in o.workloads and size in o.scale and (agg_dir / "store").is_dir()
    root, url = ctx.corpus(n, o.items)
    if have_store:
        ctx.notes.append(f"{fs}: the {size:,}-item store of workloads 4-6 is the one of "
                         f"workload 7's cold poll at {size:,} items")
    else:
        rmtree(d)
        write_config(cfg, url, n)
        print("  building the store (untimed) ...")
        ctx.notes.append(f"{fs}, workloads 4-6: "
                         + build_store(ctx, agg_dir, cfg, root, size))
    out = agg_dir / "public"
    hout = hugo_dir / "out"
    if 4 in o.workloads or not out.is_dir():
        publish_series(ctx, fs, "4", f"full publish, {size:,}-item store, empty output",
                       agg_dir, cfg, hugo_dir, o.runs if 4 in o.workloads else 1)
        if 4 not in o.workloads:
            ctx.entries = [e for e in ctx.entries if not (e.fs == fs and e.key == "4")]
    if 5 in o.workloads:
        snap = d / "snap"
        copytree(agg_dir, snap)
        pct = o.publish_delta / 2 / n * 100
        chosen = corpus.mutate(root, pct)
        k = 2 * len(chosen)
        ids = [corpus.feed_id(i) for i in chosen]
        state: dict[str, object] = {}

        def prep() -> None:
            state.clear()
            copytree(snap, agg_dir)
            s = measure(ctx.agg(cfg, "poll", *ids, "--json"), cwd=agg_dir, env=ctx.agg_env,
                        log=o.workdir / "logs" / f"{fs}-5-poll", timeout=o.timeout)
            res = last_json(s.stdout)
            new = res.get("new") if res else None
            if s.rc in (0, 1) and isinstance(new, int) and new > 0:
                if new != k:
                    state["poll"] = f"the poll before it added {new} items, not {k}"
            else:
                # the poll failed: add the new items to the store directly, so that the
                # publish still has something to do (noted in the report)
                corpus.write_store(root, agg_dir / "store", corpus.corpus_feeds(root, chosen))
                state["poll"] = (f"poll of {len(ids)} feeds failed (exit {s.rc}, "
                                 f"new={res.get('new') if res else None}); "
                                 f"{k} items written into the store directly")
            state["before"] = listing(out)

        def check(s: Sample) -> tuple[str, str]:
            if s.rc != 0:
                return why(s), ""
            a, c, r = diff_listing(state["before"], listing(out))
            note = f"+{k} items; wrote {a} new and {c} changed files, removed {r}"
            if "poll" in state:
                note += " ⚠ " + str(state["poll"])
            return "", note

        tasks = [Task(AGG, ctx.agg(cfg, "publish", "--json"), prep, check, agg_dir,
                      ctx.agg_env)]
        if ctx.anchors_on and ctx.hugo:
            hstate: dict[str, object] = {}

            def hprep() -> None:
                hstate["before"] = listing(hout)

            def hcheck(s: Sample) -> tuple[str, str]:
                if s.rc != 0:
                    return why(s), ""
                a, c, r = diff_listing(hstate["before"], listing(hout))
                return "", (f"full rebuild into the existing output (hugo has no incremental"
                            f" build): wrote {a} new and {c} changed files")

            tasks.append(Task(HUGO, hugo_cmd(ctx, hugo_dir / "site", hout), hprep, hcheck))
        run_series(ctx, fs, "5", f"incremental publish, {size:,}-item store + {k} items",
                   tasks, o.runs)
    if 6 in o.workloads:
        before: dict[str, dict] = {}

        def prep6() -> None:
            before["agg"] = listing(out)

        def check6(s: Sample) -> tuple[str, str]:
            if s.rc != 0:
                return why(s), ""
            a, c, r = diff_listing(before["agg"], listing(out))
            if a or c or r:
                return "", f"⚠ wrote {a} new and {c} changed files, removed {r} (must be 0)"
            return "", f"wrote nothing ({len(before['agg'])} files unchanged) ✓"

        tasks = [Task(AGG, ctx.agg(cfg, "publish", "--json"), prep6, check6, agg_dir,
                      ctx.agg_env)]
        if ctx.anchors_on and ctx.hugo:

            def hprep6() -> None:
                before["hugo"] = listing(hout)

            def hcheck6(s: Sample) -> tuple[str, str]:
                if s.rc != 0:
                    return why(s), ""
                a, c, r = diff_listing(before["hugo"], listing(hout))
                return "", f"rebuild of the unchanged site: wrote {a} new and {c} changed files"

            tasks.append(Task(HUGO, hugo_cmd(ctx, hugo_dir / "site", hout), hprep6, hcheck6))
        run_series(ctx, fs, "6", f"publish of an unchanged {size:,}-item store", tasks, o.runs)


# --- environment -----------------------------------------------------------


def ensure_system_tools() -> dict[str, str | None]:
    """nginx and hugo from Debian; apt-get install them if missing (said out loud)."""
    found: dict[str, str | None] = {}
    missing = [pkg for pkg in ("nginx", "hugo")
               if not (shutil.which(pkg) or Path(f"/usr/sbin/{pkg}").exists())]
    if missing:
        cmd = ["apt-get", "install", "-y", *missing]
        print(f"installing Debian packages: {' '.join(cmd)}")
        if os.geteuid() == 0:
            subprocess.run(["apt-get", "update"], check=False)
            subprocess.run(cmd, check=False)
        else:
            print("  not root: cannot install; run the command above with sudo")
    for pkg in ("nginx", "hugo"):
        found[pkg] = shutil.which(pkg) or (
            f"/usr/sbin/{pkg}" if Path(f"/usr/sbin/{pkg}").exists() else None)
    return found


def ensure_reader_venv(workdir: Path) -> str | None:
    venv = workdir / "reader-venv"
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import reader, sgmllib"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(py)
    base = getattr(sys, "_base_executable", None) or sys.executable
    print(f"creating the reader venv: {base} -m venv {venv}; "
          f"pip install 'reader[cli]' sgmllib3k")
    subprocess.run([base, "-m", "venv", str(venv)], check=False)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "reader[cli]", "sgmllib3k"],
                       check=False)
    if r.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        print("  could not install reader: its anchor is skipped")
        return None
    return str(py)


def snapshot_source(ctx: Context) -> None:
    """Run one version of the aggregator throughout: a copy of the working tree's package.

    The working tree may change while a long run goes on (people keep working);
    the copy keeps every figure of one report measured on the same code.
    """
    rev = cmd_out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = cmd_out(["git", "-C", str(REPO), "status", "--porcelain", "--", "aggregator"])
    src = ctx.opt.workdir / "src"
    rmtree(src)
    shutil.copytree(REPO / "aggregator", src / "aggregator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Compiled once, as pip compiles an installed package (and reader's venv is): with
    # PYTHONDONTWRITEBYTECODE set, as on this machine, every run compiled every module
    # from source again, ~0.09 s of each process that reader does not pay.
    subprocess.run([ctx.python, "-m", "compileall", "-q", str(src / "aggregator")],
                   check=False, stdout=subprocess.DEVNULL)
    ctx.src = src
    agg = cmd_out([ctx.python, "-c", "import aggregator; print(aggregator.__version__)"],
                  env=ctx.agg_env)
    ctx.version = f"{agg} (git {rev}{', with uncommitted changes' if dirty else ''})"


def cmd_out(cmd: list[str], **kw) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
        return (r.stdout.strip() or r.stderr.strip()).splitlines()[0] if (
            r.stdout.strip() or r.stderr.strip()) else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def versions(ctx: Context) -> dict[str, str]:
    v: dict[str, str] = {}
    v["aggregator"] = ctx.version
    v["python"] = f"{platform.python_version()} ({ctx.python})"
    for lib in ("feedparser", "lxml"):
        v[lib] = cmd_out([ctx.python, "-c", f"import {lib}; print({lib}.__version__)"])
    if ctx.reader_python:
        v["reader"] = cmd_out([ctx.reader_python, "-c", "import reader, feedparser; "
                               "print(reader.__version__, '(feedparser', "
                               "feedparser.__version__ + ')')"])
    if ctx.hugo:
        v["hugo"] = cmd_out([ctx.hugo, "version"])
    v["nginx"] = cmd_out([ctx.nginx_bin, "-v"]) if ctx.nginx_bin else "?"
    return v


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
        mem = " ".join(mem.splitlines()[1].split()[1:3])
        mem = f"{mem.split()[0]} total, {mem.split()[1]} used at start"
    except (OSError, IndexError):
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return {"cpus": f"{os.cpu_count()} × {cpu}", "memory": mem,
            "load average (1 / 5 / 15 min) when the report was written": load,
            "kernel": f"{platform.system()} {platform.release()}",
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def fs_info(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout
    try:
        dev, typ = out.splitlines()[1].split()[:2]
        return f"{typ} ({dev})"
    except (IndexError, ValueError):
        return "?"


# --- report ----------------------------------------------------------------


def order(key: str) -> tuple:
    parts = key.split(":")
    return (int(parts[0]), parts[1] if len(parts) > 1 else "",
            int(parts[2]) if len(parts) > 2 else 0)


def rows(entries: list[Entry], fs: str) -> list[list[str]]:
    out = []
    keys = []
    for e in entries:
        if e.fs == fs and e.key not in keys:
            keys.append(e.key)
    for key in sorted(keys, key=order):
        group = [e for e in entries if e.fs == fs and e.key == key]
        if key == "1":  # the parse floors do not depend on the filesystem: measured once
            group += [e for e in entries if e.key == key and e.fs != fs
                      and e.tool in (FEEDPARSER, LXML)
                      and not any(g.tool == e.tool for g in group)]
        agg = next((e for e in group if e.tool == AGG), None)
        anchors = [e for e in group if e.tool != AGG] or [None]
        for a in anchors:
            label = (agg or a).label
            wl = key.split(":")[0]
            row = [wl, label]
            row += cells(agg.stats) if agg else ["—", "—"]
            if a is None:
                row += ["—", "—", "—", "—", "—"]
            else:
                row += [a.tool, *cells(a.stats)]
                if agg and agg.stats.ok and a.stats.ok:
                    row += [f"{agg.stats.median / a.stats.median:.2f}",
                            f"{agg.stats.peak_mb / a.stats.peak_mb:.2f}"]
                else:
                    row += ["—", "—"]
            out.append(row)
    return out


def cells(st: Stats) -> list[str]:
    if not st.samples:
        return [f"ERROR: {st.error}" if st.error else "—", "—"]
    if st.error:
        return [f"ERROR: {st.error}", f"{st.peak_mb:.0f}"]
    return [st.cell(), f"{st.peak_mb:.0f}"]


HEAD = ["#", "workload", "aggregator: median (min–max)", "peak MB", "anchor",
        "anchor: median (min–max)", "peak MB", "time ratio", "RSS ratio"]


def term_table(rs: list[list[str]]) -> str:
    clip = [[c if len(c) <= 60 else c[:57] + "..." for c in r] for r in rs]
    widths = [max(len(r[i]) for r in [HEAD, *clip]) for i in range(len(HEAD))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(HEAD), line(["-" * w for w in widths])] + [line(r) for r in clip])


def md_table(rs: list[list[str]]) -> str:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rs]
    return "\n".join(lines)


def notes_for(entries: list[Entry], fs: str) -> list[str]:
    out = []
    for e in sorted((e for e in entries if e.fs == fs), key=lambda e: order(e.key)):
        if e.stats.note or e.stats.error:
            out.append(f"- {e.key} {e.tool}: {e.stats.error or e.stats.note}")
    return out


def scaling_lines(entries: list[Entry], fs: str) -> list[str]:
    """Workload 7 as cost per 1,000 items at each store size."""
    out = []
    for kind in ("poll", "publish"):
        tools = dict.fromkeys(e.tool for e in entries
                              if e.fs == fs and e.key.startswith(f"7:{kind}:"))
        for tool in tools:
            pts = sorted((int(e.key.split(":")[2]), e.stats) for e in entries
                         if e.fs == fs and e.tool == tool and e.key.startswith(f"7:{kind}:"))
            cells = [f"{size:,}: {st.median / size * 1000:.2f} s"
                     for size, st in pts if st.ok]
            if cells:
                out.append(f"- {kind}, {tool}, seconds per 1,000 items — " + ", ".join(cells))
    return out


def command_lines(ctx: Context, fs_paths: dict[str, Path]) -> list[str]:
    """Each distinct command once, with the long paths replaced by short names."""
    subs = [(ctx.reader_python or "\0", "$READER"), (ctx.python, "$PYTHON")]
    subs += [(str(p), "$FS") for p in fs_paths.values()]
    subs += [(str(ctx.opt.workdir), "$WORK"), (str(BENCH), "$BENCH")]
    seen: dict[str, dict[str, None]] = {}
    for label, cmd in ctx.commands.items():
        for a, b in subs:
            cmd = cmd.replace(a, b)
        cmd = re.sub(r"scale-\d+", "scale-<items>", cmd)
        cmd = re.sub(r"n\d+x\d+s\d+", "<corpus>", cmd)
        what, _, tool = label.rpartition(" — ")
        what = re.sub(r"[,:]? [\d,]+[ -].*", "", what)
        seen.setdefault(cmd, {tool: None}).setdefault(what, None)
    out = []
    for cmd, whats in seen.items():
        tool, *names = list(whats)
        out.append(f"# {tool}: {', '.join(n for n in names if n)}\n{cmd}")
    return out


def write_report(ctx: Context, fs_paths: dict[str, Path], fs_types: dict[str, str],
                 started: float) -> str:
    o = ctx.opt
    mach = machine()
    ver = versions(ctx)
    md = [
        "# Benchmark results" + (" (quick smoke run)" if o.quick else ""),
        "",
        f"Written by `bench/run {' '.join(o.argv)}` on {mach['date']}, "
        f"in {(time.time() - started) / 60:.1f} min. Times are whole processes "
        "(start-up included), median of the runs with min–max; peak MB is the "
        "peak resident memory of the process tree. **time ratio** = aggregator ÷ "
        "anchor (below 1: the aggregator is faster); **RSS ratio** likewise for peak "
        "memory. Absolute times on this shared machine are noise; the ratios, "
        "measured in one run with the runs interleaved (A B A B …), are the result.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in mach.items()],
        *[f"- filesystem `{k}`: {fs_types.get(k, '?')} at `{p}`" for k, p in fs_paths.items()],
        "",
        "## Versions",
        "",
        *[f"- {k}: {v}" for k, v in ver.items()],
        "",
        "## Corpus",
        "",
        f"Generated by `bench/corpus.py` (seed {o.seed}): 70 % RSS 2.0, 25 % Atom, "
        "5 % RSS 1.0, half the feeds Chinese; every item has a guid, link, date, 1–3 "
        "categories from a pool of 2,000 names (850 Chinese, plus traps such as `C#`, "
        "`A/B testing`, `.NET`, `R&D`), an author and about 2 KB of HTML with two "
        "images and a link. Sources have one of 50 categories. Served by nginx on "
        f"{ctx.nginx.url} (ETag, Last-Modified, 304; no gzip).",
        "",
        *[f"- `{k}`: {m['feeds']} feeds × {m['items']} items, {m['bytes'] / 1e6:.1f} MB"
          for k, m in ctx.corpora.items()],
        "",
    ]
    text_out = []
    for fs in o.fs:
        rs = rows(ctx.entries, fs)
        if not rs:
            continue
        md += [f"## Results: store, database and outputs on {fs} "
               f"({fs_types.get(fs, '?')})", "", md_table(rs), ""]
        sc = scaling_lines(ctx.entries, fs)
        if sc:
            md += ["Scaling (workload 7), cost per 1,000 items as the store grows:", "", *sc, ""]
        nts = notes_for(ctx.entries, fs)
        if nts:
            md += ["Checks and notes:", "", *nts, ""]
        text_out.append(f"\n=== {fs} ({fs_types.get(fs, '?')}) ===\n{term_table(rs)}")
    md += [
        "## Method",
        "",
        "- Workloads 1–3 (poll): `aggregator --config feeds.yaml poll --json` against "
        f"`reader_anchor.py update` (reader's `update_feeds_iter(scheduled=False, "
        f"workers={o.reader_workers})`; the aggregator makes at most 2 requests at once "
        "to one host). reader's database is created and its feeds added before the "
        "timed process, untimed. The parse floors (`bench/floor.py`) read the corpus "
        "into memory and run `feedparser.parse` or `lxml.etree.fromstring` over the "
        "bytes: no HTTP, no store (filesystem-independent, so measured once).",
        "- Delta poll: the store / database after the warm poll is copied aside, the "
        "corpus mutated (`corpus.py --mutate 10`: only the changed files are rewritten, "
        "so the rest stay 304), and each run starts from that copy.",
        "- Workloads 4–7 (publish): `aggregator publish --json` against Debian's hugo "
        "building, from the same Markdown files, the RSS of the home page and of every "
        "tag and category term, pages listed but not rendered "
        "(`_build.render = \"link\"`, `rssLimit = 50` like `keep_items`). Full "
        "publish: output directory removed before each run. Incremental: each run "
        "starts from a copy of the store and output of the full publish, polls the "
        "changed feeds (untimed), then publishes (timed); hugo has no incremental "
        "build and rebuilds into its existing output. Unchanged: publish again, and "
        "the output directory is compared (size, mtime, inode of every file) before "
        "and after.",
        "- The two publishers do not write the same amount: the aggregator writes RSS, "
        "Atom and JSON Feed with full content for the site, every tag, category and "
        "source, plus index.html and OPML; hugo writes RSS with summaries for the home "
        "page, tags and categories only. The notes give each one's file count and size.",
        f"- Runs: {o.runs} per figure for workloads 1–6, {o.scale_runs} per point for "
        "workload 7.",
        "- Peak memory: the larger of the kernel's `ru_maxrss` for the reaped process "
        "tree (its largest process) and the sum of RSS over the tree sampled every "
        "100 ms from /proc.",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in ctx.notes],
        "",
        *history_section(),
        "## Commands",
        "",
        "Paths shortened: `$WORK` = " + f"`{o.workdir}`, `$FS` = the filesystem's "
        "directory above, `$PYTHON` = " + f"`{ctx.python}`, `$READER` = "
        f"`{ctx.reader_python}` (reader's venv), `$BENCH` = `{BENCH}`.",
        "",
        "```",
        *command_lines(ctx, fs_paths),
        "```",
        "",
    ]
    o.results.parent.mkdir(parents=True, exist_ok=True)
    o.results.write_text("\n".join(md), encoding="utf-8")
    return "\n".join(text_out)


def history_section() -> list[str]:
    """bench/HISTORY.md (what each change bought), one heading level down."""
    path = BENCH / "HISTORY.md"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [("#" + line) if line.startswith("#") else line for line in lines] + [""]


# --- main ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    o = parse_args(argv)
    started = time.time()
    o.workdir.mkdir(parents=True, exist_ok=True)
    tools = ensure_system_tools()
    if not tools["nginx"]:
        print("nginx is required to serve the corpus", file=sys.stderr)
        return 2
    reader_py = ensure_reader_venv(o.workdir) if o.anchors and (o.workloads & {1, 2, 3, 7}) \
        else None
    fs_paths: dict[str, Path] = {}
    for fs in o.fs:
        if fs == "disk":
            fs_paths[fs] = o.workdir / "fs-disk"
        elif fs == "tmpfs":
            fs_paths[fs] = Path("/dev/shm") / f"aggregator-bench-{os.getpid()}"
        else:
            print(f"--fs: unknown filesystem {fs!r} (disk, tmpfs)", file=sys.stderr)
            return 2
    nginx = Nginx(o.workdir / "corpora", o.workdir / "nginx", o.port)
    (o.workdir / "corpora").mkdir(parents=True, exist_ok=True)
    rmtree(o.workdir / "logs")
    ctx = Context(o, nginx, sys.executable, reader_py, tools["hugo"] if o.anchors else None,
                  nginx_bin=tools["nginx"] or "", anchors_on=o.anchors)
    snapshot_source(ctx)
    print(f"bench: aggregator {ctx.version} (copied to {ctx.src})")
    print(f"bench: python {sys.executable}; workdir {o.workdir}; runs {o.runs}; "
          f"filesystems {', '.join(o.fs)}")
    fs_types: dict[str, str] = {}
    try:
        with nginx:
            for fs, base in fs_paths.items():
                rmtree(base)
                base.mkdir(parents=True)
                fs_types[fs] = fs_info(base)
                try:
                    if o.workloads & {1, 2, 3}:
                        poll_workloads(ctx, fs, base)
                    if 7 in o.workloads:
                        scale_workloads(ctx, fs, base)
                    if o.workloads & {4, 5, 6}:
                        publish_workloads(ctx, fs, base)
                finally:
                    if not o.keep:
                        rmtree(base)
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured")
    finally:
        table = write_report(ctx, fs_paths, fs_types, started)
        print(table)
        print(f"\nwrote {o.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
