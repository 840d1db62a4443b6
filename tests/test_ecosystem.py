"""`aggregator add`, `import-opml` and `export-opml`: the real CLI on real files.

OPML cases are files under tests/data/opml/, one per reader's export style, each
with its expected result as JSON in the comment at its top (`expect: {...}`);
files under tests/data/opml/invalid/ must be refused. `add` runs against the
loopback feed_server.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from aggregator.config import load_config
from aggregator.ecosystem import add_source, append_sources, ascii_slug, derive_id, import_opml, url_slug
from aggregator.errors import AggregatorError, ConfigError
from aggregator.fetch import USER_AGENT

REPO = Path(__file__).resolve().parents[1]
OPML_DIR = Path(__file__).parent / "data" / "opml"

BASE_CONFIG = """\
# My medical-AI planet.
# Sources are polled every 30 minutes.

site:
  title: Test planet            # shown in every feed
  base_url: http://127.0.0.1:8000/
  timezone: Asia/Shanghai

store: store
output: public

defaults:
  timeout: 10s

sources:
  # The one I had before importing anything.
  - id: existing
    url: https://www.example.com/existing.xml
    title: Existing
    tags: ['医疗']            # quoted on purpose

  # - id: later
  #   url: https://example.org/later.xml
"""


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m aggregator --config CONFIG ARGS...` as a real process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGGREGATOR_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "aggregator", "--config", str(config), *args],
                            cwd=config.parent, capture_output=True, text=True, encoding="utf-8",
                            env=env, timeout=60, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write(path: Path, text: str = BASE_CONFIG) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def expectation(opml: Path) -> dict:
    match = re.search(r"expect: (\{.*?\})\s*-->", opml.read_text(encoding="utf-8"), re.S)
    assert match, f"{opml.name} has no expect: comment"
    return json.loads(match.group(1))


def skipped_lines(stderr: str) -> list[str]:
    return [line.removeprefix("skipped ") for line in stderr.splitlines()
            if line.startswith("skipped ")]


# -- import-opml --------------------------------------------------------------------------
@pytest.mark.parametrize("opml", sorted(OPML_DIR.glob("*.opml")), ids=lambda p: p.stem)
def test_import_opml(tmp_path: Path, opml: Path) -> None:
    expect = expectation(opml)
    config = write(tmp_path / "feeds.yaml")

    result = run(config, "import-opml", str(opml))

    assert result.returncode == 0, result.stderr
    text = config.read_text(encoding="utf-8")
    assert text.startswith(BASE_CONFIG), "the user's file must be kept byte for byte"
    sources = load_config(config).sources
    assert [s.id for s in sources] == ["existing", *expect["added"]]
    for source in sources[1:]:
        want = expect["added"][source.id]
        assert source.url == want["url"]
        assert source.title == want.get("title")
        assert source.categories == tuple(want.get("categories", [source.id]))
    assert skipped_lines(result.stderr) == expect["skipped"]
    assert f"added {len(expect['added'])} sources" in result.stderr

    # The second time, in-process (the function the command calls): nothing to add.
    added, skipped = import_opml(load_config(config), opml)
    assert added == [] and len(skipped) >= len(expect["added"])
    assert config.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("opml", sorted((OPML_DIR / "invalid").glob("*.opml")),
                         ids=lambda p: p.stem)
def test_import_refuses_invalid_opml(tmp_path: Path, opml: Path) -> None:
    config = write(tmp_path / "feeds.yaml")

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(opml))}(:\d+)?: not an OPML file: "):
        import_opml(load_config(config), opml)

    assert config.read_text(encoding="utf-8") == BASE_CONFIG
    assert [p.name for p in tmp_path.iterdir()] == ["feeds.yaml"]


@pytest.mark.parametrize("name", ["html-page.opml", "no-body.opml"])
def test_import_invalid_opml_exits_2_naming_the_file(tmp_path: Path, name: str) -> None:
    config = write(tmp_path / "feeds.yaml")
    opml = OPML_DIR / "invalid" / name

    result = run(config, "import-opml", str(opml))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aggregator: {opml}"), result.stderr
    assert config.read_text(encoding="utf-8") == BASE_CONFIG


def test_import_missing_file(tmp_path: Path) -> None:
    config = write(tmp_path / "feeds.yaml")
    with pytest.raises(ConfigError, match=r"^nowhere\.opml: no such file$"):
        import_opml(load_config(config), Path("nowhere.opml"))


def test_import_into_a_config_without_sources(tmp_path: Path) -> None:
    head = "# just the site so far\nsite:\n    title: Empty   # four-space indent\n"
    config = write(tmp_path / "feeds.yaml", head)

    result = run(config, "import-opml", str(OPML_DIR / "feedly.opml"))

    assert result.returncode == 0, result.stderr
    text = config.read_text(encoding="utf-8")
    assert text.startswith(head)
    assert "# imported from feedly.opml" in text
    assert [s.id for s in load_config(config).sources] == [
        "stat", "npj-digital-medicine", "the-lancet-digital-health", "ars-technica"]


# -- the feeds.yaml writer ----------------------------------------------------------------
NEW = [{"id": "new-one", "url": "https://example.org/feed.xml", "title": "Ex: ample #1",
        "categories": ["Tech", "医疗"]}]

LAYOUTS = {
    # name: (feeds.yaml text, whether the old text stays a byte-exact prefix)
    "sources last": (BASE_CONFIG, True),
    "no sources key": ("site:\n  title: T\n", True),
    "only comments": ("# nothing here yet\n", True),
    "sources null, items commented out": ("site:\n  title: T\nsources:\n  # - id: x\n", True),
    "CRLF line ends": ("site:\r\n  title: T\r\nsources:\r\n  - id: a\r\n"
                       "    url: https://a.example/x\r\n", True),
    "sources not last, zero offset": ("# top\nsources:   # mine\n- id: one   # first\n"
                                      "  url: https://example.org/one.xml\n  tags: ['x']\n"
                                      "site:\n  title: \"Mine\"  # quoted\n", False),
    "sources flow and empty": ("site: {title: T}   # flow\nsources: []\n", False),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_writer_keeps_the_users_file(tmp_path: Path, name: str) -> None:
    text, prefix = LAYOUTS[name]
    path = tmp_path / "feeds.yaml"
    path.write_bytes(text.encode("utf-8"))
    path.chmod(0o640)
    old_ids = [s.id for s in load_config(path).sources]

    config = append_sources(path, NEW, note="imported from x.opml")

    assert [s.id for s in config.sources] == [*old_ids, "new-one"]
    assert [s.id for s in load_config(path).sources] == [*old_ids, "new-one"]
    new = path.read_bytes().decode("utf-8")
    if prefix:
        assert new.startswith(text)
    for comment in re.findall(r"#[^\n\r]*", text):
        assert comment in new
    for quoted in ("['x']", '"Mine"'):
        assert quoted in new or quoted not in text
    assert ("\r\n" in new) == ("\r\n" in text)
    assert (path.stat().st_mode & 0o777) == 0o640
    assert load_config(path).source("new-one").title == "Ex: ample #1"
    assert [p.name for p in tmp_path.iterdir()] == ["feeds.yaml"], "no temporary file left"


def test_writer_leaves_the_file_when_the_result_would_not_load(tmp_path: Path) -> None:
    path = write(tmp_path / "feeds.yaml")
    with pytest.raises(ConfigError, match=r"feeds.yaml: left unchanged.*sources\[1\]\.id"):
        append_sources(path, [{"id": "Not An Id", "url": "https://example.org/x"}])
    assert path.read_text(encoding="utf-8") == BASE_CONFIG
    assert [p.name for p in tmp_path.iterdir()] == ["feeds.yaml"]


@pytest.mark.parametrize(("title", "url", "taken", "expected"), [
    ("Café Babel", "https://x.example/", [], "cafe-babel"),
    ("Straße & Verkehr", "https://x.example/", [], "strasse-verkehr"),
    ("ＡＢＣ News", "https://x.example/", [], "abc-news"),
    ("腾讯新闻", "https://www.example.cn/rss.xml", [], "example-cn"),
    ("腾讯新闻", "https://www.example.cn/news/rss.xml", ["example-cn"], "example-cn-news"),
    ("腾讯新闻", "https://www.example.cn/rss.xml", ["example-cn"], "example-cn-2"),
    ("36氪", "https://36kr.com/feed", [], "36kr-com"),
    ("DeepSeek 资讯", "https://x.example/", [], "deepseek"),
    ("", "https://blog.example.org/feeds/all.atom.xml", [], "blog-example-org"),
    (None, "https://example.org/feed", ["example-org", "example-org-2"], "example-org-3"),
    ("A" * 30 + " " + "B" * 30, "https://x.example/", [], "a" * 30),
])
def test_derive_id(title: str | None, url: str, taken: list[str], expected: str) -> None:
    assert derive_id(title, url, taken) == expected


def test_slugs_are_valid_ids() -> None:
    assert ascii_slug("  --Hello, World!--  ") == "hello-world"
    assert url_slug("file:///srv/feeds/My%20Feed.xml", with_path=True) == "my-feed"
    assert url_slug("http://127.0.0.1:8080/x/rss", with_path=False) == "127-0-0-1"


# -- export-opml --------------------------------------------------------------------------
EXPORT_CONFIG = """\
site:
  title: 智能医疗资讯
  base_url: http://127.0.0.1:8000/
