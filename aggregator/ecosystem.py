"""Living with other feed readers: `add` a site by URL, import and export OPML.

    add URL        fetch | is it a feed? else autodiscover on the HTML page
                   (<link rel=alternate>, then /feed, /rss.xml...) | parse | append
    import-opml    parse OPML safely | walk folders | dedupe | derive ids | append
    export-opml    Config -> OPML 2.0, one folder per first category

Both `add` and `import-opml` change feeds.yaml through one writer, which keeps
the user's file as it is (comments, order, quoting, layout) and only appends:
when `sources` is the last key, the new items are added as text at the end so
every existing byte stays; otherwise ruamel's round-trip dump does the insert.
The new text is validated in memory before it atomically replaces the file.

Exit codes through the CLI: ConfigError (bad arguments, a URL already
configured, a bad OPML file, feeds.yaml trouble) is 2; an unreachable URL or a
page without a readable feed is a plain AggregatorError, 1 — the command
could be right and the network or the site wrong.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import stat
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

from lxml import etree
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from aggregator.config import SOURCE_ID, parse_yaml, validate
from aggregator.dedupe import normalize_link
from aggregator.errors import AggregatorError, ConfigError, FetchError, ParseError
from aggregator.fetch import Fetcher
from aggregator.model import Config, FetchResult, HttpState, ParsedFeed, Source
from aggregator.parse import FeedLink, discover_feeds, parse_feed

log = logging.getLogger(__name__)

# Where sites commonly serve a feed without announcing it, tried in this order.
COMMON_FEED_PATHS = ("/feed", "/rss.xml", "/atom.xml", "/index.xml", "/feed.xml", "/rss")
MAX_OPML_BYTES = 10 * 1024 * 1024
MAX_ID_LENGTH = 40
# OPML outline types that are not subscriptions (a bookmark, an included OPML file...).
NON_FEED_TYPES = frozenset({"link", "include", "html", "redirect"})
# Letters NFKD does not take apart into ASCII plus marks.
_FOLD = str.maketrans({"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE",
                       "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ł": "l", "Ł": "L",
                       "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D", "ı": "i", "ħ": "h"})
# Path segments that say "this is a feed" and nothing about which one.
_FEED_WORDS = frozenset({"feed", "feeds", "rss", "rss2", "atom", "index", "xml", "json", "rdf",
                         "default", "all", "php", "asp", "aspx", "cgi", "html", "htm"})


# -- ids ----------------------------------------------------------------------------------
def ascii_slug(text: str, limit: int = MAX_ID_LENGTH) -> str:
    """'Ärzteblatt: News & Politik' -> 'aerzteblatt-news-politik'-like ASCII for ids.

    Accents are folded (NFKD, marks dropped), full-width forms normalized, and what
    has no ASCII form (Chinese...) dropped; cut at a hyphen so no word is halved.
    """
    folded = unicodedata.normalize("NFKD", text.translate(_FOLD))
    ascii_text = "".join(ch for ch in folded if not unicodedata.combining(ch))
    ascii_text = ascii_text.encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    if len(slug) > limit:
        cut = slug[:limit + 1].rfind("-")
        slug = slug[:cut] if cut > limit // 2 else slug[:limit]
    return slug.strip("-")


def url_slug(url: str, *, with_path: bool) -> str:
    """An id from a URL: the host without 'www.' ('www.example.cn' -> 'example-cn'),
    plus, if asked, the path segments that are not just 'feed', 'rss.xml'..."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        stem = Path(url2pathname(parts.path)).stem
        return ascii_slug(stem) or "feed"
    host = (parts.hostname or "").lower().rstrip(".")
    host = host.removeprefix("www.")
    words = [host]
    if with_path:
        for segment in parts.path.split("/"):
            words += [w for w in segment.split(".") if w and w.lower() not in _FEED_WORDS]
    return ascii_slug("-".join(words)) or "feed"


