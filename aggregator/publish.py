"""Publish the store as feeds: RSS 2.0 and Atom 1.0 (feedgen) and JSON Feed 1.1.

    sync     store files whose (mtime, size) changed are parsed (and cached in the
             index); their feed memberships (site-wide, tags, categories, sources)
             are kept in the index too, so a change regroups only the feeds it touches
    group    per taxonomy, terms -> folders (Hugo's slugs); a feed = its spellings
    decide   a feed's signature = its newest keep_items (path, content hash) + settings;
             unchanged signature and files present -> nothing to do
    build    pure: FeedSpec + items -> bytes of index.xml, atom.xml, feed.json
    write    only bytes that differ, atomically (same bytes keep their mtime and ETag)

A feed's build date is its newest item's date, never the clock, so publishing an
unchanged store is a no-op and readers see no phantom updates.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import logging
import os
import re
import shutil
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from aggregator import __version__
from aggregator.content import is_web_url, markdown_to_html
from aggregator.errors import PublishError, StoreError
from aggregator.model import Config, FeedSpec, Item
from aggregator.slug import assign_slugs, term_slug, url_segment
from aggregator.store import file_hash, read_item, sweep_temp_files, write_atomic
from aggregator.workers import worker_pool
from aggregator.workspace import Workspace

log = logging.getLogger("aggregator.publish")
FEED_FILES = ("index.xml", "atom.xml", "feed.json")
GENERATOR = f"aggregator {__version__}"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OUTPUT_TMP = ".aggregator-tmp"
# Characters XML 1.0 cannot hold. A JSON Feed or a hand-edited store file can carry
# them (a title with U+0007); lxml then refuses the whole feed, so they are dropped.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """text without the characters XML 1.0 forbids (control characters, U+FFFE...)."""
    return _XML_INVALID.sub("", text) if text else text


def _xml_safe_item(item: Item) -> Item:
    def opt(value: str | None) -> str | None:
        return xml_safe(value) if value else value

    return replace(item, title=xml_safe(item.title), summary=xml_safe(item.summary),
                   author=opt(item.author), link=opt(item.link), guid=opt(item.guid),
                   thumbnail=opt(item.thumbnail),
                   categories=tuple(t for t in map(xml_safe, item.categories) if t),
                   tags=tuple(t for t in map(xml_safe, item.tags) if t))


@dataclass(frozen=True)
class Entry:
    """A store item as the publisher needs it (no body: its HTML is fetched on demand)."""

    path: str
    item: Item
    digest: str  # hash of the file's bytes: a changed file changes every feed holding it

    @cached_property  # sorted by often: every feed an entry is in
    def sort_key(self) -> tuple[float, str]:
        return (-self.item.date.timestamp(), self.path)


@dataclass(frozen=True)
class Member:
    """A feed's item as its signature and its dates need it (the item's fragments hold
    the rest): read from the cache without decoding the whole item."""

    path: str
    digest: str
    source: str | None
    date: datetime
    lastmod: datetime | None

    @staticmethod
    def of(entry: Entry) -> Member:
        return Member(entry.path, entry.digest, entry.item.source, entry.item.date,
                      entry.item.lastmod)


@dataclass
class PublishResult:
    feeds: int = 0
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    items: int = 0
    broken: list[StoreError] = field(default_factory=list)
    changed_feeds: list[str] = field(default_factory=list)
    changed_urls: list[str] = field(default_factory=list)  # topics to ping a WebSub hub for
    failed: list[str] = field(default_factory=list)  # feeds that could not be built
    changed_paths: list[str] = field(default_factory=list)  # written or removed, relative


# -- load --------------------------------------------------------------------------------------
def _item_to_json(item: Item) -> str:
    data = {
        "title": item.title, "date": item.date.isoformat(), "summary": item.summary,
        "categories": item.categories, "lang": item.lang, "tags": item.tags,
        "thumbnail": item.thumbnail, "author": item.author, "link": item.link,
        "source": item.source, "guid": item.guid, "sources": item.sources,
        "lastmod": item.lastmod.isoformat() if item.lastmod else None,
        "draft": bool(item.extra.get("draft")),
        "link_from_body": bool(item.extra.get("link_from_body")),
    }
    return json.dumps(data, ensure_ascii=False)


def _item_from_json(text: str) -> Item:
    d = json.loads(text)
    return Item(
        title=d["title"], date=datetime.fromisoformat(d["date"]), summary=d["summary"],
        categories=tuple(d["categories"]), lang=tuple(d["lang"]), tags=tuple(d["tags"]),
        thumbnail=d["thumbnail"], author=d["author"], link=d["link"], source=d["source"],
        guid=d["guid"], sources=tuple(d["sources"]),
        lastmod=datetime.fromisoformat(d["lastmod"]) if d["lastmod"] else None,
        extra={k: True for k in ("draft", "link_from_body") if d.get(k)},
    )


PARSE_BATCH = 250
# Entries parsed by sync_store are kept for the feeds that need them up to this many; on
# a first publish of a large store, holding every item cost 200 MB and the cache hands
# back what feeds need in a few µs per item anyway.
KEEP_PARSED_MAX = 5000
PARALLEL_PARSE_MIN = 400  # below this many changed files a process pool costs more than it saves

ParsedFile = tuple[str, str, str | None, str | None, str | None]  # rel, digest, meta, html, error


def parse_store_file(root: str, rel: str, timezone: str, base_url: str) -> ParsedFile:
    """Read, parse and render one store file (pure but for the read; runs in a worker)."""
    try:
        data = (Path(root) / rel).read_bytes()
    except OSError as e:
        return rel, "", None, None, f"cannot read: {e.strerror or e}"
    digest = file_hash(data)
    try:
        item = read_item(data.decode("utf-8"), ZoneInfo(timezone), rel)
    except UnicodeDecodeError as e:
        return rel, digest, None, None, f"not UTF-8 (byte {e.start})"
    except ValueError as e:
        return rel, digest, None, None, str(e)
    if not item.link and (original := trailing_link(item.body)):
        # A hand-written file (the seed post) names its original article on its last
        # line instead of in `link`: readers get something to open.
        item = replace(item, link=original, extra={**item.extra, "link_from_body": True})
    html = markdown_to_html(item.body, item.link if is_web_url(item.link) else base_url)
    return rel, digest, _item_to_json(item), html, None


SourceInfo = Mapping[str, tuple[str, str]]
FragmentRow = tuple[str, str, str, str, str]  # path, key, rss, atom, json


def fragment_key(source: str | None, base: str, source_info: SourceInfo) -> str:
    """What an item's fragments depend on besides the file (``source``: the item's): if
    it changes, rebuild them."""
    origin = source_info.get(source or "")
    return hashlib.sha1(json.dumps([__version__, base, origin], ensure_ascii=False)
                        .encode()).hexdigest()


def _fragment_rows(entries: list[Entry], html: Mapping[str, str], base: str,
                   source_info: SourceInfo) -> list[FragmentRow]:
    built = render_fragments(entries, html, base, source_info)
    return [(e.path, fragment_key(e.item.source, base, source_info), built[e.path].rss,
             built[e.path].atom, built[e.path].json) for e in entries if e.path in built]


def _process_batch(args: tuple[str, list[str], str, str, dict[str, tuple[str, str]]]
                   ) -> tuple[list[ParsedFile], list[FragmentRow]]:
    """Worker: parse files and build their feed fragments (both CPU-bound)."""
    root, rels, timezone, base_url, source_info = args
    parsed = [parse_store_file(root, rel, timezone, base_url) for rel in rels]
    good = [(Entry(rel, _item_from_json(meta), digest), html or "")
            for rel, digest, meta, html, error in parsed if meta and not error]
    rows = _fragment_rows([e for e, _ in good], {e.path: h for e, h in good}, base_url,
                          source_info) if good else []
    return parsed, rows


def _render_batch(args: tuple[list[tuple[str, str, str, str]], str, dict[str, tuple[str, str]]]
                  ) -> list[FragmentRow]:
    """Worker: rebuild fragments of cached files (a source's title changed...)."""
    rows, base_url, source_info = args
    entries = [Entry(rel, _item_from_json(meta), digest) for rel, meta, digest, _ in rows]
    return _fragment_rows(entries, {rel: html for rel, _, _, html in rows}, base_url, source_info)


def _pool_map(func: Any, batches: list[Any]) -> Iterator[Any]:
    """map() over batches, on every core when there are several batches."""
    workers = min(os.cpu_count() or 1, 4, len(batches))
    if workers < 2:
        yield from map(func, batches)
        return
    # Executor.map would submit every batch at once and hold every result the caller has
    # not taken yet (the HTML and fragments of a whole store): keep a small window.
    with worker_pool(workers) as pool:
        window: deque[Future[Any]] = deque()
        todo = iter(batches)
        for batch in todo:
            window.append(pool.submit(func, batch))
            if len(window) >= 2 * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.submit(func, nxt))
            yield result


