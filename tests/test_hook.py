"""`after_publish` (SPEC §9): a command run after each publish that wrote or removed output
files, with $AGGREGATOR_CHANGED naming a file of the changed absolute paths. Runs never
overlap; a hook past its timeout is killed; a failure is one log line and changes nothing
else. Real scripts, the real CLI and daemon, and the real Debian `hugo`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_helpers import cli_env, running_daemon, wait_until
from tests.feed_server import FeedServer
from tests.helpers import assert_clean_exit, news_item, poll_json, rss_feed, run_cli, write_config

# Appends one JSON line per run: its cwd, the changed paths, start and end times.
RECORDER = """\
import json, os, sys, time
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pid"), "w").write(str(os.getpid()))
changed = open(os.environ["AGGREGATOR_CHANGED"], encoding="utf-8").read().splitlines()
start = time.time()
marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "running")
try:
    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    overlap = False
except FileExistsError:
    overlap = True
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
if not overlap:
    os.unlink(marker)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.jsonl"), "a") as f:
    f.write(json.dumps({"cwd": os.getcwd(), "changed": changed, "overlap": overlap,
                        "start": start, "end": time.time()}) + "\\n")
"""


def setup(feed_server: FeedServer, tmp_path: Path, hook: list[str] | None = None,
          **top: Any) -> Path:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "record.py").write_text(RECORDER)
    feed_server.route("/a.xml", body=rss_feed([news_item(1)], title="A"))
    feed_server.route("/b.xml", body=rss_feed([news_item(2)], title="B"))
    config = write_config(tmp_path, [{"id": "a", "url": feed_server.url("/a.xml")},
                                     {"id": "b", "url": feed_server.url("/b.xml")}])
    set_top(config, after_publish=hook or [sys.executable, "hooks/record.py"], **top)
    return config


def set_top(config: Path, **keys: Any) -> None:
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    document.update(keys)
    config.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "hooks" / "runs.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def output_files(output: Path) -> set[str]:
    return {str(p) for p in output.resolve().rglob("*") if p.is_file()}


def test_hook_runs_only_after_publishes_that_changed_files(feed_server: FeedServer,
                                                           tmp_path: Path) -> None:
    config = setup(feed_server, tmp_path)
    poll_json(config)
    result = run_cli("publish", "--json", config=config)
    assert_clean_exit(result, 0)
    (first,) = runs(tmp_path)
    assert first["cwd"] == str(tmp_path.resolve())  # the config file's folder
    assert set(first["changed"]) == output_files(tmp_path / "public")  # all of them, absolute
    assert set(json.loads(result.stdout)["changed"]) == set(first["changed"])

    assert_clean_exit(run_cli("publish", config=config), 0)  # nothing changed: no run
    assert len(runs(tmp_path)) == 1

    # A new item in b: only the feeds it is in (and the front page) changed.
    feed_server.route("/b.xml", body=rss_feed([news_item(2), news_item(3)], title="B"))
    poll_json(config)
    assert_clean_exit(run_cli("publish", config=config), 0)
    second = runs(tmp_path)[1]["changed"]
    public = (tmp_path / "public").resolve()
    assert str(public / "sources" / "b" / "index.xml") in second
    assert str(public / "index.xml") in second
    assert not any("/sources/a/" in p for p in second)

    # Source a leaves feeds.yaml: its feed's files are removed, and listed.
    document = yaml.safe_load(config.read_text())
    document["sources"] = document["sources"][1:]
    config.write_text(yaml.safe_dump(document))
    assert_clean_exit(run_cli("publish", config=config), 0)
    third = runs(tmp_path)[2]["changed"]
    for name in ("index.xml", "atom.xml", "feed.json"):
        assert str(public / "sources" / "a" / name) in third
        assert not (public / "sources" / "a" / name).exists()


@pytest.mark.parametrize(("hook", "logged"), [
    ([sys.executable, "-c", "import sys; sys.stderr.write('first\\nlast words\\n'); "
      "sys.exit(3)"], "after_publish {}: exit 3: last words"),
    (["no-such-command-here"], "after_publish no-such-command-here: cannot start: "
                               "No such file or directory"),
    (["hooks/not-executable.sh"], "after_publish hooks/not-executable.sh: cannot start: "
                                  "Permission denied"),
])
def test_a_failing_hook_is_one_log_line_and_changes_nothing_else(
        feed_server: FeedServer, tmp_path: Path, hook: list[str], logged: str) -> None:
    config = setup(feed_server, tmp_path, hook)
    (tmp_path / "hooks" / "not-executable.sh").write_text("#!/bin/sh\nexit 0\n")
    poll_json(config)
    result = run_cli("publish", "--json", config=config)
    assert_clean_exit(result, 0)  # the publish's exit code, not the hook's
    assert json.loads(result.stdout)["written"] > 0
    lines = [line for line in result.stderr.splitlines() if "after_publish" in line]
    assert len(lines) == 1 and lines[0].endswith(logged.format(hook[0])), result.stderr
    assert (tmp_path / "public" / "index.xml").is_file()


def test_a_hanging_hook_is_killed_with_its_children(feed_server: FeedServer,
                                                    tmp_path: Path) -> None:
    hang = tmp_path / "hooks" / "hang.py"
    config = setup(feed_server, tmp_path, [sys.executable, "hooks/hang.py"],
                   after_publish_timeout="1s")
    hang.write_text(textwrap.dedent("""\
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open("hooks/child.pid", "w").write(str(child.pid))
        time.sleep(120)
    """))
    poll_json(config)
    result = run_cli("publish", config=config, timeout=60)
    assert_clean_exit(result, 0)
    assert "after_publish " + sys.executable + ": killed after 1s (timeout)" in result.stderr
    pid = int((tmp_path / "hooks" / "child.pid").read_text())
    wait_until(lambda: not alive(pid), what="the hook's child to be killed with its group")


def alive(pid: int) -> bool:
    """Whether `pid` (a process this test started, through the hook) still runs; a zombie
    waiting for init to reap it does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_hooks_never_overlap_across_processes(feed_server: FeedServer, tmp_path: Path) -> None:
    config = setup(feed_server, tmp_path, [sys.executable, "hooks/record.py", "3"])
    poll_json(config)
    first = subprocess.Popen([sys.executable, "-m", "aggregator", "--config", str(config),
                              "publish"], cwd=tmp_path, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / "hooks" / "running").exists(),
                   what="the first hook to start")
        (tmp_path / "public" / "feeds.opml").unlink()  # so the second publish changes a file
        asked = time.time()
        second = run_cli("publish", config=config, timeout=60)
        assert_clean_exit(second, 0)
    finally:
        first.wait(timeout=60)
    one, two = runs(tmp_path)
    assert not one["overlap"] and not two["overlap"]
    assert asked < one["end"] <= two["start"]  # it asked while the first ran, and waited
    assert two["changed"] == [str((tmp_path / "public" / "feeds.opml").resolve())]