def derive_id(title: str | None, url: str, taken: Iterable[str]) -> str:
    """A new, unique source id: from the title when its ASCII form says enough, else the URL.

    A Chinese title ('腾讯新闻') folds to nothing and '36氪' to a bare number, so those
    use the host ('www.example.cn' -> 'example-cn'), or host and path when another
    source has the host already. No title at all: host and path, since the host
    alone does not tell two feeds of one site apart. Clashes get -2, -3...
    """
    used = set(taken)
    title = " ".join((title or "").split())
    slug = ascii_slug(title)
    letters = sum(ch.isalnum() for ch in slug)
    if re.search(r"[a-z]", slug) and letters * 2 >= len(title.replace(" ", "")):
        return unique_id(slug, used)
    if title:
        host = url_slug(url, with_path=False)
        if host not in used:
            return host
    return unique_id(url_slug(url, with_path=True), used)


def unique_id(base: str, taken: Iterable[str]) -> str:
    """base, else base-2, base-3... whichever is not taken yet."""
    used = set(taken)
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


# -- export -------------------------------------------------------------------------------
def export_opml(config: Config, titles: Mapping[str, str] | None = None) -> str:
    """OPML 2.0 of the configured sources, for another feed reader.

    Sources with categories of their own sit in a folder named after the first one;
    sources with only the default category (their id) sit at the top, so an import
    gives them back no categories. Order is feeds.yaml's and nothing depends on the
    clock, so exporting an unchanged config gives the same bytes.
    ``titles`` (source id -> the feed's own title, as the last poll saw it) fills in
    sources feeds.yaml gives no title; by default it is read from the store's index.
    With no title known, the id names the outline (an import takes it as the title).
    """
    if titles is None:
        titles = known_titles(config)
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = f"{config.site.title}: sources"
    ET.SubElement(head, "docs").text = "http://opml.org/spec2.opml"
    body = ET.SubElement(root, "body")
    folders: dict[str, ET.Element] = {}
    for source in config.sources:
        parent = body
        if source.categories and source.categories != (source.id,):
            name = source.categories[0]
            if name not in folders:
                folders[name] = ET.SubElement(body, "outline", text=name, title=name)
            parent = folders[name]
        title = source.title or titles.get(source.id)
        # OPML requires text; with no title known the id stands in, and title is left out.
        named = {"text": title, "title": title} if title else {"text": source.id}
        ET.SubElement(parent, "outline", type="rss", **named, xmlUrl=source.url)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def known_titles(config: Config) -> dict[str, str]:
    """Each source's feed title as its last poll saw it, read-only from the index.

    Export must work on a config that was never polled, and must not create the
    store, so a missing or unreadable index is simply no titles.
    """
    path = config.store_dir / ".aggregator" / "index.sqlite"
    if not path.is_file():
        return {}
    titles: dict[str, str] = {}
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            for source_id, state in db.execute("SELECT id, state FROM sources"):
                title = (json.loads(state) or {}).get("title")
                if isinstance(title, str) and title.strip():
                    titles[source_id] = title.strip()
        finally:
            db.close()
    except (sqlite3.Error, ValueError, AttributeError) as e:
        log.debug("no feed titles from %s: %s", path, e)
    return titles


# -- import -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpmlFeed:
    """One subscription outline of an OPML file, as the file gives it."""

    url: str  # the feed URL; for a skipped outline, whatever URL it has
    title: str  # "" when the outline has neither title nor text
    folder: str  # the innermost folder's title, "" at the top level
    skip: str = ""  # why it cannot become a source ("no feed URL (htmlUrl only)"...)


@dataclass
class ImportPlan:
    """What an import will do: the new source mappings and why the others are skipped."""

    added: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def import_opml(config: Config, file: Path) -> tuple[list[str], list[str]]:
    """Append the subscriptions of an OPML file to feeds.yaml.

    Returns (ids added, one line per outline skipped and why). Feeds already in
    feeds.yaml (compared as normalized links), repeated in the file, bookmarks
    (type="link") and outlines with only an htmlUrl are skipped, so importing the
    same file twice adds nothing the second time. feeds.yaml is left untouched
    when nothing is added or when the result would not load.
    """
    plan = plan_import(config, read_opml(file))
    if plan.added:
        append_sources(config.path, plan.added, note=f"imported from {file.name}")
    return [entry["id"] for entry in plan.added], plan.skipped


