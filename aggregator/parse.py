"""Pure: bytes + response headers + URL -> ParsedFeed.

XML feeds (RSS 0.9x/1.0/2.0, Atom 0.3/1.0) go through feedparser with its own
sanitizing and relative-URI resolution switched off: we sanitize once, with nh3,
when the entry becomes Markdown, and resolve URLs there. JSON Feed is read here.
"""

from __future__ import annotations

import calendar
import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

# At the top, never inside a function: fetch threads parse, and feedparser's modules
# imported for the first time by two threads at once can deadlock (_DeadlockError).
# This module itself is imported under one lock (pipeline.parser_chain).
import feedparser

from aggregator.content import absolute_url, first_image, plain_text, scrub_surrogates
from aggregator.errors import ParseError
from aggregator.fastparse import MAX_FEED_INTERVAL, parse_fast, richest_body
from aggregator.model import Entry, ParsedFeed

# Labels whose real-world content is a superset encoding (the WHATWG Encoding
# Standard maps them the same way): a "gb2312" feed routinely holds GBK characters.
ENCODING_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "gb_2312-80": "gb18030",
    "csgb2312": "gb18030", "euc-cn": "gb18030", "chinese": "gb18030", "iso-ir-58": "gb18030",
    "big5": "big5hkscs", "x-big5": "big5hkscs", "cn-big5": "big5hkscs", "csbig5": "big5hkscs",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "ms_kanji": "cp932", "csshiftjis": "cp932", "windows-31j": "cp932",
    "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "ksc5601": "cp949", "cseuckr": "cp949",
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "iso_8859-1": "cp1252", "iso-8859-9": "cp1254", "tis-620": "cp874",
}
_XML_DECL = re.compile(rb"^(\s*<\?xml[^>]*?encoding\s*=\s*[\"'])([A-Za-z0-9._:-]+)([\"'])")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.I)
_UPDATE_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 604800, "monthly": 2592000,
                   "yearly": 31536000}


def parse_feed(body: bytes, headers: Mapping[str, str], url: str, source_id: str = "") -> ParsedFeed:
    """Parse a feed document; raise ParseError when it is not a feed we can read."""
    headers = {k.lower(): v for k, v in headers.items()}
    stripped = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise ParseError("empty response, not a feed", source_id=source_id, url=url)
    content_type = headers.get("content-type", "").lower()
    # A document that starts with markup is XML whatever the server calls it: RSS served
    # as application/json by a misconfigured server is still read as RSS.
    if stripped[:1] == b"{" or ("json" in content_type and stripped[:1] != b"<"):
        return parse_json_feed(stripped, url, source_id)
    return _parse_xml(body, headers, url, source_id)


def _parse_xml(body: bytes, headers: dict[str, str], url: str, source_id: str,
               try_fast: bool = True) -> ParsedFeed:
    """``try_fast``: the lxml fast path first (tests turn it off to compare the two)."""
    body, headers = _normalize_encoding(body, headers)
    body, replaced = _repair_utf8(body, headers)
    repair = f"invalid UTF-8: {replaced} bad bytes replaced" if replaced else None
    if try_fast and _document_decides_encoding(body, headers):
        fast = parse_fast(body, url)
        if fast is not None:
            return replace(fast, warning=repair) if repair else fast
    if not url.startswith("file:"):
        # feedparser resolves a relative <guid> against it: against a local feed's file:
        # URL that published the server's own paths ('file://srv/feeds/a/1').
        headers.setdefault("content-location", url)
    headers.setdefault("content-type", "application/xml")  # local files: let the document decide
    try:
        parsed = feedparser.parse(body, response_headers=headers, sanitize_html=False,
                                  resolve_relative_uris=False)
    except Exception as e:  # feedparser is meant not to raise; wrap anything that does
        raise ParseError(f"cannot parse: {type(e).__name__}: {e}", source_id=source_id,
                         url=url) from e
    if not parsed.entries and (parsed.bozo or not parsed.version):
        raise ParseError(_not_a_feed(body, parsed, url), source_id=source_id, url=url)
    feed = parsed.feed
    base = feed.get("link") if absolute_url(feed.get("link"), None) else url
    warning = repair
    if parsed.bozo:
        warning = f"ill-formed feed, read anyway: {_bozo_text(parsed.bozo_exception)}"
    rss = (parsed.version or "").startswith("rss")
    entries = tuple(_xml_entry(e, base, url, rss_titles=rss) for e in parsed.entries)
    return ParsedFeed(
        title=plain_text(feed.get("title", "")) or None,
        link=absolute_url(feed.get("link"), url),
        language=(feed.get("language") or "").strip() or None,
        entries=entries,
        warning=warning,
        min_interval=_feed_min_interval(feed),
    )


