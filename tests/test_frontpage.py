"""The front page (index.html) in a real browser: Debian's chromium, headless.

The shipped sample configuration is polled and published by the real CLI, the output
directory is served in-process (aggregator.serve), and chromium loads the page:

- its DOM has the site title, the newest items with source and tag links, every
  published feed with its count, the subscribe links and <link rel="alternate">;
  no script and no external asset;
- every link into the site answers 200 from the server (percent-encoded Chinese
  folders included);
- phone and desktop screenshots are saved under the test's tmp_path (and copied to
  $AGGREGATOR_SCREENSHOTS when set);
- a zh-CN site speaks Chinese, an English one English.

Each chromium run has its own empty profile, a timeout, and its own process group,
which is killed (by id) only if the run overstays.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import lxml.html
import pytest
import requests
import yaml

from aggregator import serve

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")

CHROME_TIMEOUT = 60
CLI_TIMEOUT = 60
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars")
SIZES = {"phone": (390, 844), "desktop": (1280, 900)}
SITE_TITLE = "智能医疗资讯"
FEED_KINDS = ("categories", "sources", "tags")
# Elements whose URLs the browser fetches by itself when it renders the page.
ASSET_ATTRS = ("src", "srcset", "poster", "data", "background")


def has_class(name: str) -> str:
    """XPath test for one class among an element's classes."""
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


ITEMS = f"//ol[{has_class('items')}]/li"


@dataclass
class Site:
    root: Path  # the folder of feeds.yaml
    output: Path
    base: str  # http://127.0.0.1:PORT/

    @property
    def config(self) -> Path:
        return self.root / "feeds.yaml"


# -- helpers ------------------------------------------------------------------------------------
def run_cli(config: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGGREGATOR_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "aggregator", "--config", str(config), *args],
                            cwd=config.parent, capture_output=True, text=True, encoding="utf-8",
                            timeout=CLI_TIMEOUT, env=env, check=False)
    assert result.returncode == 0, f"{args} exited {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stdout