def read_opml(file: Path) -> list[OpmlFeed]:
    """Parse an OPML file without touching the network or expanding external entities.

    Returns its subscription outlines in file order, those that are not feeds
    (bookmarks, htmlUrl only...) with the reason; folders and notes are not returned.
    """
    try:
        with file.open("rb") as f:
            data = f.read(MAX_OPML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not an OPML file", file=file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=file) from e
    if len(data) > MAX_OPML_BYTES:
        raise ConfigError(f"too large for an OPML file (more than {MAX_OPML_BYTES} bytes)",
                          file=file)
    if not data.strip():
        raise ConfigError("not an OPML file: it is empty", file=file)
    # A subscription list from a stranger: no DTD, no entity expansion (billion laughs,
    # file:///etc/passwd), no network, and libxml2's default limits on depth and size.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                             load_dtd=False, dtd_validation=False, remove_comments=True,
                             remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        line = e.lineno if e.lineno and e.lineno > 0 else None
        message = re.sub(r",? line \d+, column \d+$", "", " ".join(str(e.msg or e).split()))
        raise ConfigError(f"not an OPML file: invalid XML: {message}", file=file,
                          line=line) from None
    if not isinstance(root.tag, str) or etree.QName(root).localname.lower() != "opml":
        name = etree.QName(root).localname if isinstance(root.tag, str) else "?"
        raise ConfigError(f"not an OPML file: the root element is <{name}>, not <opml>",
                          file=file, line=root.sourceline)
    body = next((child for child in root if isinstance(child.tag, str)
                 and etree.QName(child).localname.lower() == "body"), None)
    if body is None:
        raise ConfigError("not an OPML file: it has no <body>", file=file)
    feeds: list[OpmlFeed] = []
    for outline, folder in _outlines(body, ""):
        attrs = _attributes(outline)
        title = _outline_title(attrs)
        xml_url = attrs.get("xmlurl", "").strip()
        html_url = attrs.get("htmlurl", "").strip()
        other_url = attrs.get("url", "").strip()
        kind = attrs.get("type", "").strip().lower()
        if kind in NON_FEED_TYPES:
            where = xml_url or other_url or html_url or f"line {outline.sourceline}"
            feeds.append(OpmlFeed(where, title, folder, f'not a feed (type="{kind}")'))
        elif xml_url:
            url = _feed_url(xml_url)
            feeds.append(OpmlFeed(url or xml_url, title, folder,
                                  "" if url else "not an absolute http(s) or file: URL"))
        elif html_url:
            feeds.append(OpmlFeed(html_url, title, folder, "no feed URL (htmlUrl only)"))
        elif other_url:
            feeds.append(OpmlFeed(other_url, title, folder, "not a feed (no xmlUrl)"))
        # An outline with no URL at all and no children is an empty folder or a note.
    return feeds


def _outlines(element: Any, folder: str) -> Iterator[tuple[Any, str]]:
    """Every leaf or feed outline with the title of the innermost folder around it."""
    for child in element:
        if not isinstance(child.tag, str) or etree.QName(child).localname.lower() != "outline":
            continue
        attrs = _attributes(child)
        if len(child) and not attrs.get("xmlurl", "").strip():  # a folder
            yield from _outlines(child, _outline_title(attrs) or folder)
        else:
            yield child, folder
            # A feed outline with children (rare): its children are still subscriptions.
            if len(child):
                yield from _outlines(child, folder)


def _attributes(outline: Any) -> dict[str, str]:
    # Readers disagree on case: xmlUrl, xmlurl, XMLURL all occur in the wild.
    return {etree.QName(k).localname.lower(): v for k, v in outline.attrib.items()}


def _outline_title(attrs: Mapping[str, str]) -> str:
    text = attrs.get("title", "").strip() or attrs.get("text", "").strip()
    # Some readers escape twice ('AT&amp;amp;T'); a real '&amp;' in a title is rarer.
    if "&" in text:
        text = unescape(text)
    return " ".join(text.split())


def _feed_url(raw: str) -> str | None:
    """The outline's xmlUrl as a URL feeds.yaml accepts, or None."""
    url = raw.strip()
    lower = url.lower()
    if lower.startswith("feed://"):  # the old feed: pseudo-scheme: feed://host/path
        url = "http://" + url[len("feed://"):]
    elif lower.startswith("feed:"):  # feed:https://host/path
        url = url[len("feed:"):]
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https") and parts.hostname:
        return url
    if parts.scheme.lower() == "file" and parts.path.startswith("/") \
            and parts.netloc in ("", "localhost"):
        return url
    return None


def _describe(url: str, title: str, reason: str) -> str:
    return f"{url} ({title}): {reason}" if title else f"{url}: {reason}"


def plan_import(config: Config, feeds: Sequence[OpmlFeed]) -> ImportPlan:
    """Pure: which feeds become sources, with which ids and categories, and which not."""
    plan = ImportPlan()
    configured = {normalize_link(s.url): s.id for s in config.sources}
    new: dict[str, dict[str, Any]] = {}  # normalized URL -> the mapping to append
    taken = [s.id for s in config.sources]
    for feed in feeds:
        if feed.skip:
            plan.skipped.append(_describe(feed.url, feed.title, feed.skip))
            continue
        key = normalize_link(feed.url)
        if key in configured:
            plan.skipped.append(_describe(feed.url, feed.title,
                                          f"already in feeds.yaml as '{configured[key]}'"))
            continue
        if key in new:
            entry = new[key]
            reason = f"listed twice in the file: added once as '{entry['id']}'"
            # A feed filed in two folders (Feedly allows it) belongs to both categories.
            if feed.folder and feed.folder not in entry.get("categories", []):
                entry.setdefault("categories", []).append(feed.folder)
                reason += f", with category '{feed.folder}' too"
            plan.skipped.append(_describe(feed.url, feed.title, reason))
            continue
        source_id = derive_id(feed.title, feed.url, taken)
        taken.append(source_id)
        entry: dict[str, Any] = {"id": source_id, "url": feed.url}
        if feed.title:
            entry["title"] = feed.title
        if feed.folder:
            entry["categories"] = [feed.folder]
        new[key] = entry
        plan.added.append(entry)
    return plan


# -- add ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoundFeed:
    """A feed that fetched and parsed: where, what it said, and what else was on offer."""

    url: str
    parsed: ParsedFeed
    via: str  # how it was found: "the URL itself", "<link rel=alternate>", "a common path"
    others: tuple[FeedLink, ...] = ()


def add_source(config: Config, url: str, *, source_id: str | None = None,
               title: str | None = None, tags: Sequence[str] = (),
               categories: Sequence[str] = ()) -> str:
    """Find the feed at or behind URL, check that it parses, append it to feeds.yaml.

    URL may be a feed, or an HTML page that announces its feeds with
    <link rel="alternate"> (Atom and RSS preferred over JSON Feed, then page order,
    comment feeds last) or serves one at a common path (/feed, /rss.xml...).
    Returns one line for the user, naming the feeds that were not chosen.
    Raises ConfigError for bad arguments or a URL already configured, and a plain
    AggregatorError when nothing readable is found at the URL.
    """
    target = _target_url(url)
    if source_id is not None and not SOURCE_ID.match(source_id):
        raise ConfigError(f"--id: expected only a-z, 0-9, _ and -, got {source_id!r}")
    if source_id is not None and config.source(source_id) is not None:
        raise ConfigError(f"--id: a source '{source_id}' is already in feeds.yaml",
                          file=config.path)
    _refuse_configured(config, target)
    found = find_feed(target, config)
    _refuse_configured(config, found.url)
    new_id = source_id or derive_id(title or found.parsed.title, found.url,
                                    [s.id for s in config.sources])
    entry: dict[str, Any] = {"id": new_id, "url": _yaml_url(found.url, config.path)}
    if title:
        entry["title"] = title
    if categories:
        entry["categories"] = list(dict.fromkeys(categories))
    if tags:
        entry["tags"] = list(dict.fromkeys(tags))
    append_sources(config.path, [entry])
    count = len(found.parsed.entries)
    line = (f"added source '{new_id}' ({found.url}, {count} item{'s' if count != 1 else ''}) "
            f"to {config.path}")
    if found.via != "the URL itself":
        line += f", found through {found.via}"
    if found.others:
        line += "; the page also offers " + ", ".join(
            f"{link.url} ({link.kind}{': ' + link.title if link.title else ''})"
            for link in found.others)
    return line


def _target_url(url: str) -> str:
    """The URL to fetch: http(s) and file: URLs as given, a local path as a file: URL."""
    url = url.strip()
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        if not urlsplit(url).hostname:
            raise ConfigError(f"not a valid URL: {url!r}")
        return url
    if scheme == "file":
        return url
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise ConfigError(f"unsupported URL scheme '{scheme}' in {url}: "
                          "give an http(s) URL, a file: URL or a path")
    if not url:
        raise ConfigError("no URL given")
    return Path(os.path.expanduser(url)).resolve().as_uri()


def _refuse_configured(config: Config, url: str) -> None:
    key = normalize_link(url)
    for source in config.sources:
        if normalize_link(source.url) == key:
            raise ConfigError(f"{url} is already in feeds.yaml as source '{source.id}'",
                              file=config.path, line=source.line)


def _yaml_url(url: str, config_path: Path) -> str:
    """How feeds.yaml should spell the URL: a file under the config's folder as a
    relative path (the shipped examples do this, and it survives moving the folder)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return url
    path = Path(url2pathname(parts.path))
    try:
        return path.relative_to(config_path.resolve().parent).as_posix()
    except ValueError:
        return str(path)


def find_feed(url: str, config: Config, fetcher: Fetcher | None = None) -> FoundFeed:
    """Fetch URL; if it is a feed, that; if it is an HTML page, the best feed it leads to."""
    fetcher = fetcher or Fetcher()
    try:
        result = _fetch(fetcher, url, config)
    except FetchError as e:
        raise AggregatorError(f"cannot add {url}: {e.detail}") from e
    try:
        return FoundFeed(_feed_location(url, result), _parse(result, url), "the URL itself")
    except ParseError as e:
        if not _is_html(result):
            raise AggregatorError(f"cannot add {url}: not a feed, and not an HTML page to "
                                  f"look for one on ({e.detail})") from None
    html = _decode_html(result)
    page_url = result.url or url
    links = _rank(discover_feeds(html, page_url))
    failures: list[str] = []
    for i, link in enumerate(links):
        try:
            fetched = _fetch(fetcher, link.url, config)
            parsed = _parse(fetched, link.url)
        except (FetchError, ParseError) as e:
            failures.append(f"{link.url} ({e.detail})")
            continue
        others = tuple(x for j, x in enumerate(links) if j != i)
        return FoundFeed(_feed_location(link.url, fetched), parsed, "<link rel=alternate>",
                         others)
    if links:
        raise AggregatorError(f"cannot add {url}: the page announces feeds but none could be "
                              f"read: {'; '.join(failures)}")
    if urlsplit(page_url).scheme in ("http", "https"):
        for path in COMMON_FEED_PATHS:
            candidate = urljoin(page_url, path)
            try:
                fetched = _fetch(fetcher, candidate, config)
                parsed = _parse(fetched, candidate)
            except (FetchError, ParseError):
                continue
            return FoundFeed(_feed_location(candidate, fetched), parsed, f"the common path {path}")
    tried = ", ".join(COMMON_FEED_PATHS)
    raise AggregatorError(f"cannot add {url}: an HTML page with no feed: it announces none "
                          f"(<link rel=\"alternate\">) and none of {tried} is one")


def _rank(links: list[FeedLink]) -> list[FeedLink]:
    """Atom/RSS before JSON Feed (every reader reads them), page order otherwise;
    comment feeds (WordPress announces one on every page) after the site's own."""
    def comments(link: FeedLink) -> bool:
        return "comment" in link.title.lower() or "/comments/" in link.url.lower()

    return sorted(links, key=lambda link: (comments(link), link.kind == "JSON Feed"))


def _fetch(fetcher: Fetcher, url: str, config: Config) -> FetchResult:
    """One fresh GET with the poller's manners: User-Agent, timeout, max_bytes, redirects."""
    probe = Source(id="add", url=url, timeout=config.defaults.timeout,
                   max_bytes=config.defaults.max_bytes)
    return fetcher.fetch(probe, HttpState())


def _parse(result: FetchResult, url: str) -> ParsedFeed:
    return parse_feed(result.body, result.headers, result.url or url, "add")


def _feed_location(requested: str, result: FetchResult) -> str:
    # A permanent redirect is where the feed lives now; a temporary one is not.
    return result.permanent_url or requested


def _is_html(result: FetchResult) -> bool:
    media_type = str(result.headers.get("content-type", "")).split(";")[0].strip().lower()
    if media_type in ("text/html", "application/xhtml+xml"):
        return True
    head = result.body[:4096].lower()
    return b"<!doctype html" in head or b"<html" in head


def _decode_html(result: FetchResult) -> str:
    match = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)",
                      str(result.headers.get("content-type", "")))
    meta = re.search(rb"<meta[^>]+charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", result.body[:4096], re.I)
    for label in (match.group(1) if match else None,
                  meta.group(1).decode("ascii") if meta else None, "utf-8"):
        if not label:
            continue
        try:
            return result.body.decode(label, errors="replace")
        except LookupError:
            continue
    return result.body.decode("utf-8", errors="replace")


