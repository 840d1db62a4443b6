"""Every feed published from the shipped sample feeds is valid (SPEC §4).

The shipped feeds.yaml, examples/ and store/ are copied to a temporary directory and
the real CLI runs `poll` then `publish` there (no network: the sources are local
files). Then, for every published feed: the W3C Feed Validation Service's checker
(../shared/tools/validate-feed, skipped when ../shared is absent), RFC 4287's RELAX
NG schema for Atom (jing), feedparser without complaint, the JSON Feed 1.1 structure,
guids kept from the store, self links, dates; then feeds.opml and index.html.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin
from zoneinfo import ZoneInfo

import feedparser
import lxml.html
import pytest
from lxml import etree

from aggregator.config import load_config
from aggregator.model import Item
from aggregator.slug import assign_slugs, url_segment
from aggregator.store import read_item
from tests.publish_helpers import (
    FEED_FILES,
    NS,
    REPO,
    feed_dirs,
    jing_errors,
    run_cli,
    unsafe_html,
    validator_errors,
)

BASE = "http://127.0.0.1:8000/"


class Published:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "feeds.yaml"
        self.config = load_config(self.config_path)
        self.output = self.config.output_dir
        self.folders = feed_dirs(self.output)

    def files(self, name: str | None = None) -> list[Path]:
        names = [name] if name else list(FEED_FILES)
        return [self.output / f / n for f in self.folders for n in names]

    def items(self) -> dict[str, Item]:
        tz = ZoneInfo(self.config.site.timezone)
        store = self.config.store_dir
        out = {}
        for p in sorted(store.rglob("*.md")):
            if ".aggregator" not in p.relative_to(store).parts:
                rel = p.relative_to(store).as_posix()
                out[rel] = read_item(p.read_text(encoding="utf-8"), tz, rel)
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Published:
    root = tmp_path_factory.mktemp("shipped")
    shutil.copy(REPO / "feeds.yaml", root / "feeds.yaml")
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copytree(REPO / "store", root / "store",
                    ignore=shutil.ignore_patterns(".aggregator"))
    for command in ("poll", "publish"):
        result = run_cli(root / "feeds.yaml", command)
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
    published = Published(root)
    assert published.config.site.base_url == BASE
    return published


def _url_of(rel: str) -> str:
    """The URL a published file is served at (its folder percent-encoded)."""
    return BASE + "/".join(url_segment(part) for part in rel.split("/"))


def test_sample_site_has_every_kind_of_feed(site: Published) -> None:
    kinds = {f.split("/")[0] for f in site.folders}
    assert kinds == {"", "tags", "categories", "sources"}
    assert {f"sources/{s.id}" for s in site.config.sources} <= set(site.folders)
    assert any(re.search(r"[\u4e00-\u9fff]", f) for f in site.folders)  # Chinese terms


def test_w3c_validator_passes_every_rss_and_atom_feed(site: Published) -> None:
    files = site.files("index.xml") + site.files("atom.xml")
    errors = validator_errors(files)  # one call for all: the checker starts slowly
    assert not errors, errors


def test_atom_feeds_match_rfc4287_schema(site: Published) -> None:
    errors = jing_errors(site.files("atom.xml"))
    assert not errors, errors


def test_feedparser_reads_every_feed_without_complaint(site: Published) -> None:
    # feedparser 6.0 reads RSS and Atom only; feed.json is checked by json_feed_problems.
    for path in site.files("index.xml") + site.files("atom.xml"):
        parsed = feedparser.parse(path.read_bytes())
        assert parsed.bozo == 0, (path, parsed.get("bozo_exception"))
        assert parsed.version, path
        assert parsed.entries, path


# -- items, guids and counts --------------------------------------------------------------------
def _members(site: Published) -> dict[str, list[tuple[str, Item]]]:
    """{feed folder: [(store path, item)] newest first}, from the store files alone."""
    items = site.items()
    tags = assign_slugs(t for i in items.values() for t in i.tags)
    categories = assign_slugs(t for i in items.values() for t in i.categories)
    out: dict[str, list[tuple[str, Item]]] = {}
    for rel, item in items.items():
        folders = {"", *(f"tags/{tags[t]}" for t in item.tags),
                   *(f"categories/{categories[t]}" for t in item.categories),
                   *(f"sources/{s}" for s in item.all_sources)}
        for folder in folders:
            out.setdefault(folder, []).append((rel, item))
    for members in out.values():
        members.sort(key=lambda m: (-m[1].date.timestamp(), m[0]))
    return out


def test_each_feed_holds_the_newest_items_with_their_own_guids(site: Published) -> None:
    keep = site.config.defaults.keep_items
    members = _members(site)
    assert set(members) == set(site.folders)
    for folder in site.folders:
        expected = members[folder][:keep]
        rss = etree.parse(str(site.output / folder / "index.xml")).getroot()
        guids = [g.text for g in rss.iter("guid")]
        atom = etree.parse(str(site.output / folder / "atom.xml")).getroot()
        atom_ids = [e.findtext("atom:id", namespaces=NS) for e in atom.iterfind("atom:entry", NS)]
        data = json.loads((site.output / folder / "feed.json").read_text("utf-8"))
        json_ids = [i["id"] for i in data["items"]]
        assert len(guids) == len(atom_ids) == len(json_ids) == min(keep, len(members[folder]))
        for (rel, item), guid, atom_id, json_id in zip(expected, guids, atom_ids, json_ids,
                                                       strict=True):
            if item.guid:  # kept from the source, verbatim
                assert guid == json_id == item.guid, (folder, rel)
                # Atom ids must be IRIs: a guid that is not one is wrapped, reversibly.
                wrapped = atom_id.removeprefix("urn:x-aggregator-guid:")
                assert atom_id == item.guid or unquote(wrapped) == item.guid, (folder, rel)
            else:  # the seed post: no guid, no link
                assert guid == atom_id == json_id and guid.startswith("tag:"), (folder, rel)


def test_rss_dates_are_rfc822_and_self_links_point_home(site: Published) -> None:
    rfc822 = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|"
                        r"Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} ([+-]\d{4}|GMT)$")
    for path in site.files("index.xml"):
        rel = path.relative_to(site.output).as_posix()
        rss = etree.parse(str(path)).getroot()
        assert rss.get("version") == "2.0"
        dates = [e.text for e in rss.iter("pubDate", "lastBuildDate")]
        assert dates and all(d and rfc822.match(d) for d in dates), (rel, dates)
        for d in dates:
            parsedate_to_datetime(d)
        selves = rss.findall("channel/atom:link[@rel='self']", NS)
        assert [s.get("href") for s in selves] == [_url_of(rel)], rel
        assert rss.findtext("channel/link", "").startswith(BASE), rel
    for path in site.files("atom.xml"):
        rel = path.relative_to(site.output).as_posix()
        atom = etree.parse(str(path)).getroot()
        selves = atom.findall("atom:link[@rel='self']", NS)
        assert [s.get("href") for s in selves] == [_url_of(rel)], rel
    for path in site.files("feed.json"):
        rel = path.relative_to(site.output).as_posix()
        assert json.loads(path.read_text("utf-8"))["feed_url"] == _url_of(rel)


def test_item_content_is_sanitized_html(site: Published) -> None:
    from tests.publish_helpers import content_fragments

    problems = [(rel, p) for rel, _, html in content_fragments(site.output)
                for p in unsafe_html(html)]
    assert not problems, problems[:20]


# -- JSON Feed 1.1 ------------------------------------------------------------------------------
FEED_KEYS = {"version": str, "title": str, "home_page_url": str, "feed_url": str,
             "description": str, "user_comment": str, "next_url": str, "icon": str,
             "favicon": str, "authors": list, "language": str, "expired": bool,
             "hubs": list, "items": list}
ITEM_KEYS = {"id": str, "url": str, "external_url": str, "title": str, "content_html": str,
             "content_text": str, "summary": str, "image": str, "banner_image": str,
             "date_published": str, "date_modified": str, "authors": list, "tags": list,
             "language": str, "attachments": list}


def json_feed_problems(data: Any) -> Iterator[str]:
    """Structure per https://www.jsonfeed.org/version/1.1/ (custom keys start with '_')."""
    if not isinstance(data, dict):
        yield "not an object"
        return
    if data.get("version") != "https://jsonfeed.org/version/1.1":
        yield f"version {data.get('version')!r}"
    for key in ("title", "items"):
        if key not in data:
            yield f"no {key}"
    yield from _typed(data, FEED_KEYS, "feed")
    for n, author in enumerate(data.get("authors") or []):
        yield from _author(author, f"authors[{n}]")
    for hub in data.get("hubs") or []:
        if not (isinstance(hub, dict) and isinstance(hub.get("type"), str)
                and isinstance(hub.get("url"), str)):
            yield f"hub {hub!r}"
    ids = []
    for n, item in enumerate(data.get("items") or []):
        where = f"items[{n}]"
        if not isinstance(item, dict):
            yield f"{where}: not an object"
            continue
        if not isinstance(item.get("id"), str) or not item["id"]:
            yield f"{where}: no id"
        ids.append(item.get("id"))
        if not any(isinstance(item.get(k), str) for k in ("content_html", "content_text")):
            yield f"{where}: neither content_html nor content_text"
        yield from _typed(item, ITEM_KEYS, where)
        for key in ("date_published", "date_modified"):
            if key in item:
                try:
                    parsed = datetime.fromisoformat(item[key])
                except ValueError:
                    yield f"{where}.{key}: not RFC 3339: {item[key]!r}"
                    continue
                if parsed.tzinfo is None:
                    yield f"{where}.{key}: no offset"
        for key in ("url", "external_url", "image", "banner_image"):
            if key in item and not item[key].startswith(("http://", "https://")):
                yield f"{where}.{key}: not an absolute URL"
        if not all(isinstance(t, str) for t in item.get("tags", [])):
            yield f"{where}.tags: not strings"
        for a, author in enumerate(item.get("authors") or []):
            yield from _author(author, f"{where}.authors[{a}]")
    if len(ids) != len(set(ids)):
        yield "duplicate item ids"