def test_the_daemon_runs_the_hook_off_its_poll_path(feed_server: FeedServer,
                                                    tmp_path: Path) -> None:
    config = setup(feed_server, tmp_path, [sys.executable, "hooks/record.py", "30"])
    set_top(config, after_publish_timeout="60s")
    document = yaml.safe_load(config.read_text())
    for source in document["sources"]:
        source["interval"] = "1s"
    config.write_text(yaml.safe_dump(document))
    with running_daemon(config, tmp_path / "logs") as daemon:
        wait_until(lambda: (tmp_path / "hooks" / "running").exists(),
                   what="the hook to start", context=daemon.describe)
        # While the (30 s) hook runs, polls go on and publish a new item.
        feed_server.route("/a.xml", body=rss_feed([news_item(1), news_item(7)], title="A"))
        wait_until(lambda: news_item(7)["title"] in daemon.text("/sources/a/index.xml"),
                   what="a publish while the hook runs", context=daemon.describe)
        assert runs(tmp_path) == []  # the first run has not finished: never two at once
        hook_pid = int((tmp_path / "hooks" / "pid").read_text())
    # The daemon stopped: the hook it started is ended too, not left running.
    wait_until(lambda: not alive(hook_pid), what="the hook to end with the daemon")


HUGO_SITE = """\
baseURL: http://127.0.0.1:8000/
contentDir: {store}
disableKinds: [sitemap, robotsTXT, "404", taxonomy, term, section]
outputs:
  home: [RSS]
  page: []
"""


@pytest.mark.skipif(not Path("/usr/bin/hugo").exists() and shutil.which("hugo") is None,
                    reason="hugo is not installed (apt-get install hugo)")
def test_the_hugo_recipe_rebuilds_a_site_from_the_store(feed_server: FeedServer,
                                                        tmp_path: Path) -> None:
    hugo = shutil.which("hugo") or "/usr/bin/hugo"
    config = setup(feed_server, tmp_path, [hugo, "--source", "site", "--quiet"])
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hugo.yaml").write_text(
        HUGO_SITE.format(store="../store"))  # as the README's recipe says
    poll_json(config)
    result = run_cli("publish", config=config, timeout=120)
    assert_clean_exit(result, 0)
    assert "after_publish" not in result.stderr, result.stderr
    built = (tmp_path / "site" / "public" / "index.xml").read_text()
    assert news_item(1)["title"] in built and news_item(2)["title"] in built
    feed_server.route("/a.xml", body=rss_feed([news_item(1), news_item(5)], title="A"))
    poll_json(config)
    assert_clean_exit(run_cli("publish", config=config, timeout=120), 0)
    assert news_item(5)["title"] in (tmp_path / "site" / "public" / "index.xml").read_text()


@pytest.mark.parametrize(("value", "message"), [
    ("hugo --source site", "after_publish: expected a list of arguments like "
                           "[hugo, --source, site], got 'hugo --source site'"),
    ([], "after_publish: expected a list of arguments"),
    (["hugo", {"source": "site"}], "after_publish: expected a list of arguments"),
    (["hugo", True], "after_publish: expected a list of arguments"),
])
def test_after_publish_must_be_a_list_of_strings(tmp_path: Path, value: object,
                                                 message: str) -> None:
    config = write_config(tmp_path, [{"id": "a", "url": "a.xml"}])
    set_top(config, after_publish=value)
    result = run_cli("publish", config=config)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("aggregator: ") and "feeds.yaml:" in line and message in line, line
    assert not (tmp_path / "public").exists() and not (tmp_path / "store").exists()


def test_after_publish_timeout_must_be_a_duration(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"id": "a", "url": "a.xml"}])
    set_top(config, after_publish=["true"], after_publish_timeout="forever")
    result = run_cli("publish", config=config)
    assert result.returncode == 2
    assert "after_publish_timeout: expected a duration like 10m, got 'forever'" in result.stderr