# -- the feeds.yaml writer ------------------------------------------------------------------
def append_sources(path: Path, entries: Sequence[Mapping[str, Any]], *,
                   note: str | None = None) -> Config:
    """Append source mappings to feeds.yaml's `sources`, keeping everything else as it is.

    The new text must load (validate, in memory) with the old sources unchanged and
    the new ones after them, or the file is left untouched and ConfigError says why.
    Returns the new Config.
    """
    real = path.resolve()  # a symlinked feeds.yaml stays a symlink
    try:
        raw = real.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=path) from e
    newline = "\r\n" if "\r\n" in text else "\n"
    text = text.replace("\r\n", "\n")
    document = parse_yaml(text, path)
    old_ids = [s.id for s in validate(document, path).sources]
    expected = old_ids + [str(e["id"]) for e in entries]

    problem: ConfigError | None = None
    for build in (_appended_text, _redumped_text):
        new_text = build(text, document, entries, note)
        if new_text is None:
            continue
        try:
            config = validate(parse_yaml(new_text, path), path)
        except ConfigError as e:
            problem = e
            continue
        if [s.id for s in config.sources] == expected:
            _write_atomic(real, new_text.replace("\n", newline), path)
            return config
    detail = "the sources list could not be extended"
    if problem is not None:
        detail = (f"{problem.key}: " if problem.key else "") + problem.detail
    raise ConfigError(f"left unchanged: with the new sources it would not load: {detail}",
                      file=path)