MemberRow = tuple[str, str, float, str, int]  # kind, term, -timestamp, path, pos


def member_rows(entry: Entry, listed: Sequence[str]) -> list[MemberRow]:
    """Pure: the feeds an entry is in, as rows of the index's members table. ``listed``:
    the sources whose feeds list it besides those the file names."""
    nts, path = entry.sort_key[0], entry.path
    rows: list[MemberRow] = [("all", "", nts, path, 0)]
    for kind, terms in (("tag", entry.item.tags), ("category", entry.item.categories),
                        ("source", _sources_of(entry, listed))):
        rows.extend((kind, term, nts, path, pos) for pos, term in enumerate(terms))
    return rows


@dataclass
class StoreSync:
    """What sync_store found: the feeds whose members changed, and the entries it read."""

    touched: set[tuple[str, str]] = field(default_factory=set)  # (kind, term)
    entries: dict[str, Entry] = field(default_factory=dict)
    changed: int = 0


def sync_store(ws: Workspace, source_info: SourceInfo,
               scanned: list[tuple[str, os.stat_result]]) -> StoreSync:
    """Bring the index's caches up to ``scanned`` (store.scan()): parse the files whose
    (mtime, size) changed and build their feed fragments on the way (in worker processes
    when there are many), forget removed files, and update the feed memberships of both
    and of files another source started or stopped listing."""
    index = ws.index
    known = index.file_stats()
    stats = dict(scanned)
    changed = [rel for rel, st in scanned if known.get(rel) != (st.st_mtime_ns, st.st_size)]
    removed = [p for p in known if p not in stats]
    dirty = set(index.dirty_listings()).difference(changed)
    sync = StoreSync(changed=len(changed) + len(removed))
    # Before anything changes: the feeds these files were in (they may leave them).
    sync.touched = index.member_terms([*changed, *removed, *dirty]) if known else set()

    def add(entries: list[Entry], paths: list[str]) -> None:
        listed = index.listed_by(paths)
        rows = [r for e in entries for r in member_rows(e, listed.get(e.path, ()))]
        index.replace_members(paths, rows)
        sync.touched.update((kind, term) for kind, term, *_ in rows)
        if len(changed) <= KEEP_PARSED_MAX:
            sync.entries.update((e.path, e) for e in entries)

    root, tz, base = str(ws.store.root), ws.config.site.timezone, ws.config.site.base_url
    size = PARSE_BATCH if len(changed) >= PARALLEL_PARSE_MIN else max(len(changed), 1)
    batches = [(root, changed[i:i + size], tz, base, dict(source_info))
               for i in range(0, len(changed), size)]
    for parsed, rows in _pool_map(_process_batch, batches):
        fresh, entries = [], []
        for rel, digest, meta, html, error in parsed:
            st = stats[rel]
            fresh.append((rel, st.st_mtime_ns, st.st_size, digest, meta, html, error))
            if meta and not error:
                item = _item_from_json(meta)
                if not item.extra.get("draft"):
                    entries.append(Entry(rel, item, digest))
        index.save_files(fresh, [])  # as we go: memory stays bounded
        index.save_fragments(rows)
        add(entries, [r[0] for r in parsed])
    if removed:
        index.save_files([], removed)
        index.save_fragments([], removed)
        index.replace_members(removed, [])
    if dirty:  # listed by another source now (or no longer): its source feeds change
        add([e for e in _decode(index.file_entries(dirty)) if not e.item.extra.get("draft")],
            sorted(dirty))
    return sync