def _typed(obj: dict[str, Any], known: dict[str, type], where: str) -> Iterator[str]:
    for key, value in obj.items():
        if key.startswith("_"):
            continue
        if key not in known:
            yield f"{where}: unknown key {key!r}"
        elif not isinstance(value, known[key]):
            yield f"{where}.{key}: expected {known[key].__name__}"


def _author(author: Any, where: str) -> Iterator[str]:
    if not isinstance(author, dict) or not any(
            isinstance(author.get(k), str) for k in ("name", "url", "avatar")):
        yield f"{where}: an author needs a name, url or avatar"


def test_json_feeds_match_version_1_1(site: Published) -> None:
    for path in site.files("feed.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        problems = list(json_feed_problems(data))
        assert not problems, (path, problems)
        assert data["items"], path


def test_json_feed_checker_catches_mistakes() -> None:
    good = {"version": "https://jsonfeed.org/version/1.1", "title": "t",
            "items": [{"id": "1", "content_text": "x"}]}
    assert list(json_feed_problems(good)) == []
    assert list(json_feed_problems({**good, "version": "1"}))
    assert list(json_feed_problems({**good, "items": [{"id": "1"}]}))
    assert list(json_feed_problems({**good, "items": [{"content_html": "x"}]}))
    assert list(json_feed_problems({**good, "author": {"name": "old 1.0 key"}}))


# -- feeds.opml and index.html --------------------------------------------------------------------
def test_opml_lists_every_feed(site: Published) -> None:
    root = etree.parse(str(site.output / "feeds.opml")).getroot()
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.findtext("head/title")
    outlines = [o for o in root.iter("outline") if o.get("xmlUrl")]
    for outline in outlines:
        assert outline.get("type") == "rss" and outline.get("text"), outline.attrib
    urls = [o.get("xmlUrl") for o in outlines]
    assert len(urls) == len(set(urls))
    assert set(urls) == {_url_of(f"{f}/index.xml" if f else "index.xml") for f in site.folders}


def test_front_page_links_every_feed_without_javascript(site: Published) -> None:
    page = (site.output / "index.html").read_bytes()
    doc = lxml.html.document_fromstring(page)
    assert not doc.xpath("//script"), "index.html must work without JavaScript"
    for el in doc.iter():
        if isinstance(el.tag, str):
            assert not [a for a in el.attrib if a.lower().startswith("on")], el.attrib
            assert not (el.get("href") or "").lower().startswith("javascript:")
    alternates = {(link.get("type"), link.get("href"))
                  for link in doc.xpath("//head/link[@rel='alternate']")}
    assert alternates == {("application/rss+xml", "index.xml"),
                          ("application/atom+xml", "atom.xml"),
                          ("application/feed+json", "feed.json")}
    hrefs = {urljoin(BASE, a.get("href")) for a in doc.xpath("//a[@href]")}
    for folder in site.folders:
        for name in FEED_FILES:
            url = _url_of(f"{folder}/{name}" if folder else name)
            assert url in hrefs, f"index.html does not link {url}"
    assert urljoin(BASE, "feeds.opml") in hrefs