def _normalize_encoding(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """Decode legacy encodings by their superset, hand feedparser UTF-8 bytes."""
    content_type = headers.get("content-type", "")
    http_charset = _CHARSET.search(content_type)
    media_type = content_type.split(";")[0].strip().lower()
    if media_type.startswith("text/") and not http_charset:
        # RFC 3023 says text/xml without charset is US-ASCII whatever the document says;
        # no feed author means that, so let the XML declaration decide.
        headers["content-type"] = "application/xml"
    declared = http_charset.group(1) if http_charset else None
    decl = _XML_DECL.match(body[:200])
    if declared is None and decl:
        declared = decl.group(2).decode("ascii")
    superset = ENCODING_SUPERSETS.get((declared or "").lower())
    if not superset or body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return body, headers
    text = body.decode(superset, errors="replace")
    utf8 = text.encode("utf-8")
    if decl:
        utf8 = _XML_DECL.sub(rb"\1utf-8\3", utf8, count=1)
    headers["content-type"] = (media_type if media_type and not media_type.startswith("text/")
                               else "application/xml") + "; charset=utf-8"
    return utf8, headers


def _repair_utf8(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, int]:
    """A UTF-8 document with a few invalid bytes: those bytes as U+FFFD, and how many.

    feedparser decodes a document that is not valid in its declared UTF-8 as
    Windows-1252 as a whole, which garbles every other non-ASCII character (all of a
    Chinese feed) for one stray byte. When the document is mostly valid UTF-8 (eight
    valid non-ASCII characters for each bad byte) only the bad bytes are lost; otherwise
    the label is what is wrong, and feedparser's fallback is right.
    """
    if body.isascii() or body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return body, 0
    http = _CHARSET.search(headers.get("content-type", ""))
    decl = _XML_DECL.match(body[:200])
    for label in (http.group(1) if http else None, decl.group(2).decode() if decl else None):
        try:
            if label is not None and codecs.lookup(label).name != "utf-8":
                return body, 0
        except LookupError:
            return body, 0
    try:
        body.decode("utf-8")
        return body, 0
    except UnicodeDecodeError:
        pass
    escaped = body.decode("utf-8", "surrogateescape")  # each invalid byte -> one surrogate
    bad = len(_INVALID_BYTE.findall(escaped))
    if len(_VALID_NON_ASCII.findall(escaped)) < 8 * bad:
        return body, 0
    return body.decode("utf-8", "replace").encode("utf-8"), bad


_INVALID_BYTE = re.compile("[\udc80-\udcff]")
_VALID_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")


def _document_decides_encoding(body: bytes, headers: Mapping[str, str]) -> bool:
    """True when lxml, which reads only the XML declaration, decodes as RFC 3023 says."""
    http = _CHARSET.search(headers.get("content-type", ""))
    if http is None:
        return True
    decl = _XML_DECL.match(body[:200])
    declared = decl.group(2).decode("ascii") if decl else "utf-8"
    return http.group(1).lower().replace("_", "-") == declared.lower().replace("_", "-")


def _not_a_feed(body: bytes, parsed: Any, url: str) -> str:
    head = body[:4096].decode("utf-8", "replace").lower()
    if "<html" in head or "<!doctype html" in head:
        links = discover_feed_links(body[:65536].decode("utf-8", "replace"), url)
        if links:
            # Absolute, so the user can paste it into feeds.yaml as it is.
            return f"not a feed but an HTML page; it links to a feed at {links[0]}"
        return "not a feed but an HTML page"
    if parsed.bozo:
        return f"not a feed: {_bozo_text(parsed.bozo_exception)}"
    return "not a feed: no RSS, Atom or JSON Feed document found"


def _bozo_text(exc: Any) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def _feed_min_interval(feed: Mapping[str, Any]) -> timedelta | None:
    seconds: list[float] = []
    ttl = str(feed.get("ttl", "")).strip()
    if ttl.isdigit() and int(ttl) > 0:
        seconds.append(int(ttl) * 60)
    period = str(feed.get("sy_updateperiod", "")).strip().lower()
    if period in _UPDATE_PERIODS:
        freq = str(feed.get("sy_updatefrequency", "1")).strip()
        frequency = int(freq) if freq.isdigit() and int(freq) > 0 else 1
        seconds.append(_UPDATE_PERIODS[period] / frequency)
    # A feed asking for more than a day is almost always a mistake; cap what we honour.
    return timedelta(seconds=min(max(seconds), MAX_FEED_INTERVAL)) if seconds else None


def _struct_to_datetime(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None


def _xml_entry(e: Mapping[str, Any], feed_base: str, document_url: str = "",
               rss_titles: bool = False) -> Entry:
    link = absolute_url(e.get("link"), feed_base)
    contents = [c for c in e.get("content", []) if c.get("value")]
    html_contents = [c for c in contents if "html" in (c.get("type") or "")]
    content = max(html_contents or contents, key=lambda c: len(c["value"]), default=None)
    summary_detail = e.get("summary_detail") or {}
    # Without a summary_detail, the summary is feedparser's copy of the content, not an
    # element of the feed (the fast path has no such copy).
    summary = (e.get("summary", "") or "") if "summary_detail" in e else ""
    if summary and "html" not in (summary_detail.get("type") or "text/html"):
        summary = escape(summary)
    summary_base = _explicit_base(summary_detail.get("base"), document_url)
    if content is not None:
        content_html = content["value"]
        if "html" not in (content.get("type") or "text/html"):
            content_html = "<p>" + escape(content_html).replace("\n\n", "</p><p>") + "</p>"
        body, summary = richest_body(content_html, summary)
        content_base = (summary_base if body != content_html
                        else _explicit_base(content.get("base"), document_url))
        content_html = body
        base = content_base or link or feed_base
    else:
        content_html = summary
        base = summary_base or link or feed_base
    if not absolute_url(base, None):
        base = link or feed_base
    title = e.get("title", "") or ""
    title_type = (e.get("title_detail") or {}).get("type") or "text/plain"
    # RSS titles are HTML on the fast path (fastparse._rss2_item); feedparser calls one
    # with markup it does not know ('<script>...', '<blink>') text/plain. Read them alike,
    # or a title of only markup would be stored as that markup when the feed has a DOCTYPE.
    title = (plain_text(title) if "html" in title_type or rss_titles
             else " ".join(title.split()))
    categories: list[str] = []
    for tag in e.get("tags", []) or []:
        term = (tag.get("term") or "").strip()
        label = (tag.get("label") or "").strip()
        name = label if (label and (not term or "://" in term)) else term
        for part in ([name] if "," not in name or len(name) > 60 else name.split(",")):
            part = " ".join(part.split())
            if part and part not in categories:
                categories.append(part)
    author = (e.get("author_detail") or {}).get("name") or e.get("author")
    return Entry(
        entry_id=(e.get("id") or "").strip() or None,
        link=link,
        title=title,
        content_html=content_html or "",
        summary_html=summary if content is not None else "",
        published=_struct_to_datetime(e.get("published_parsed")),
        # `in` first: a bare get() falls back to published_parsed with a DeprecationWarning.
        updated=_struct_to_datetime(e.get("updated_parsed") if "updated_parsed" in e else None),
        author=plain_text(author) if author else None,
        categories=tuple(categories),
        thumbnail=_thumbnail(e, content_html, base),
        base_url=base or "",
    )


def _explicit_base(base: str | None, document_url: str) -> str | None:
    """An xml:base the feed set; the document's own URL is not one (relative URLs in
    RSS are resolved against the item's link, as readers do)."""
    return base if base and base != document_url else None


def _thumbnail(e: Mapping[str, Any], content_html: str, base: str) -> str | None:
    for thumb in e.get("media_thumbnail", []) or []:
        if url := absolute_url(thumb.get("url"), base):
            return url
    for media in e.get("media_content", []) or []:
        kind = (media.get("medium") or media.get("type") or "").lower()
        if kind.startswith("image") and (url := absolute_url(media.get("url"), base)):
            return url
    for link in e.get("links", []) or []:
        if (link.get("rel") == "enclosure" and (link.get("type") or "").startswith("image/")
                and (url := absolute_url(link.get("href"), base))):
            return url
    return absolute_url(first_image(content_html), base)


def parse_json_feed(body: bytes, url: str, source_id: str = "") -> ParsedFeed:
    """JSON Feed 1.0 / 1.1 (https://www.jsonfeed.org/version/1.1/)."""
    try:
        doc = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParseError(f"not a feed: invalid JSON: {e}", source_id=source_id, url=url) from e
    except RecursionError as e:  # '[[[[...' nested deeper than the interpreter's stack
        raise ParseError("not a feed: JSON nested too deeply", source_id=source_id,
                         url=url) from e
    # 1.0 documents often spell the version with http:// (as the 1.0 spec's examples did)
    if not isinstance(doc, dict) or not str(doc.get("version", "")).strip().startswith(
            ("https://jsonfeed.org/version/", "http://jsonfeed.org/version/")):
        raise ParseError("not a feed: JSON without a jsonfeed.org version", source_id=source_id,
                         url=url)
    items = doc.get("items")
    if not isinstance(items, list):
        raise ParseError("not a feed: JSON Feed without an items list", source_id=source_id,
                         url=url)
    base = _text(doc.get("home_page_url")) or url
    entries = tuple(_json_entry(i, base) for i in items if isinstance(i, dict))
    return ParsedFeed(
        title=_text(doc.get("title")) or None,
        link=absolute_url(_text(doc.get("home_page_url")), url),
        language=_text(doc.get("language")) or None,
        entries=entries,
    )


def _text(value: Any) -> str:
    # scrubbed: a JSON escape "\ud800" is a lone surrogate, which neither a UTF-8 file nor
    # the index (SQLite) can hold
    if isinstance(value, str | int | float) and value is not True:
        return scrub_surrogates(str(value).strip())
    return ""


def _json_date(value: Any) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_entry(item: Mapping[str, Any], base: str) -> Entry:
    link = absolute_url(_text(item.get("url")) or _text(item.get("external_url")), base)
    content_html = _text(item.get("content_html"))
    if not content_html and _text(item.get("content_text")):
        paragraphs = _text(item.get("content_text")).split("\n\n")
        content_html = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    content_html, summary = richest_body(content_html, escape(_text(item.get("summary"))))
    authors = item.get("authors") or ([item["author"]] if isinstance(item.get("author"), dict)
                                      else [])
    author = next((_text(a.get("name")) for a in authors
                   if isinstance(a, dict) and _text(a.get("name"))), None)
    tags = item.get("tags") if isinstance(item.get("tags"), list) else []
    categories = tuple(dict.fromkeys(" ".join(_text(t).split()) for t in tags if _text(t)))
    entry_base = link or base
    image = _text(item.get("image")) or _text(item.get("banner_image"))
    return Entry(
        entry_id=_text(item.get("id")) or None,
        link=link,
        title=" ".join(_text(item.get("title")).split()),
        content_html=content_html,
        summary_html=summary,
        published=_json_date(item.get("date_published")),
        updated=_json_date(item.get("date_modified")),
        author=author,
        categories=categories,
        thumbnail=absolute_url(image, entry_base) or absolute_url(first_image(content_html),
                                                                  entry_base),
        base_url=entry_base,
    )


def discover_feed_links(html_text: str, page_url: str) -> list[str]:
    """Feed URLs an HTML page announces with <link rel="alternate" type=...>."""
    return [link.url for link in discover_feeds(html_text, page_url)]


FEED_MEDIA_TYPES = {"application/rss+xml": "RSS", "application/atom+xml": "Atom",
                    "application/feed+json": "JSON Feed"}


@dataclass(frozen=True)
class FeedLink:
    """A feed an HTML page announces: absolute URL, format label, the link's title."""

    url: str
    kind: str  # "RSS", "Atom" or "JSON Feed"
    title: str = ""


class _FeedLinkFinder(HTMLParser):
    """Collects <link rel="alternate" type="application/{rss,atom}+xml|feed+json"> and <base>.

    An HTML parser rather than a regex: attribute order, quoting, case, entities
    and rel lists such as rel="alternate feed" all vary on real pages.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.found: list[tuple[str, str, str]] = []  # (href, kind, title) in page order

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name.lower(): (value or "").strip() for name, value in attrs}
        if tag == "base" and self.base is None and values.get("href"):
            self.base = values["href"]
        elif tag == "link" and values.get("href"):
            media_type = values.get("type", "").split(";")[0].strip().lower()
            if "alternate" in values.get("rel", "").lower().split() and \
                    media_type in FEED_MEDIA_TYPES:
                self.found.append((values["href"], FEED_MEDIA_TYPES[media_type],
                                   values.get("title", "")))


def discover_feeds(html_text: str, page_url: str) -> list[FeedLink]:
    """Feeds an HTML page announces, in page order, hrefs resolved against <base>/the page."""
    finder = _FeedLinkFinder()
    try:
        # The feeds are announced in <head>; the first 512 KB hold it on any real page.
        finder.feed(html_text[:512 * 1024])
        finder.close()
    except (AssertionError, ValueError):  # HTMLParser on badly broken markup
        pass
    base = urljoin(page_url, finder.base) if finder.base else page_url
    links: list[FeedLink] = []
    for href, kind, title in finder.found:
        url = urljoin(base, href)
        if url.startswith(("http://", "https://", "file:")) and url not in [x.url for x in links]:
            links.append(FeedLink(url, kind, title))
    return links