def _decode(rows: Iterable[tuple[str, str, str | None]]) -> Iterator[Entry]:
    for path, digest, meta in rows:
        if meta:
            yield Entry(path, _item_from_json(meta), digest or "")


def refresh_fragments(ws: Workspace, members: Iterable[Member], source_info: SourceInfo
                      ) -> set[str]:
    """Rebuild the fragments that are missing or were built with other settings; the
    paths of items that cannot be built at all come back."""
    members = list(members)
    base = ws.config.site.base_url
    keys = ws.index.fragment_keys([m.path for m in members])
    wanted: dict[str | None, str] = {}  # per source: thousands of members, a few sources

    def key_of(m: Member) -> str:
        if m.source not in wanted:
            wanted[m.source] = fragment_key(m.source, base, source_info)
        return wanted[m.source]

    stale = [m for m in members if keys.get(m.path) != key_of(m)]
    for start in range(0, len(stale), 4000):  # bounded: the HTML of 4,000 items at a time
        chunk = list(_decode(ws.index.file_entries([m.path for m in stale[start:start + 4000]])))
        html = ws.index.rendered_html([e.path for e in chunk])
        rows = [(e.path, _item_to_json(e.item), e.digest, html.get(e.path, "")) for e in chunk]
        batches = [(rows[i:i + PARSE_BATCH], base, dict(source_info))
                   for i in range(0, len(rows), PARSE_BATCH)]
        for built in _pool_map(_render_batch, batches):
            ws.index.save_fragments(built)
    keys = ws.index.fragment_keys([m.path for m in stale])
    return {m.path for m in stale if keys.get(m.path) != key_of(m)}


_TRAILING_LINK = re.compile(r"\[[^\]\n]*\]\(<?(https?://[^\s)>]+)>?\)\s*$")


def trailing_link(body: str) -> str | None:
    """The URL of a Markdown link that ends the body, as the seed convention has it."""
    lines = body.rstrip().splitlines()
    match = _TRAILING_LINK.search(lines[-1]) if lines else None
    return match.group(1) if match and is_web_url(match.group(1)) else None


# -- group -------------------------------------------------------------------------------------
def _sources_of(entry: Entry, listed: Sequence[str]) -> list[str]:
    out = list(entry.item.all_sources)
    for s in listed:
        if s not in out:
            out.append(s)
    return out


Group = tuple[str, str]  # (kind, slug): one feed


def group_terms(terms: Iterable[tuple[str, str]], configured: Iterable[str],
                previous: Mapping[str, Mapping[str, str]] | None = None
                ) -> tuple[dict[str, dict[str, str]], dict[Group, list[str]]]:
    """Pure: every (kind, term) of the store -> the folder of each term per taxonomy, and
    each feed's spellings. Folders are assigned per taxonomy over all its terms at once,
    so a derived slug never lands in the folder of another term (slug.assign_slugs); a
    source has a feed only while it is configured. ``previous``: the folders this code
    assigned last time; a taxonomy with the same terms keeps them without recomputing
    (Hugo's slug of 2,000 tags, 0.04 s of a publish)."""
    by_kind: dict[str, set[str]] = defaultdict(set)
    for kind, term in terms:
        by_kind[kind].add(term)
    by_kind["source"] &= set(configured)
    previous = previous or {}

    def folders(kind: str) -> dict[str, str]:
        before = previous.get(kind)
        if before is not None and before.keys() == by_kind[kind]:
            return dict(before)
        if kind == "source":
            return {t: term_slug(t) for t in by_kind[kind]}
        return assign_slugs(by_kind[kind])

    slugs = {kind: folders(kind) for kind in ("tag", "category", "source")}
    groups: dict[Group, list[str]] = defaultdict(list)
    groups[("all", "")] = [""]  # the site-wide feed exists even with no items
    for kind, mapping in slugs.items():
        for term, slug in mapping.items():
            groups[(kind, slug)].append(term)
    return slugs, {g: sorted(spellings) for g, spellings in groups.items()}