def _appended_text(text: str, document: Any, entries: Sequence[Mapping[str, Any]],
                   note: str | None) -> str | None:
    """The new items added as text at the end of the file, or None if `sources` is
    not the last key there. Every byte before them stays the same."""
    if document is None:
        head, dash, content = "sources:\n", 2, 4
    elif isinstance(document, CommentedMap) and not document.fa.flow_style():
        keys = list(document)
        if "sources" not in document:
            head, dash, content = "sources:\n", 2, 4
        elif keys[-1] != "sources":
            return None
        else:
            sources = document["sources"]
            head, dash, content = "", 2, 4
            if isinstance(sources, CommentedSeq) and len(sources) and \
                    not sources.fa.flow_style():
                indents = _item_indents(text, sources)
                if indents is None:
                    return None
                dash, content = indents
            elif sources is not None:
                return None  # `sources: []` or a flow list: text after it would not parse
    else:
        return None
    out = text if not text or text.endswith("\n") else text + "\n"
    if out.strip() and not out.endswith("\n\n"):
        out += "\n"  # one blank line between the user's text and ours
    out += head
    if note:
        out += " " * dash + f"# {note}\n"
    return out + _render_items(entries, dash, content)


def _item_indents(text: str, sources: CommentedSeq) -> tuple[int, int] | None:
    """(column of '-', column of the item's keys) as the file's first source has them."""
    line = sources.lc.item(0)[0]
    lines = text.split("\n")
    match = re.match(r"^( *)-( +)\S", lines[line]) if line < len(lines) else None
    if not match:
        return None
    dash = len(match.group(1))
    return dash, dash + 1 + len(match.group(2))


