"""`aggregator publish`: golden output, determinism, incremental writes, hostile input.

The golden test publishes the small committed store in tests/data/publish/store/
with tests/data/publish/feeds.yaml and compares the whole output directory with
tests/data/publish/golden/, byte for byte (pelican's assertDirsEqual). When a change
to the output is intended, regenerate the snapshot explicitly and review the diff:

    AGGREGATOR_UPDATE_GOLDEN=1 pytest tests/test_publish.py -k golden
    git diff tests/data/publish/golden/

It is never refreshed automatically. The snapshot names the package version (in
`<generator>` and index.html), so a version bump needs a refresh too.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from lxml import etree

from aggregator.model import Item
from aggregator.slug import term_slug
from aggregator.store import read_item
from tests.publish_helpers import (
    FEED_FILES,
    NS,
    OLD_MTIME_NS,
    age,
    content_fragments,
    feed_dirs,
    feed_paths,
    json_ids,
    output_files,
    publish,
    run_cli,
    snapshot,
    touched,
    unsafe_html,
)

DATA = Path(__file__).resolve().parent / "data" / "publish"
GOLDEN = DATA / "golden"
UPDATE_GOLDEN = os.environ.get("AGGREGATOR_UPDATE_GOLDEN") == "1"
TZ = ZoneInfo("Asia/Shanghai")
KEEP = 4  # defaults.keep_items in tests/data/publish/feeds.yaml


class Site:
    """A copy of the committed inputs in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "feeds.yaml", root / "feeds.yaml")
        shutil.copytree(DATA / "store", root / "store")
        self.config = root / "feeds.yaml"
        self.store = root / "store"
        self.output = root / "public"

    def publish(self, expect: int = 0) -> str:
        return publish(self.config, expect=expect).stderr

    def items(self) -> dict[str, Item]:
        """{store path: Item} of every publishable store file."""
        out = {}
        for p in sorted(self.store.rglob("*.md")):
            if ".aggregator" in p.parts:
                continue
            rel = p.relative_to(self.store).as_posix()
            try:
                item = read_item(p.read_text(encoding="utf-8"), TZ, rel)
            except (ValueError, UnicodeDecodeError):
                continue
            if not item.extra.get("draft"):
                out[rel] = item
        return out


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The committed store, published once, for the tests that only read the output."""
    s = Site(tmp_path_factory.mktemp("published"))
    s.publish()
    return s


# -- (a) golden ---------------------------------------------------------------------------------
def _dir_differences(actual: Path, expected: Path) -> list[str]:
    got, want = set(output_files(actual)), set(output_files(expected))
    problems = [f"missing: {p}" for p in sorted(want - got)]
    problems += [f"unexpected: {p}" for p in sorted(got - want)]
    for rel in sorted(got & want):
        a, b = (actual / rel).read_bytes(), (expected / rel).read_bytes()
        if a == b:
            continue
        try:
            diff = difflib.unified_diff(b.decode().splitlines(), a.decode().splitlines(),
                                        f"golden/{rel}", f"output/{rel}", lineterm="", n=2)
            problems.append(f"differs: {rel}\n" + "\n".join(list(diff)[:40]))
        except UnicodeDecodeError:
            problems.append(f"differs: {rel} (binary)")
    return problems


def test_golden_output(site: Site) -> None:
    site.publish()
    if UPDATE_GOLDEN:
        shutil.rmtree(GOLDEN, ignore_errors=True)
        shutil.copytree(site.output, GOLDEN, ignore=shutil.ignore_patterns(".aggregator-tmp"))
    if not GOLDEN.is_dir():
        pytest.fail(f"no golden output at {GOLDEN}; create it with AGGREGATOR_UPDATE_GOLDEN=1")
    problems = _dir_differences(site.output, GOLDEN)
    assert not problems, (
        "published output differs from tests/data/publish/golden/ (if the change is "
        "intended, rerun with AGGREGATOR_UPDATE_GOLDEN=1 and review `git diff`):\n\n"
        + "\n\n".join(problems[:10]))


# -- (b) determinism ----------------------------------------------------------------------------
def test_publishing_an_unchanged_store_writes_nothing(site: Site) -> None:
    site.publish()
    age(site.output)
    before = snapshot(site.output)

    result = run_cli(site.config, "publish", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == 0 and summary["removed"] == 0, summary
    assert touched(before, snapshot(site.output)) == set()
    assert snapshot(site.output) == before

    # Without the index (derived data) every feed is rebuilt, but equal bytes are
    # not written again: same files, same mtimes, same inodes.
    shutil.rmtree(site.store / ".aggregator")
    site.publish()
    after = snapshot(site.output)
    assert after == before, sorted(touched(before, after))
    assert all(mtime == OLD_MTIME_NS for _, mtime, _ in after.values())


def test_output_does_not_depend_on_where_or_when(tmp_path: Path) -> None:
    """Two copies of the store published at different times give the same bytes."""
    first, second = Site(tmp_path / "a"), Site(tmp_path / "b")
    first.publish()
    os.utime(second.store / "alpha" / "2025-02-15-sepsis-alert-trial-5d1c0a7e21.md",
             ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    second.publish()
    a, b = snapshot(first.output), snapshot(second.output)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}


# -- (c) build date -----------------------------------------------------------------------------
def test_build_date_is_the_newest_item_date(published: Site) -> None:
    items = published.items()
    by_guid = {}
    for rel, item in items.items():
        by_guid[item.guid or item.link or rel] = item
    for folder in feed_dirs(published.output):
        data = json.loads((published.output / folder / "feed.json").read_text("utf-8"))
        newest = max(datetime.fromisoformat(i.get("date_modified") or i["date_published"])
                     for i in data["items"])
        rss = etree.parse(str(published.output / folder / "index.xml")).getroot()
        built = parsedate_to_datetime(rss.findtext("channel/lastBuildDate"))
        assert built == newest, folder
        atom = etree.parse(str(published.output / folder / "atom.xml")).getroot()
        assert datetime.fromisoformat(atom.findtext("atom:updated", namespaces=NS)) == newest
    # The site-wide feed: the newest date in the whole store (a lastmod), not the clock.
    newest_in_store = max(max(i.date, i.lastmod or i.date) for i in items.values())
    rss = etree.parse(str(published.output / "index.xml")).getroot()
    assert parsedate_to_datetime(rss.findtext("channel/lastBuildDate")) == newest_in_store
    assert newest_in_store.year == 2025


# -- (d) incremental ----------------------------------------------------------------------------
def _feeds_holding(output: Path, guid: str) -> set[str]:
    return {folder for folder in feed_dirs(output) if guid in json_ids(output, folder)}


def _files_of(folders: set[str]) -> set[str]:
    return {p for folder in folders for p in feed_paths("", folder)}


def test_changing_one_item_rewrites_only_its_feeds(site: Site) -> None:
    site.publish()
    guid = "beta-20250219-002"
    holding = _feeds_holding(site.output, guid)
    assert {"", "sources/beta", "categories/国内资讯", "tags/大模型", "tags/ai"} <= holding
    age(site.output)
    before = snapshot(site.output)

    path = site.store / "beta" / "2025-02-19-20250219-002-6e4b7a9c03.md"
    path.write_text(path.read_text("utf-8").replace(
        'title: "大模型病历质控系统上线两个月"', 'title: "大模型病历质控系统上线两个月（更新）"'),
        encoding="utf-8")
    site.publish()
    after = snapshot(site.output)
    assert touched(before, after) == _files_of(holding) | {"index.html"}
    assert "（更新）" in (site.output / "tags" / "大模型" / "index.xml").read_text("utf-8")


def test_adding_an_item_rewrites_only_its_feeds(site: Site) -> None:
    site.publish()
    age(site.output)
    before = snapshot(site.output)
    (site.store / "alpha" / "2025-02-22-new-item-1234567890.md").write_text(
        '---\ntitle: "A new item"\ndate: "2025-02-22T09:00:00+08:00"\n'
        'summary: "New."\ncategories:\n  - "国际动态"\ntags:\n  - "medical-ai"\n'
        '  - "Brand New Tag"\nlink: "https://alpha.example.org/new"\nsource: "alpha"\n'
        'guid: "alpha-new-item"\n---\n\nNew.\n', encoding="utf-8")
    site.publish()
    after = snapshot(site.output)
    holding = _feeds_holding(site.output, "alpha-new-item")
    assert holding == {"", "sources/alpha", "categories/国际动态", "tags/medical-ai",
                       "tags/brand-new-tag"}
    # feeds.opml lists the new tag feed; index.html shows the item.
    assert touched(before, after) == _files_of(holding) | {"index.html", "feeds.opml"}


def test_removing_the_last_item_of_a_tag_removes_its_feed(site: Site) -> None:
    site.publish()
    guid = "https://alpha.example.org/news/2025/02/15/sepsis-alert"
    holding = _feeds_holding(site.output, guid)
    assert "tags/sepsis" in holding and "" not in holding  # beyond keep_items in 'all'
    age(site.output)
    before = snapshot(site.output)

    (site.store / "alpha" / "2025-02-15-sepsis-alert-trial-5d1c0a7e21.md").unlink()
    site.publish()
    after = snapshot(site.output)
    assert not (site.output / "tags" / "sepsis").exists()
    assert touched(before, after) == _files_of(holding) | {"index.html", "feeds.opml"}
    assert "tags/sepsis" not in (site.output / "feeds.opml").read_text("utf-8")
    # And publishing again has nothing left to do.
    age(site.output)
    settled = snapshot(site.output)
    site.publish()
    assert touched(settled, snapshot(site.output)) == set()


# -- (e) keep_items -----------------------------------------------------------------------------
def _expected_members(items: dict[str, Item], folder: str) -> list[str]:
    """Store paths a feed should hold, newest first (all of them, before keep_items)."""
    kind, _, slug = folder.partition("/")

    def holds(item: Item) -> bool:
        if not folder:
            return True
        if kind == "tags":
            return any(term_slug(t) == slug for t in item.tags)
        if kind == "categories":
            return any(term_slug(t) == slug for t in item.categories)
        return slug in item.all_sources

    members = [(rel, item) for rel, item in items.items() if holds(item)]
    members.sort(key=lambda ri: (-ri[1].date.timestamp(), ri[0]))
    return [rel for rel, _ in members]


def test_each_feed_keeps_the_newest_keep_items(published: Site) -> None:
    items = published.items()
    guid_of = {rel: i.guid or i.link for rel, i in items.items()}
    folders = feed_dirs(published.output)
    assert len(items) == 7 and "" in folders
    for folder in folders:
        expected = _expected_members(items, folder)
        assert expected, f"{folder}: a feed with no items was published"
        ids = json_ids(published.output, folder)
        assert len(ids) == min(KEEP, len(expected)), folder
        for rel, got in zip(expected[:KEEP], ids, strict=False):
            if guid_of[rel]:
                assert got == guid_of[rel], folder
        rss = etree.parse(str(published.output / folder / "index.xml")).getroot()
        dates = [parsedate_to_datetime(d.text) for d in rss.iter("pubDate")]
        assert len(dates) == len(ids) and dates == sorted(dates, reverse=True), folder
        atom = etree.parse(str(published.output / folder / "atom.xml")).getroot()
        assert len(atom.findall("atom:entry", NS)) == len(ids), folder
    assert len(json_ids(published.output, "")) == KEEP


def test_drafts_are_not_published(published: Site) -> None:
    assert not (published.output / "tags" / "draft-only-tag").exists()
    for rel in output_files(published.output):
        assert b"Unfinished draft" not in (published.output / rel).read_bytes(), rel


# -- (f) sanitizing -----------------------------------------------------------------------------
HOSTILE_BODY = """\
A hand-edited file.