def feed_spec(config: Config, kind: str, slug: str, name: str,
              source_titles: Mapping[str, str]) -> FeedSpec:
    site = config.site
    if kind == "all":
        title = site.title
    elif kind == "source":
        title = f"{site.title} · {source_titles.get(name) or name}"
    else:
        title = f"{site.title} · {name}"
    return FeedSpec(kind=kind, term=xml_safe(name), slug=slug,  # type: ignore[arg-type]
                    title=xml_safe(title))


def _feed_key(kind: str, slug: str) -> str:
    return FeedSpec(kind=kind, term="", slug=slug, title="").directory or "/"  # type: ignore[arg-type]


# -- build (pure) --------------------------------------------------------------------------------
def feed_url(site_base: str, spec: FeedSpec, name: str) -> str:
    if spec.kind == "all":
        return site_base + name
    folder = spec.directory.split("/")[0]
    return f"{site_base}{folder}/{url_segment(spec.slug)}/{name}"


def _atom_id(guid: str) -> str:
    """Atom ids must be IRIs; a guid that is not one is wrapped, reversibly."""
    scheme = urlsplit(guid).scheme
    if scheme and guid.isprintable() and " " not in guid:
        return guid
    return "urn:x-aggregator-guid:" + quote(guid, safe="")


def _tag_uri(base_url: str, entry: Entry) -> str:
    host = urlsplit(base_url).hostname or "localhost"
    return f"tag:{host},{entry.item.date.strftime('%Y-%m-%d')}:{quote(entry.path)}"


def _guid(base_url: str, entry: Entry) -> str:
    """The item's own guid; else its link; else a tag: URI of its store path. A link read
    from the body's last line is not used: a person may change it, a guid must not change."""
    item = entry.item
    link = None if item.extra.get("link_from_body") else item.link
    return item.guid or link or _tag_uri(base_url, entry)


class _AggregatorFeedExt(BaseExtension):
    """Feed-level additions feedgen lacks: WebSub hub link in RSS."""

    def __init__(self) -> None:
        self.hub: str | None = None

    def extend_ns(self) -> dict[str, str]:
        return {}

    def extend_rss(self, feed: etree._Element) -> etree._Element:
        if self.hub:
            channel = feed[0]
            etree.SubElement(channel, "{http://www.w3.org/2005/Atom}link", href=self.hub,
                             rel="hub")
        return feed


class _AggregatorEntryExt(BaseEntryExtension):
    """Entry-level: the Atom id (an IRI) may differ from the RSS guid we keep verbatim."""

    def __init__(self) -> None:
        self.atom_id: str | None = None
        self.source_id: str | None = None

    def extend_atom(self, entry: etree._Element) -> etree._Element:
        # feedgen writes Atom elements unqualified under a default namespace.
        if self.atom_id:
            node = entry.find("id")
            if node is not None:
                node.text = self.atom_id
        if self.source_id:
            source = entry.find("source")
            if source is not None:
                ident = etree.Element("id")
                ident.text = self.source_id
                source.insert(0, ident)
        return entry


@dataclass(frozen=True)
class Fragments:
    """One item as it appears in every feed that holds it: built once per publish."""

    rss: str  # the <item> element, pretty-printed, newline-terminated
    atom: str  # the <entry> element
    json: str  # the JSON Feed item object, indented for the "items" array


def _new_generator() -> FeedGenerator:
    fg = FeedGenerator()
    fg.load_extension("media", atom=True, rss=True)
    fg.load_extension("dc", atom=False, rss=True)
    fg.register_extension("aggregator", _AggregatorFeedExt, _AggregatorEntryExt, atom=True,
                          rss=True)
    return fg