def chromium(tmp: Path, *args: str) -> str:
    """Run chromium once with a fresh profile; its stdout (the DOM for --dump-dom)."""
    profile = Path(os.path.realpath(tmp)) / f"chromium-profile-{os.urandom(4).hex()}"
    profile.mkdir(parents=True)
    assert CHROMIUM is not None
    proc = subprocess.Popen([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROME_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
        proc.communicate()
        pytest.fail(f"chromium {args} took more than {CHROME_TIMEOUT}s")
    finally:
        # Helpers (zygote, crashpad) left behind in the group this call started.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    assert proc.returncode == 0, (
        f"chromium {args} exited {proc.returncode}\n{err.decode(errors='replace')[-3000:]}")
    return out.decode("utf-8")


def parse(dom: str) -> lxml.html.HtmlElement:
    assert dom.strip(), "chromium dumped an empty DOM"
    return lxml.html.document_fromstring(dom)


def text(el: lxml.html.HtmlElement) -> str:
    return " ".join(el.text_content().split())


def is_relative(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc


def is_local(url: str) -> bool:
    """Relative, or on the loopback server: nothing the page would fetch from elsewhere."""
    parts = urlsplit(url.strip())
    if not parts.scheme and not parts.netloc:
        return True
    return parts.scheme in ("http", "https") and parts.hostname == "127.0.0.1"


def published_feeds(output: Path) -> dict[str, Path]:
    """Folder (relative POSIX path) -> its folder, for every per-term feed on disk."""
    found = {}
    for kind in FEED_KINDS:
        for folder in sorted((output / kind).iterdir()):
            if (folder / "index.xml").is_file():
                found[folder.relative_to(output).as_posix()] = folder
    return found


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def make_site(root: Path, *, language: str | None = None) -> Site:
    """The shipped sample config, its example feeds and seed store, polled and published."""
    root.mkdir(parents=True)
    shutil.copy2(REPO / "feeds.yaml", root / "feeds.yaml")
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copytree(REPO / "store", root / "store")
    if language is not None:
        config = root / "feeds.yaml"
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
        document["site"]["language"] = language
        config.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False),
                          encoding="utf-8")
    run_cli(root / "feeds.yaml", "poll")
    run_cli(root / "feeds.yaml", "publish")
    output = root / "public"
    assert (output / "index.html").is_file()
    return Site(root, output, "")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The zh-CN sample site, served on 127.0.0.1 at a free port for the module."""
    built = make_site(tmp_path_factory.mktemp("frontpage") / "site")
    server = serve.make_server(built.output, "127.0.0.1", 0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        built.base = f"http://127.0.0.1:{int(server.effective_port)}/"
        yield built
    finally:
        serve.stop_server(server)
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def dom(site: Site, tmp_path_factory: pytest.TempPathFactory) -> lxml.html.HtmlElement:
    """The page as chromium built it from the served index.html."""
    return parse(chromium(tmp_path_factory.mktemp("dom"), "--dump-dom", site.base))


# -- the page -----------------------------------------------------------------------------------
def test_title_and_subscribe_links(dom: lxml.html.HtmlElement) -> None:
    assert text(dom.find(".//title")) == SITE_TITLE
    assert [text(h) for h in dom.iter("h1")] == [SITE_TITLE]
    assert dom.xpath("//meta[@name='viewport']/@content"), "no viewport meta: unreadable on a phone"
    subscribe = {text(a): a.get("href") for a in dom.xpath("//header//a")}
    assert subscribe.get("RSS") == "index.xml"
    assert subscribe.get("Atom") == "atom.xml"
    assert subscribe.get("JSON Feed") == "feed.json"
    assert subscribe.get("OPML") == "feeds.opml"
    alternates = {link.get("type"): link.get("href")
                  for link in dom.xpath("//head/link[@rel='alternate']")}
    assert alternates == {"application/rss+xml": "index.xml", "application/atom+xml": "atom.xml",
                          "application/feed+json": "feed.json"}
    for link in dom.xpath("//head/link[@rel='alternate']"):
        assert SITE_TITLE in link.get("title", "")


def test_newest_items_with_sources_and_tags(site: Site, dom: lxml.html.HtmlElement) -> None:
    feed = json.loads((site.output / "feed.json").read_text(encoding="utf-8"))
    items = dom.xpath(ITEMS)
    assert len(items) == min(30, len(feed["items"])) > 5
    # Newest first, the same order as the site-wide feed.
    assert [text(li.find(".//h3")) for li in items] == [i["title"] for i in feed["items"][:len(items)]]
    # The hand-written seed posts name no source; every polled item does.
    unsourced = set()
    for path in (site.root / "store" / "seed").glob("*.md"):
        front = yaml.safe_load(path.read_text(encoding="utf-8").split("---\n")[1])
        if not front.get("source"):
            unsourced.add(front["title"])
    assert unsourced, "the sample store has no seed post any more"
    source_names = set()
    for li in items:
        sources = [a for a in li.iter("a") if a.get("href", "").startswith("sources/")]
        if text(li.find(".//h3")) in unsourced:
            assert not sources, lxml.html.tostring(li, encoding="unicode")
            continue
        assert len(sources) == 1, lxml.html.tostring(li, encoding="unicode")
        assert text(sources[0]), "source link without a name"
        source_names.add(text(sources[0]))
        assert li.xpath(".//time/@datetime"), "item without a machine-readable date"
    # Sources are named by their titles, the feed's own when the config gives none.
    assert {"Clinical AI Wire", "Health AI Digest", "AI in Medicine Briefing", "医疗科技快讯"} <= source_names
    assert not source_names & {"rss1-sample", "rss2-sample", "atom-sample", "json-sample"}
    tag_links = [a for li in items for a in li.xpath(f".//*[{has_class('chips')}]//a")]
    assert tag_links and all(a.get("href", "").startswith("tags/") for a in tag_links)
    assert {"medical-ai", "医疗", "人工智能"} <= {text(a) for a in tag_links}
    # Chinese tags link to their percent-encoded folders.
    assert any(a.get("href") == "tags/%E5%8C%BB%E7%96%97/index.xml" for a in tag_links)


def test_every_published_feed_listed_with_its_count(site: Site, dom: lxml.html.HtmlElement) -> None:
    rows = {}
    for tr in dom.xpath(f"//aside//table[{has_class('feeds')}]//tr"):
        rss = [a.get("href") for a in tr.iter("a") if text(a) == "RSS"]
        assert len(rss) == 1, lxml.html.tostring(tr, encoding="unicode")
        assert {text(a) for a in tr.iter("a")} == {"RSS", "Atom", "JSON"}
        rows[unquote(rss[0]).removesuffix("/index.xml")] = text(tr.xpath(f"td[{has_class('n')}]")[0])
    feeds = published_feeds(site.output)
    assert len(feeds) > 10
    assert set(rows) == set(feeds), "front page and output directory list different feeds"
    keep = yaml.safe_load(site.config.read_text(encoding="utf-8"))["defaults"]["keep_items"]
    for folder, path in feeds.items():
        in_feed = len(json.loads((path / "feed.json").read_text(encoding="utf-8"))["items"])
        assert rows[folder].isdigit(), (folder, rows[folder])
        count = int(rows[folder])
        assert count >= 1
        assert count == in_feed if in_feed < keep else count >= keep, (folder, count, in_feed)


def test_no_javascript_and_no_external_assets(site: Site, dom: lxml.html.HtmlElement) -> None:
    assert not list(dom.iter("script")), "the page has a <script> element"
    for el in dom.iter():
        if not isinstance(el.tag, str):
            continue
        for name, value in el.attrib.items():
            assert not name.lower().startswith("on"), f"event handler {name}= on <{el.tag}>"
            if name in ("href", "src", "action", "formaction"):
                assert not value.strip().lower().startswith("javascript:"), value
            if name in ASSET_ATTRS:
                for url in value.split(","):
                    assert is_local(url.strip().split(" ")[0]), f"external asset <{el.tag} {name}={value}>"
    for link in dom.iter("link"):
        assert is_local(link.get("href", "")), f"external <link> {link.get('href')}"
    for el in dom.iter("iframe", "object", "embed", "frame"):
        pytest.fail(f"<{el.tag}> on the page")
    style = " ".join(s.text or "" for s in dom.iter("style")).lower()
    assert "@import" not in style and "url(" not in style, "the stylesheet loads something"
    # The file itself, as served, carries no script either (not only chromium's DOM).
    raw = requests.get(site.base + "index.html", timeout=10)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/html")
    assert b"<script" not in raw.content.lower()


def test_site_links_resolve_on_the_server(site: Site, dom: lxml.html.HtmlElement) -> None:
    ids = set(dom.xpath("//@id"))
    urls = set()
    for el in dom.xpath("//a[@href] | //link[@href]"):
        href = el.get("href")
        if not is_relative(href):
            continue
        if href.startswith("#"):
            assert href[1:] in ids, f"in-page link {href} has no target"
            continue
        urls.add(urljoin(site.base, href).split("#", 1)[0])
    assert len(urls) > 50
    assert any("%E5%8C%BB%E7%96%97" in u for u in urls), "no percent-encoded Chinese folder linked"
    assert site.base + "feeds.opml" in urls
    with requests.Session() as http:
        for url in sorted(urls):
            response = http.get(url, timeout=10, allow_redirects=False)
            assert response.status_code == 200, f"{url} -> {response.status_code}"
            assert response.content, url
            if url.endswith("feed.json"):
                assert response.json()["version"] == "https://jsonfeed.org/version/1.1"
            elif url.endswith((".xml", ".opml")):
                assert response.content.lstrip().startswith(b"<?xml"), url


@pytest.mark.parametrize("device", list(SIZES))
def test_screenshot(site: Site, tmp_path: Path, device: str) -> None:
    width, height = SIZES[device]
    shot = tmp_path / f"frontpage-{device}.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={width},{height}", site.base)
    assert shot.is_file(), "chromium wrote no screenshot"
    assert shot.stat().st_size > 5 * 1024, "screenshot is (nearly) blank"
    assert png_size(shot) == (width, height)
    keep = os.environ.get("AGGREGATOR_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(keep) / shot.name)


# -- languages ----------------------------------------------------------------------------------
ZH_LABELS = ("最新文章", "订阅全部", "分类", "来源", "标签")
EN_LABELS = ("Latest", "Subscribe to all", "Categories", "Sources", "Tags")


def labels_of(page: lxml.html.HtmlElement) -> str:
    """The page's own words: headings, subscribe line and footer (not item or feed names)."""
    parts = [text(h) for h in page.iter("h2")]
    parts += [text(p) for p in page.xpath(f"//p[{has_class('subscribe')}] | //footer")]
    return " | ".join(parts)


def test_zh_site_speaks_chinese(dom: lxml.html.HtmlElement) -> None:
    assert dom.get("lang") == "zh-CN"
    words = labels_of(dom)
    for label in ZH_LABELS:
        assert label in words, (label, words)
    for label in EN_LABELS:
        assert label not in words, (label, words)
    # English items in a Chinese page say so, for the browser's font choice.
    english = dom.xpath(ITEMS + "[@lang]")
    assert english and all(li.get("lang").lower().startswith("en") for li in english)


def test_en_site_speaks_english(tmp_path: Path) -> None:
    english = make_site(tmp_path / "site-en", language="en")
    page = parse(chromium(tmp_path, "--dump-dom", (english.output / "index.html").as_uri()))
    assert page.get("lang") == "en"
    assert text(page.find(".//title")) == SITE_TITLE
    words = labels_of(page)
    for label in EN_LABELS:
        assert label in words, (label, words)
    for label in ZH_LABELS:
        assert label not in words, (label, words)
    # Chinese items in an English page are marked, so they get Chinese glyphs.
    marked = {li.get("lang") for li in page.xpath(ITEMS + "[@lang]")}
    assert "zh-CN" in marked
    assert len(page.xpath(ITEMS)) > 5