def _render_items(entries: Sequence[Mapping[str, Any]], dash: int, content: int) -> str:
    """The entries as a block sequence under a top-level key, in the file's indentation."""
    yaml = _yaml(mapping=2, sequence=content, offset=dash)
    buffer = io.StringIO()
    yaml.dump({"sources": _commented(entries)}, buffer)
    rendered = buffer.getvalue()
    return rendered.split("\n", 1)[1]  # drop the 'sources:' line


def _redumped_text(text: str, document: Any, entries: Sequence[Mapping[str, Any]],
                   note: str | None) -> str | None:
    """ruamel's round-trip: for a `sources` that is not last, empty or in flow style."""
    mapping, sequence, offset = _guess_indents(text)
    yaml = _yaml(mapping=mapping, sequence=sequence, offset=offset)
    document = yaml.load(text)  # again, keeping quotes this time (config's loader drops them)
    if not isinstance(document, CommentedMap):
        return None
    sources = document.get("sources")
    new_items = _commented(entries)
    if isinstance(sources, CommentedSeq) and len(sources):
        start = len(sources)
        sources.extend(new_items)
    else:
        sources = new_items
        start = 0
        document["sources"] = sources
    if note:
        sources.yaml_set_comment_before_after_key(start, before=note, indent=offset)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue()