def _add_entry(fg: FeedGenerator, entry: Entry, html: str, base: str,
               source_info: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """Add one item to a generator; its JSON Feed object is returned."""
    item = _xml_safe_item(entry.item)
    guid = _guid(base, replace(entry, item=item))
    body = xml_safe(html)
    if not body and not is_web_url(item.link):
        # Atom requires an alternate link or content (feedgen refuses the whole feed
        # otherwise): an entry with no link whose HTML was all sanitized away (it
        # was only a <script>) carries its summary or title as content.
        body = f"<p>{html_lib.escape(item.summary or item.title, quote=False)}</p>"
    fe = fg.add_entry(order="append")
    fe.guid(guid, permalink=bool(item.link) and guid == item.link and is_web_url(guid))
    fe.aggregator.atom_id = _atom_id(guid)
    # Both formats require a title; one of only control characters is empty by now.
    fe.title(item.title or item.summary[:80] or Path(entry.path).stem)
    if item.link and is_web_url(item.link):
        fe.link(href=item.link, rel="alternate")
    if item.summary:
        fe.summary(item.summary)  # Atom: type text
        # RSS readers take <description> as HTML: the plain-text summary is escaped,
        # or a summary saying "<script>..." (a hand-edited file) would run as markup.
        fe.description(html_lib.escape(item.summary, quote=False))
    if body:
        fe.content(body, type="html")
    fe.published(item.date)
    fe.updated(item.lastmod or item.date)
    for term in dict.fromkeys((*item.categories, *item.tags)):
        fe.category(term=term)
    if item.author:
        fe.author(name=item.author)
        fe.dc.dc_creator(item.author)
    if item.thumbnail and is_web_url(item.thumbnail):
        fe.media.thumbnail(url=item.thumbnail, group=None)  # no one-child media:group
    origin = item.source
    if origin and origin in source_info:
        title, url = source_info[origin]
        fe.source(url=xml_safe(url), title=xml_safe(title))
        fe.aggregator.source_id = xml_safe(url)
    return _json_item(item, guid, body)


_RSS_ITEM = re.compile(r"^    <item>\n.*?^    </item>\n", re.S | re.M)
_ATOM_ENTRY = re.compile(r"^  <entry>\n.*?^  </entry>\n", re.S | re.M)
FRAGMENT_BATCH = 250


def render_fragments(entries: list[Entry], html: Mapping[str, str], base: str,
                     source_info: Mapping[str, tuple[str, str]]) -> dict[str, Fragments]:
    """Pure: each item's <item>, <entry> and JSON object, by store path.

    An item sits in five feeds on average (all, its tags, category and source);
    building it once with feedgen and splicing it into each feed is what makes a
    full publish of a large store fast. Items are built in batches in one throw-away
    feed and cut out of its pretty-printed text: content is escaped, so no line of it
    can look like the element boundaries.
    """
    out: dict[str, Fragments] = {}
    for start in range(0, len(entries), FRAGMENT_BATCH):
        batch = entries[start:start + FRAGMENT_BATCH]
        fg = _new_generator()
        fg.id(base)
        fg.title("fragments")
        fg.link(href=base, rel="alternate")
        fg.description("fragments")
        fg.updated(EPOCH)
        try:
            objects = [_add_entry(fg, e, html.get(e.path, ""), base, source_info)
                       for e in batch]
            rss = fg.rss_str(pretty=True, encoding="UTF-8").decode("utf-8")
            atom = fg.atom_str(pretty=True, encoding="UTF-8").decode("utf-8")
        except (ValueError, TypeError) as e:  # feedgen or lxml refused an item
            if len(batch) == 1:
                log.error("%s: cannot be published: %s", batch[0].path, e)
                continue  # left out; publish reports it as a broken file
            for one in batch:  # find the item at fault; build the others
                out.update(render_fragments([one], html, base, source_info))
            continue
        rss_items = _RSS_ITEM.findall(rss)
        atom_entries = _ATOM_ENTRY.findall(atom)
        if len(rss_items) != len(batch) or len(atom_entries) != len(batch):
            raise PublishError("cannot split the built items", feed="/")
        for entry, r, a, obj in zip(batch, rss_items, atom_entries, objects, strict=True):
            text = json.dumps(obj, ensure_ascii=False, indent=2)
            out[entry.path] = Fragments(r, a, "    " + text.replace("\n", "\n    "))
    return out


def build_feeds(config: Config, spec: FeedSpec, entries: list[Member],
                fragments: Mapping[str, tuple[bytes, bytes, bytes]]) -> dict[str, bytes]:
    """Pure: the three files of one feed, its items spliced in from their fragments
    (UTF-8 RSS, Atom and JSON Feed: as bytes from the index to the file, a few hundred
    KB per feed are never decoded and encoded again)."""
    site = config.site
    base = site.base_url
    rss_url, atom_url, json_url = (feed_url(base, spec, n) for n in FEED_FILES)
    home = base if spec.kind == "all" else feed_url(base, spec, "")
    updated = max((e.lastmod or e.date for e in entries), default=EPOCH)
    updated = max(updated, max((e.date for e in entries), default=EPOCH))

    fg = _new_generator()
    fg.id(atom_url)
    fg.title(xml_safe(spec.title))
    fg.subtitle(xml_safe(site.description) or xml_safe(spec.title))
    fg.author(name=xml_safe(site.title))  # Atom wants an author; entries inherit it
    if site.websub_hub:
        fg.aggregator.hub = site.websub_hub
    fg.language(site.language)
    fg.generator("aggregator", version=__version__)
    fg.updated(updated)
    fg.lastBuildDate(updated)
    fg.ttl(max(1, int(config.defaults.interval.total_seconds() // 60)))

    def links(self_url: str) -> list[dict[str, str]]:
        out = [{"href": self_url, "rel": "self"}]
        if site.websub_hub:
            out.append({"href": site.websub_hub, "rel": "hub"})
        return out + [{"href": home, "rel": "alternate"}]  # feedgen's RSS <link> is the last

    try:  # one generator, two self links: the RSS and the Atom file each name themselves
        fg.link(links(rss_url), replace=True)
        rss_head = fg.rss_str(pretty=True, encoding="UTF-8", xml_declaration=True).decode()
        fg.link(links(atom_url), replace=True)
        atom_head = fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True).decode()
    except (ValueError, TypeError) as e:
        raise PublishError(f"cannot build: {e}", feed=spec.directory or "/") from e
    parts = [fragments[e.path] for e in entries]
    rss = _splice(rss_head.encode(), b"  </channel>\n</rss>", b"".join(p[0] for p in parts))
    atom = _splice(atom_head.encode(), b"</feed>", b"".join(p[1] for p in parts))
    json_feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": spec.title,
        "home_page_url": home,
        "feed_url": json_url,
        "description": site.description or spec.title,
        "language": site.language,
    }
    if site.websub_hub:
        json_feed["hubs"] = [{"type": "WebSub", "url": site.websub_hub}]
    head = json.dumps(json_feed, ensure_ascii=False, indent=2)[:-2]  # drop the closing "\n}"
    items = b",\n".join(p[2] for p in parts)
    json_bytes = head.encode() + (b',\n  "items": [\n' + items + b"\n  ]\n}\n" if parts
                                  else b',\n  "items": []\n}\n')
    return {"index.xml": rss, "atom.xml": atom, "feed.json": json_bytes}


def _splice(head: bytes, closing: bytes, items: bytes) -> bytes:
    at = head.rfind(closing)
    if at < 0:
        raise PublishError(f"unexpected feed text: no {closing!r}", feed="/")
    return head[:at] + items + head[at:]


def _json_item(item: Item, guid: str, body: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": guid}
    if item.link and is_web_url(item.link):
        out["url"] = item.link
    out["title"] = item.title
    out["content_html"] = body
    if item.summary:
        out["summary"] = item.summary
    if item.thumbnail and is_web_url(item.thumbnail):
        out["image"] = item.thumbnail
    out["date_published"] = item.date.isoformat()
    if item.lastmod:
        out["date_modified"] = item.lastmod.isoformat()
    if item.author:
        out["authors"] = [{"name": item.author}]
    tags = list(dict.fromkeys((*item.categories, *item.tags)))
    if tags:
        out["tags"] = tags
    if item.lang:
        out["language"] = item.lang[0]
    return out


def signature(config: Config, spec: FeedSpec, entries: list[Member],
              source_info: Mapping[str, tuple[str, str]]) -> str:
    """Everything a feed's bytes depend on; equal signatures mean equal files."""
    h = hashlib.sha256()
    site = config.site
    h.update(json.dumps([__version__, site.title, site.description, site.base_url,
                         site.language, site.websub_hub, spec.title, spec.kind, spec.slug,
                         int(config.defaults.interval.total_seconds())],
                        ensure_ascii=False).encode())
    for e in entries:
        h.update(f"\x00{e.path}\x00{e.digest}".encode("utf-8", "surrogatepass"))
        if e.source in source_info:
            h.update(_info_bytes(source_info[e.source]))
    return h.hexdigest()


@lru_cache(maxsize=4096)
def _info_bytes(info: tuple[str, str]) -> bytes:
    return json.dumps(info, ensure_ascii=False).encode()


# -- write -------------------------------------------------------------------------------------
# Folder -> its real path, for one publish (publish() starts it afresh): the feeds of a
# publish share a few hundred folders, and resolving every file's path component by
# component was a tenth of an incremental publish.
_real_folders: dict[str, str] = {}


def _real(folder: str) -> str:
    real = _real_folders.get(folder)
    if real is None:
        real = _real_folders[folder] = os.path.realpath(folder)
    return real


def _safe_output_path(output: Path, relative: str, *, resolve_last: bool = True) -> Path:
    """The one way into the output directory; refuses anything that would leave it.

    resolve_last=False checks the folder only: a file is replaced by a rename, which
    replaces a symlink there rather than writing through it."""
    parts = [p for p in relative.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise PublishError("unsafe output path refused", feed=relative)
    target = output.joinpath(*parts)
    root = _real(os.fspath(output))
    real = os.path.realpath(target) if resolve_last else _real(os.path.dirname(target))
    if os.path.commonpath([root, real]) != root:
        raise PublishError("output path leaves the output directory", feed=relative)
    return target


def write_if_changed(output: Path, relative: str, data: bytes) -> bool:
    target = _safe_output_path(output, relative, resolve_last=False)
    try:
        # Sizes first: a rebuilt feed nearly always changed size, and reading the old
        # one back cost a tenth of an incremental publish (115 MB for 334 feeds).
        # O_NOFOLLOW: a symlink planted in place of a feed is not read through (it is
        # replaced below).
        if os.stat(target, follow_symlinks=False).st_size == len(data):
            with open(os.open(target, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                if f.read() == data:
                    return False
    except OSError:  # missing, unreadable or a symlink: written below
        pass
    try:
        write_atomic(target, data, output / OUTPUT_TMP)
    except StoreError as e:
        raise PublishError(e.detail, feed=relative) from e
    return True


def source_info_of(ws: Workspace) -> dict[str, tuple[str, str]]:
    """Per source id: (title, the URL that names it in <source>)."""
    titles = ws.index.source_titles()
    base = ws.config.site.base_url
    info = {}
    for s in ws.config.sources:
        title = s.title or titles.get(s.id) or s.id
        url = s.url if is_web_url(s.url) else f"{base}sources/{url_segment(term_slug(s.id))}/index.xml"
        info[s.id] = (title, url)
    return info


FeedRecord = tuple[str, str, str, str, int]  # signature, kind, slug, name, count


def publish(ws: Workspace, *, only_if_changed: bool = True) -> PublishResult:
    """Write every feed whose items changed, plus index.html and feeds.opml."""
    from aggregator.frontpage import render_index_html, render_opml

    config = ws.config
    index = ws.index
    output = config.output_dir
    result = PublishResult()
    with ws.write_lock.held():
        _real_folders.clear()
        lap = _Laps()
        output.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(output / OUTPUT_TMP)
        # Cached parses hold dates read in site.timezone and URLs made absolute against
        # site.base_url: when either changes, the caches are rebuilt.
        settings = json.dumps([config.site.timezone, config.site.base_url])
        if index.meta("publish_settings") != settings:
            index.clear_publish_caches()
            index.set_meta("publish_settings", settings)
        info = source_info_of(ws)
        # Nothing changed since the last publish (no store file, no setting, every output
        # file still there): nothing to read, group or compare.
        lap("settings")
        scanned = sorted(ws.store.scan())
        fingerprint = _store_fingerprint(ws, info, scanned)
        records = index.feed_records()
        if only_if_changed and index.meta("publish_fingerprint") == fingerprint:
            done = json.loads(index.meta("publish_summary") or "{}")
            if done and _outputs_present(output, records):
                result.feeds, result.items = done["feeds"], done["items"]
                result.unchanged = done["files"]
                return result
        # Only the feeds a change touched are regrouped, unless what every feed depends
        # on changed (or the last publish did not finish: then what it touched is lost).
        feed_settings = json.dumps([__version__, repr(config.site), config.defaults.keep_items,
                                    config.defaults.interval.total_seconds(),
                                    sorted(info.items())], ensure_ascii=False)
        whole = not only_if_changed or index.meta("publish_state") != feed_settings
        index.set_meta("publish_state", "")
        lap("scan")
        sync = sync_store(ws, info, scanned)
        result.broken = [StoreError(error, path=path) for path, error in index.broken_files()]
        lap("sync")
        old_slugs = json.loads(index.meta("publish_slugs") or "{}")
        # The last folders are reused only when the settings (the version among them)
        # are the same: another version may slug differently.
        slugs, groups = group_terms(index.distinct_terms(), info,
                                    None if whole else old_slugs)
        titles = {k: v[0] for k, v in info.items()}
        missing = {key for key in records if not _feed_present(output, key)}
        todo = feeds_to_revisit(whole, groups, records, missing, sync.touched, slugs,
                                old_slugs)

        keep = config.defaults.keep_items
        new_records: dict[str, FeedRecord] = {}
        stale: list[str] = []
        planned: list[tuple[str, FeedSpec, list[str], int]] = []
        for kind, slug in sorted(todo):
            key = _feed_key(kind, slug)
            spellings = groups.get((kind, slug))
            if not spellings:
                if key in records:
                    stale.append(key)
                continue
            name = "" if kind == "all" else index.feed_name(kind, spellings)
            spec = feed_spec(config, kind, slug, name, titles)
            planned.append((key, spec, index.feed_paths(kind, spellings, keep),
                            index.feed_count(kind, spellings)))
        lap("plan")
        entries = _members(ws, sync.entries, {p for *_, paths, _ in planned for p in paths})
        rebuild: list[tuple[FeedSpec, list[Member]]] = []
        for key, spec, paths, count in planned:
            newest = [entries[p] for p in paths if p in entries]
            sig = signature(config, spec, newest, info)
            new_records[key] = (sig, spec.kind, spec.slug, spec.term, count)
            old = records.get(key)
            if only_if_changed and old and old[0] == sig and key not in missing:
                result.unchanged += len(FEED_FILES)
            else:
                rebuild.append((spec, newest))
        needed = {e.path: e for _, newest in rebuild for e in newest}
        lap("signatures")
        unbuildable = refresh_fragments(ws, needed.values(), info)
        for path in sorted(unbuildable):
            result.broken.append(StoreError("cannot be published (see the log)", path=path))
        for spec, newest in rebuild:
            newest = [e for e in newest if e.path not in unbuildable]
            key = spec.directory or "/"
            stored = index.fragments([e.path for e in newest])
            try:
                fragments = {p: stored[p] for p in (e.path for e in newest)}
                files = build_feeds(config, spec, newest, fragments)
            except (PublishError, KeyError) as e:  # one bad feed must not stop the others
                log.error("%s: cannot build: %s", key, e)
                result.failed.append(f"{key}: {e}")
                new_records[key] = ("failed", *new_records[key][1:])  # retried next time
                continue
            changed = False
            for name, data in files.items():
                rel = f"{spec.directory}/{name}" if spec.directory else name
                if write_if_changed(output, rel, data):
                    result.written += 1
                    result.changed_paths.append(rel)
                    changed = True
                else:
                    result.unchanged += 1
            if changed:
                result.changed_feeds.append(key)
                result.changed_urls.extend(feed_url(config.site.base_url, spec, n)
                                           for n in FEED_FILES)
        lap("build+write")
        for key in stale:
            gone = _remove_feed(output, key)
            result.removed += len(gone)
            result.changed_paths.extend(gone)
        index.save_feed_records(new_records, stale)
        index.set_meta("publish_slugs", json.dumps(slugs, ensure_ascii=False))

        # The front page and OPML list every feed: those not looked at are as recorded.
        counts: dict[FeedSpec, int] = {}
        for key, (_, kind, slug, name, count) in {**records, **new_records}.items():
            if key not in stale:
                counts[feed_spec(config, kind, slug, name, titles)] = count
        result.feeds = len(counts)
        result.items = next(n for s, n in counts.items() if s.kind == "all")
        result.unchanged += (len(counts) - len(planned)) * len(FEED_FILES)  # not looked at
        latest_paths = index.feed_paths("all", [""], LATEST_ON_PAGE)
        latest = _entries(ws, sync.entries, set(latest_paths))
        lap("records")
        page = render_index_html(config, counts, [latest[p] for p in latest_paths if p in latest],
                                 slugs["tag"])
        if write_if_changed(output, "index.html", page):
            result.written += 1
            result.changed_paths.append("index.html")
        else:
            result.unchanged += 1
        # The OPML lists the feeds, not their items: most publishes leave it as it was.
        opml_key = hashlib.sha256(json.dumps(
            [feed_settings, sorted((s.kind, s.slug, s.term, s.title) for s in counts)],
            ensure_ascii=False).encode()).hexdigest()
        if (index.meta("publish_opml") == opml_key
                and os.path.isfile(os.path.join(output, "feeds.opml"))):
            result.unchanged += 1
        elif write_if_changed(output, "feeds.opml", render_opml(config, counts)):
            result.written += 1
            result.changed_paths.append("feeds.opml")
        else:
            result.unchanged += 1
        index.set_meta("publish_opml", opml_key)
        lap("front page")
        clean = not result.broken and not result.failed
        index.set_meta("publish_state", feed_settings)
        index.set_meta("publish_fingerprint", fingerprint if clean else "")
        index.set_meta("publish_summary", json.dumps({
            "feeds": result.feeds, "items": result.items,
            "files": len(counts) * len(FEED_FILES) + 2}))
        lap("saved")
        log.debug("publish: %d changed files, %d feeds looked at, %d rebuilt; %s",
                  sync.changed, len(planned), len(rebuild), lap.summary())
    if config.site.websub_hub and result.changed_urls:
        from aggregator.websub import ping_hub

        ping_hub(config.site.websub_hub, result.changed_urls)
    return result


LATEST_ON_PAGE = 30


def feeds_to_revisit(whole: bool, groups: Mapping[Group, list[str]],
                     records: Mapping[str, FeedRecord], missing: set[str],
                     touched: Iterable[tuple[str, str]], slugs: Mapping[str, Mapping[str, str]],
                     old_slugs: Mapping[str, Mapping[str, str]]) -> set[Group]:
    """Pure: the feeds a publish looks at again. All of them when ``whole``; else those
    holding a changed file (``touched``), those whose terms moved folder or left, and
    those that failed or lost a file (``missing``) last time."""
    if whole:
        return set(groups) | {(kind, slug) for _, kind, slug, _, _ in records.values()}
    todo = {(kind, slug) for key, (sig, kind, slug, _, _) in records.items()
            if sig == "failed" or key in missing}
    for kind, term in touched:
        if kind == "all":
            todo.add(("all", ""))
        elif term in slugs.get(kind, {}):  # a term that left or moved: below
            todo.add((kind, slugs[kind][term]))
    for kind in ("tag", "category", "source"):
        new, old = slugs.get(kind, {}), old_slugs.get(kind, {})
        for term in new.keys() | old.keys():
            if new.get(term) != old.get(term):
                todo.update((kind, m[term]) for m in (new, old) if term in m)
    return todo


class _Laps:
    """Where a publish spends its time, for the debug log (-vv)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self._laps.append((name, now - self._last))
        self._last = now

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.3f} s" for name, seconds in self._laps)


def _members(ws: Workspace, known: Mapping[str, Entry], paths: set[str]) -> dict[str, Member]:
    """The members of ``paths``: from what sync_store read, else from the cache."""
    out = {p: Member.of(known[p]) for p in paths if p in known}
    out.update((path, Member(path, digest or "", source, datetime.fromisoformat(date),
                             datetime.fromisoformat(lastmod) if lastmod else None))
               for path, digest, source, date, lastmod
               in ws.index.file_members(paths.difference(out)))
    return out


def _entries(ws: Workspace, known: Mapping[str, Entry], paths: set[str]) -> dict[str, Entry]:
    """The entries of ``paths``: those sync_store read, the others decoded from the cache."""
    out = {p: known[p] for p in paths if p in known}
    out.update((e.path, e) for e in _decode(ws.index.file_entries(paths.difference(out))))
    return out


_FEED_FILE_SET = frozenset(FEED_FILES)


def _feed_present(output: Path, key: str) -> bool:
    """All three files of a feed are there (one directory read, not three stats: a
    publish asks this of every feed, 4,500 of them in the bench's store)."""
    try:
        return _FEED_FILE_SET.issubset(os.listdir(os.path.join(output, key.strip("/"))))
    except OSError:
        return False


def _store_fingerprint(ws: Workspace, info: SourceInfo,
                       scanned: list[tuple[str, os.stat_result]]) -> str:
    """Everything a publish reads: each store file's (path, mtime, size) and the settings."""
    config = ws.config
    h = hashlib.sha256(json.dumps(
        [__version__, repr(config.site), config.defaults.keep_items,
         config.defaults.interval.total_seconds(), sorted(info.items())],
        ensure_ascii=False).encode())
    for rel, st in scanned:  # sorted
        h.update(f"{rel}\x00{st.st_mtime_ns}\x00{st.st_size}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _outputs_present(output: Path, records: Mapping[str, FeedRecord]) -> bool:
    if not records:
        return False
    return all(_feed_present(output, key) for key in records) and all(
        os.path.isfile(os.path.join(output, name)) for name in ("index.html", "feeds.opml"))


def _remove_feed(output: Path, key: str) -> list[str]:
    """Delete the files of a feed that no longer has items (a tag nobody uses now);
    the relative paths of those that were there."""
    if key == "/":
        return []
    folder = _safe_output_path(output, key)
    removed: list[str] = []
    for name in FEED_FILES:
        try:
            (folder / name).unlink()
            removed.append(f"{key.strip('/')}/{name}")
        except FileNotFoundError:
            pass
    try:
        folder.rmdir()
    except OSError:
        if folder.is_dir() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    return removed