<script>alert(1)</script>

<img src=x onerror=alert(1)>

[x](javascript:alert(1)) [y](JaVaScRiPt:alert(2)) [z](java&#x09;script:alert(3))
[d](data:text/html;base64,PHNjcmlwdD5hbGVydCg0KTwvc2NyaXB0Pg==) [v](vbscript:msgbox(5))

![img](javascript:alert(6))

<iframe src="https://evil.example/frame"></iframe>

<style>body { display: none }</style>

<a href="javascript:alert(7)" onclick="alert(8)">raw link</a>

<p onmouseover="alert(9)" style="background:url(javascript:alert(10))">raw p</p>

<svg onload=alert(11)><script>alert(12)</script></svg>

<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/y">

<a href="https://example.org/ok">a good link</a> and [a good one](https://example.org/fine).
"""


def test_hand_edited_html_never_reaches_a_feed(site: Site) -> None:
    (site.store / "hand" / "2025-02-25-hostile.md").write_text(
        '---\ntitle: "Hostile body"\ndate: "2025-02-25 10:00:00"\n'
        'summary: "<script>alert(13)</script><img src=x onerror=alert(14)>"\n'
        'tags: ["hostile"]\n---\n\n' + HOSTILE_BODY, encoding="utf-8")
    site.publish()
    fragments = [f for f in content_fragments(site.output) if f[0].startswith("tags/hostile/")]
    formats = {rel.rsplit("/", 1)[-1] for rel, _, _ in fragments}
    assert formats == set(FEED_FILES)
    problems = [(rel, where, p) for rel, where, html in content_fragments(site.output)
                for p in unsafe_html(html)]
    assert not problems, problems
    content = next(h for rel, w, h in fragments if w == "content_html")
    assert "good link" in content and "https://example.org/fine" in content


def test_links_and_images_are_absolute(published: Site) -> None:
    import lxml.html

    seen = 0
    for rel, where, html in content_fragments(published.output):
        if not html.strip() or where == "description":
            continue
        root = lxml.html.fragment_fromstring(html, create_parent="div")
        for el in root.iter("a", "img"):
            url = el.get("href") or el.get("src") or ""
            assert url.startswith(("https://", "http://", "mailto:")), (rel, url)
            seen += 1
    assert seen > 10
    # The odd-tags item has a relative link and image: resolved against its link.
    body = (published.output / "tags" / "c#" / "feed.json").read_text("utf-8")
    assert "https://alpha.example.org/img/diagram.png" in body
    assert "https://alpha.example.org/about/" in body


# -- (g) broken store files -----------------------------------------------------------------------
BROKEN = {
    "hand/bad-yaml.md": b'---\ntitle: "unclosed\ndate: [2025\n---\n\nbody\n',
    "hand/no-front-matter.md": b"Just some text, no front matter.\n",
    "hand/latin1.md": b"---\ntitle: caf\xe9\ndate: 2025-02-01\n---\n\nna\xefve\n",
}


def test_broken_store_files_are_skipped_and_left_alone(site: Site) -> None:
    for rel, data in BROKEN.items():
        (site.store / rel).write_bytes(data)
        os.utime(site.store / rel, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    for _ in range(2):  # the second time from the index's cache of the failure
        stderr = site.publish(expect=1)
        for rel, data in BROKEN.items():
            assert rel in stderr, stderr
            assert (site.store / rel).read_bytes() == data
            assert (site.store / rel).stat().st_mtime_ns == OLD_MTIME_NS
        assert len(stderr.strip().splitlines()) >= len(BROKEN)
        assert "Traceback" not in stderr
        assert len(json_ids(site.output, "")) == KEEP  # the good items are published


# -- (h) hostile tags ---------------------------------------------------------------------------
HOSTILE_TAGS = ["../../etc", "..", ".", "/", "\\", "a/../../b", "..\\..\\x", "%2e%2e", "%2F",
                "/etc/passwd", "x" * 300, "\u202e\u200f", "CON", "nul", "\x01"]


def _hostile_item(n: int, tags: list[str]) -> str:
    return (f'---\ntitle: "Hostile {n}"\ndate: "2025-02-{n + 1:02d} 08:00:00"\n'
            + "tags:\n" + "".join(f"  - {json.dumps(t)}\n" for t in tags)
            + f"categories:\n  - {json.dumps(tags[0])}\n---\n\nBody {n}.\n")


def test_hostile_tags_never_leave_the_output_dir(tmp_path: Path) -> None:
    from tests.publish_helpers import write_config

    config = write_config(tmp_path, keep_items=50)
    store = tmp_path / "store" / "hand"
    store.mkdir(parents=True)
    derived = term_slug("../../etc")  # a tag spelt like the folder derived for another
    groups = [[t] for t in HOSTILE_TAGS] + [[derived], ["../etc"], ["..\\etc"], ["./etc"]]
    for n, tags in enumerate(groups, start=1):
        (store / f"hostile-{n}.md").write_text(_hostile_item(n, tags), encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    publish(config)

    output = tmp_path / "public"
    root = os.path.realpath(output)
    for rel in output_files(output):
        path = output / rel
        assert not path.is_symlink(), rel
        assert os.path.commonpath([root, os.path.realpath(path)]) == root, rel
        assert all(part not in ("", ".", "..") for part in rel.split("/")), rel
        for part in rel.split("/"):
            assert len(part.encode()) <= 150 and "\\" not in part and "\x00" not in part
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "public"])
    assert not (tmp_path / "etc").exists() and not (tmp_path / "b").exists()

    # One feed per term, each holding just its own item: no two terms share a folder.
    tag_feeds = [f for f in feed_dirs(output) if f.startswith("tags/")]
    assert len(tag_feeds) == len(groups), tag_feeds
    titles = set()
    for folder in tag_feeds:
        data = json.loads((output / folder / "feed.json").read_text("utf-8"))
        assert len(data["items"]) == 1, folder
        titles.add(data["items"][0]["title"])
    assert len(titles) == len(groups)
    assert (output / "tags" / "con" / "index.xml").is_file()  # CON is harmless on POSIX
    assert (output / "tags" / derived / "feed.json").is_file()


# -- (i) items without a link -------------------------------------------------------------------
SEED = "seed/2025-02-14-hospital-llm-diagnosis.md"


def _seed_ids(output: Path) -> tuple[str, str, str]:
    folder = output / "categories" / "医疗"
    rss = etree.parse(str(folder / "index.xml")).getroot()
    guid = rss.find("channel/item/guid")
    assert guid is not None and guid.get("isPermaLink") == "false"
    atom = etree.parse(str(folder / "atom.xml")).getroot()
    atom_id = atom.findtext("atom:entry/atom:id", namespaces=NS)
    json_id = json.loads((folder / "feed.json").read_text("utf-8"))["items"][0]["id"]
    return guid.text or "", atom_id or "", json_id


def test_items_without_link_get_a_stable_guid(site: Site) -> None:
    site.publish()
    first = _seed_ids(site.output)
    assert first[0] == first[1] == first[2]
    assert first[0].startswith("tag:")
    # Rebuilt from scratch, and after an edit of the body: the same id.
    shutil.rmtree(site.store / ".aggregator")
    shutil.rmtree(site.output)
    site.publish()
    assert _seed_ids(site.output) == first
    seed = site.store / SEED
    seed.write_text(seed.read_text("utf-8") + "\n补充一段。\n", encoding="utf-8")
    site.publish()
    assert _seed_ids(site.output) == first


def test_guids_are_kept_from_the_store(published: Site) -> None:
    ids = set(json_ids(published.output, "sources/alpha")) | set(
        json_ids(published.output, "sources/beta"))
    assert {"beta-20250216-001", "beta-20250219-002", "alpha-odd-tags",
            "https://alpha.example.org/news/2025/02/18/guidance"} <= ids
    atom = etree.parse(str(published.output / "sources" / "beta" / "atom.xml")).getroot()
    atom_ids = [e.findtext("atom:id", namespaces=NS) for e in atom.iterfind("atom:entry", NS)]
    # A guid that is not an IRI is wrapped reversibly for Atom.
    assert "urn:x-aggregator-guid:beta-20250216-001" in atom_ids


# -- (j) items listed by several sources ------------------------------------------------------------
def test_multi_source_item_names_its_first_source(published: Site) -> None:
    guid = "https://alpha.example.org/news/2025/02/18/guidance"
    assert {"sources/alpha", "sources/beta"} <= _feeds_holding(published.output, guid)
    for folder in ("", "sources/beta", "sources/alpha"):
        rss = etree.parse(str(published.output / folder / "index.xml")).getroot()
        item = next(i for i in rss.iter("item") if i.findtext("guid") == guid)
        source = item.find("source")
        assert source is not None, folder
        assert source.get("url") == "https://alpha.example.org/feed.xml"
        assert source.text == "Alpha Health News"
        atom = etree.parse(str(published.output / folder / "atom.xml")).getroot()
        entry = next(e for e in atom.iterfind("atom:entry", NS)
                     if e.findtext("atom:id", namespaces=NS) == guid)
        assert entry.findtext("atom:source/atom:title", namespaces=NS) == "Alpha Health News"
        assert entry.findtext("atom:source/atom:id", namespaces=NS) == \
            "https://alpha.example.org/feed.xml"


# -- store files that once stopped the whole publish ----------------------------------------------
def test_control_characters_do_not_stop_publishing(site: Site) -> None:
    """XML cannot hold U+0001..U+001F: they are dropped, the other feeds still published."""
    (site.store / "hand" / "2025-02-26-bell.md").write_text(
        '---\ntitle: "bell \\a title"\ndate: "2025-02-26 08:00:00"\nsummary: "x\\u0001y"\n'
        'author: "\\u0002Ann"\ntags: ["x\\u0001y", "ok"]\ncategories: ["\\u0003"]\n---\n\n'
        "body \u0007 text\n", encoding="utf-8")
    site.publish()
    for rel in output_files(site.output):
        if rel.endswith((".xml", ".opml")):
            etree.parse(str(site.output / rel))  # well-formed, or this raises
    rss = (site.output / "tags" / "ok" / "index.xml").read_text("utf-8")
    assert "bell  title" in rss and "<dc:creator>Ann</dc:creator>" in rss
    assert (site.output / "tags" / "xy" / "index.xml").is_file()
    assert json_ids(site.output, "")[0].startswith("tag:")


def test_item_with_no_link_and_no_body_is_still_valid_atom(site: Site) -> None:
    """RFC 4287: an entry needs an alternate link or content; feedgen refused the feed."""
    from tests.publish_helpers import jing_errors

    (site.store / "hand" / "2025-02-27-empty.md").write_text(
        '---\ntitle: "Only a title"\ndate: "2025-02-27 08:00:00"\ntags: ["empty"]\n---\n',
        encoding="utf-8")
    site.publish()
    atom = etree.parse(str(site.output / "tags" / "empty" / "atom.xml")).getroot()
    entry = atom.find("atom:entry", NS)
    assert entry is not None and entry.find("atom:content", NS) is not None
    assert "Only a title" in (entry.findtext("atom:content", namespaces=NS) or "")
    assert not jing_errors([site.output / "tags" / "empty" / "atom.xml"])


def test_symlinks_planted_in_the_output_are_not_written_through(site: Site) -> None:
    site.publish()
    outside = site.root / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("not a feed", encoding="utf-8")
    story = next((site.store / "alpha").glob("2025-02-15-*.md"))  # in both feeds below

    def edit(old: str, new: str) -> None:
        story.write_text(story.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")

    feed = site.output / "sources" / "alpha" / "index.xml"
    feed.unlink()
    feed.symlink_to(secret)  # a feed file swapped for a link: replaced, not written through
    edit("cuts time to antibiotics", "cut time to antibiotics")
    site.publish()
    assert secret.read_text(encoding="utf-8") == "not a feed"
    assert not feed.is_symlink() and b"cut time to antibiotics" in feed.read_bytes()

    folder = site.output / "categories" / "国际动态"
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)  # a feed's folder: refused
    edit("cut time to antibiotics", "cuts the time to antibiotics")
    stderr = site.publish(expect=1)
    assert "categories/国际动态" in stderr and "leaves the output directory" in stderr
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert secret.read_text(encoding="utf-8") == "not a feed"