sources:
  - id: stat
    url: https://www.statnews.com/feed/
    title: STAT & Friends
    categories: [国际动态, news]
  - id: plain
    url: https://plain.example/rss
  - id: jama
    url: https://jamanetwork.example/rss
    title: JAMA
    categories: [国际动态]
  - id: local
    url: examples/rss2.xml
    title: Local file
    categories: [研究进展]
"""


def test_export_opml_is_opml_2_and_deterministic(tmp_path: Path) -> None:
    config = write(tmp_path / "feeds.yaml", EXPORT_CONFIG)

    result = run(config, "export-opml")

    assert result.returncode == 0, result.stderr
    root = etree.fromstring(result.stdout.encode("utf-8"))
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.findtext("head/title") == "智能医疗资讯: sources"
    body = root.find("body")
    folders = {o.get("text"): o for o in body if o.get("xmlUrl") is None}
    assert list(folders) == ["国际动态", "研究进展"]
    assert [o.get("xmlUrl") for o in folders["国际动态"]] == [
        "https://www.statnews.com/feed/", "https://jamanetwork.example/rss"]
    top = [o for o in body if o.get("xmlUrl")]
    assert [(o.get("text"), o.get("title"), o.get("type")) for o in top] == [
        ("plain", None, "rss")]
    assert folders["国际动态"][0].get("title") == "STAT & Friends"
    assert folders["研究进展"][0].get("xmlUrl") == (tmp_path / "examples/rss2.xml").as_uri()

    out = tmp_path / "out.opml"
    assert run(config, "export-opml", "-o", str(out)).returncode == 0
    assert out.read_text(encoding="utf-8") == result.stdout


def test_export_round_trips_through_import(tmp_path: Path) -> None:
    first = write(tmp_path / "feeds.yaml", EXPORT_CONFIG)
    exported = tmp_path / "sources.opml"
    assert run(first, "export-opml", "-o", str(exported)).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    empty = write(other / "feeds.yaml", "site:\n  title: Elsewhere\n")

    result = run(empty, "import-opml", str(exported))

    assert result.returncode == 0, result.stderr
    before = {s.url: s for s in load_config(first).sources}
    after = {s.url: s for s in load_config(empty).sources}
    assert sorted(after) == sorted(before)
    for url, source in after.items():
        # Never polled and untitled: the id stood in for the name.
        assert source.title == (before[url].title or before[url].id)
        # The first category is the folder; the default one (the id) means no folder.
        assert source.categories[0] == (before[url].categories[0] if before[url].categories
                                        != (before[url].id,) else source.id)
    assert [s.id for s in after.values()] == ["stat-friends", "jama", "plain", "local-file"]


# -- add ----------------------------------------------------------------------------------
def rss(title: str, count: int, link: str = "https://site.example/") -> bytes:
    items = "".join(
        f"<item><title>{title} item {i}</title><link>{link}a/{i}</link>"
        f"<guid>{link}a/{i}</guid><description>Text {i}</description>"
        f"<pubDate>Mon, 0{i % 9 + 1} Sep 2024 10:00:00 GMT</pubDate></item>"
        for i in range(count))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>{title}</title><link>{link}</link><description>d</description>"
            f"{items}</channel></rss>").encode()


def json_feed(title: str, count: int) -> bytes:
    return json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": title,
                       "items": [{"id": str(i), "content_text": f"x {i}",
                                  "url": f"https://site.example/j/{i}"} for i in range(count)]
                       }).encode()


def page(*links: str) -> bytes:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Site</title>"
            + "".join(links) + "</head><body><p>Hello</p></body></html>").encode()


HTML = "text/html; charset=utf-8"


def test_add_a_feed_url_then_poll_it(tmp_path: Path, feed_server) -> None:
    feed_server.route("/feed.xml", body=rss("Loopback News", 3))
    config = write(tmp_path / "feeds.yaml")
    url = feed_server.url("/feed.xml")

    result = run(config, "add", url, "--tags", "医疗, ai", "--categories", "国内资讯")

    assert result.returncode == 0, result.stderr
    assert f"added source 'loopback-news' ({url}, 3 items) to" in result.stderr
    text = config.read_text(encoding="utf-8")
    assert text.startswith(BASE_CONFIG)
    source = load_config(config).source("loopback-news")
    assert source is not None and source.url == url and source.title is None
    assert source.tags == ("医疗", "ai") and source.categories == ("国内资讯",)
    assert feed_server.requests_for("/feed.xml")[0].headers["User-Agent"] == USER_AGENT

    polled = run(config, "poll", "loopback-news", "--json")
    assert polled.returncode == 0, polled.stderr
    report = json.loads(polled.stdout)
    assert report["sources"][0]["status"] == "ok" and report["new"] == 3

    # No title in feeds.yaml: the export names it as the poll saw it.
    exported = etree.fromstring(run(config, "export-opml").stdout.encode("utf-8"))
    outline = exported.find(f".//outline[@xmlUrl='{url}']")
    assert outline.get("title") == "Loopback News"


def test_add_follows_a_relative_link_rel_alternate(tmp_path: Path, feed_server) -> None:
    feed_server.route("/blog/", body=page(
        '<link rel="stylesheet" href="/style.css">',
        '<link rel="alternate" type="application/atom+xml" title="Blog" href="feeds/atom.xml">'),
        content_type=HTML)
    feed_server.route("/blog/feeds/atom.xml", body=rss("The Blog", 2),
                      content_type="application/atom+xml")
    config = write(tmp_path / "feeds.yaml")

    result = run(config, "add", feed_server.url("/blog/"), "--id", "blog", "--title", "My blog")

    assert result.returncode == 0, result.stderr
    feed_url = feed_server.url("/blog/feeds/atom.xml")
    assert f"added source 'blog' ({feed_url}, 2 items)" in result.stderr
    assert "<link rel=alternate>" in result.stderr
    source = load_config(config).source("blog")
    assert source is not None and source.url == feed_url and source.title == "My blog"
    assert run(config, "poll", "blog").returncode == 0


def test_add_tries_common_paths_when_the_page_announces_none(tmp_path: Path,
                                                             feed_server) -> None:
    feed_server.route("/", body=page(), content_type=HTML)
    feed_server.route("/feed.xml", body=rss("Quiet Site", 1))
    config = write(tmp_path / "feeds.yaml")

    result = run(config, "add", feed_server.url("/"))

    assert result.returncode == 0, result.stderr
    assert f"({feed_server.url('/feed.xml')}, 1 item)" in result.stderr
    assert "the common path /feed.xml" in result.stderr
    tried = [r.path for r in feed_server.requests]
    assert tried == ["/", "/feed", "/rss.xml", "/atom.xml", "/index.xml", "/feed.xml"]
    assert load_config(config).source("quiet-site").url == feed_server.url("/feed.xml")


def test_add_picks_one_of_two_feeds_and_names_the_other(tmp_path: Path, feed_server) -> None:
    feed_server.route("/", body=page(
        '<link rel="alternate" type="application/feed+json" title="JSON" href="/feed.json">',
        '<link rel="alternate" type="application/rss+xml" title="Comments" '
        'href="/comments/feed/">',
        '<link rel="alternate" type="application/rss+xml" title="Posts" href="/posts.rss">'),
        content_type=HTML)
    feed_server.route("/feed.json", body=json_feed("Two Feeds JSON", 2),
                      content_type="application/feed+json")
    feed_server.route("/posts.rss", body=rss("Two Feeds", 4))
    feed_server.route("/comments/feed/", body=rss("Comments on Two Feeds", 9))
    config = write(tmp_path / "feeds.yaml")

    result = run(config, "add", feed_server.url("/"))

    assert result.returncode == 0, result.stderr
    assert f"added source 'two-feeds' ({feed_server.url('/posts.rss')}, 4 items)" in result.stderr
    assert "the page also offers " in result.stderr
    assert f"{feed_server.url('/comments/feed/')} (RSS: Comments)" in result.stderr
    assert f"{feed_server.url('/feed.json')} (JSON Feed: JSON)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_add_refuses_a_configured_url(tmp_path: Path, feed_server) -> None:
    feed_server.route("/feed.xml", body=rss("Already", 1))
    feed_server.route("/page", body=page(
        '<link rel="alternate" type="application/rss+xml" href="/feed.xml">'),
        content_type=HTML)
    config = write(tmp_path / "feeds.yaml", BASE_CONFIG + (
        f"  - id: already\n    url: {feed_server.url('/feed.xml')}\n"))
    before = config.read_text(encoding="utf-8")

    same = run(config, "add", feed_server.url("/feed.xml?utm_source=x#top"))
    assert same.returncode == 2, same.stderr
    assert f"feeds.yaml:24: {feed_server.url('/feed.xml?utm_source=x#top')} is already in " \
           "feeds.yaml as source 'already'" in same.stderr
    # The same check in-process: behind an HTML page, and without fetching anything.
    with pytest.raises(ConfigError, match="as source 'already'"):
        add_source(load_config(config), feed_server.url("/page"))
    assert feed_server.requests_for("/feed.xml") != [], "the page's feed is checked"
    with pytest.raises(ConfigError, match="as source 'existing'"):
        add_source(load_config(config), "HTTPS://WWW.EXAMPLE.COM/existing.xml")
    assert config.read_text(encoding="utf-8") == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_add_unreachable_url_exits_1_naming_it(tmp_path: Path) -> None:
    config = write(tmp_path / "feeds.yaml")
    url = f"http://127.0.0.1:{free_port()}/feed.xml"

    result = run(config, "add", url)

    assert result.returncode == 1
    assert f"cannot add {url}: cannot connect" in result.stderr
    assert config.read_text(encoding="utf-8") == BASE_CONFIG


def test_add_refuses_what_is_neither_feed_nor_page(tmp_path: Path, feed_server) -> None:
    feed_server.route("/logo.png", body=b"\x89PNG\r\n\x1a\n" + bytes(64),
                      content_type="image/png")
    feed_server.route("/missing-feed", body=page(
        '<link rel="alternate" type="application/rss+xml" href="/gone.xml">'),
        content_type=HTML)
    feed_server.route("/bare", body=page(), content_type=HTML)
    config = write(tmp_path / "feeds.yaml")

    png = run(config, "add", feed_server.url("/logo.png"))
    assert png.returncode == 1
    assert f"cannot add {feed_server.url('/logo.png')}: not a feed, and not an HTML page" \
        in png.stderr
    # The others in-process: a plain AggregatorError (exit 1), not a ConfigError (exit 2).
    loaded = load_config(config)
    for path, message in (("/missing-feed", f"none could be read: {feed_server.url('/gone.xml')} "
                                             "(HTTP 404"),
                          ("/bare", "an HTML page with no feed")):
        with pytest.raises(AggregatorError, match=re.escape(message)) as caught:
            add_source(loaded, feed_server.url(path))
        assert not isinstance(caught.value, ConfigError)
    assert config.read_text(encoding="utf-8") == BASE_CONFIG


@pytest.mark.parametrize(("url", "kwargs", "message"), [
    ("/feed.xml", {"source_id": "Not Valid"},
     "--id: expected only a-z, 0-9, _ and -, got 'Not Valid'"),
    ("/feed.xml", {"source_id": "existing"}, "a source 'existing' is already in feeds.yaml"),
    ("ftp://example.org/feed.xml", {},
     "unsupported URL scheme 'ftp' in ftp://example.org/feed.xml"),
])
def test_add_checks_arguments_before_fetching(tmp_path: Path, feed_server, url: str,
                                              kwargs: dict, message: str) -> None:
    config = write(tmp_path / "feeds.yaml")
    with pytest.raises(ConfigError, match=re.escape(message)):
        add_source(load_config(config), feed_server.url(url) if url[0] == "/" else url, **kwargs)
    assert feed_server.requests == []
    assert config.read_text(encoding="utf-8") == BASE_CONFIG


def test_add_a_local_file_writes_a_relative_path(tmp_path: Path) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "local.xml").write_bytes(rss("Local Feed", 2))
    config = write(tmp_path / "feeds.yaml")

    result = run(config, "add", "feeds/local.xml")

    assert result.returncode == 0, result.stderr
    assert "    url: feeds/local.xml\n" in config.read_text(encoding="utf-8")
    assert load_config(config).source("local-feed").url == (feeds / "local.xml").as_uri()