def _guess_indents(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) as the file uses them."""
    # A top-level key that opens a block, skipped blank and comment lines, the first child.
    opener = r"^[^\s#][^\n]*:[ \t]*(?:#[^\n]*)?\n(?:[ \t]*(?:#[^\n]*)?\n)*"
    nested = re.search(opener + r"( +)[^\s#-]", text, re.M)
    mapping = len(nested.group(1)) if nested else 2
    items = re.search(opener + r"( *)-( +)\S", text, re.M)
    if items:
        offset = len(items.group(1))
        return mapping, offset + 1 + len(items.group(2)), offset
    return mapping, 4, 2


def _commented(entries: Sequence[Mapping[str, Any]]) -> CommentedSeq:
    """Plain mappings -> ruamel nodes, lists in flow style as feeds.yaml writes them."""
    seq = CommentedSeq()
    for entry in entries:
        node = CommentedMap()
        for key, value in entry.items():
            if isinstance(value, list | tuple):
                flow = CommentedSeq(str(v) for v in value)
                flow.fa.set_flow_style()
                node[key] = flow
            else:
                node[key] = value
        seq.append(node)
    return seq


def _yaml(*, mapping: int, sequence: int, offset: int) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long URL or comment onto a second line
    yaml.indent(mapping=mapping, sequence=max(sequence, offset + 2), offset=offset)
    return yaml


def _write_atomic(target: Path, text: str, shown: Path) -> None:
    """Temporary file in the same folder, then os.replace: a crash leaves the old file
    or the new one, never half of one; the daemon's reload never sees a partial file."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o644
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror or e}", file=shown) from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; keep the file as readable as it was
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise ConfigError(f"cannot write: {e.strerror or e}", file=shown) from e
        raise
