"""A fast path for well-formed feeds: lxml instead of feedparser.

feedparser is about 50x slower than lxml on the same bytes, and most real feeds
are plain, well-formed RSS 2.0, Atom 1.0 or RSS 1.0. This module reads those with
lxml (no network, no entity expansion) into the same ParsedFeed that the
feedparser path produces, dates parsed by feedparser's own date parser. Anything
unusual — not well-formed, a legacy encoding lxml cannot decode, xml:base,
another root element — returns None, and parse.py hands the bytes to feedparser,
which knows every corner of the feed world.
"""

from __future__ import annotations

import calendar
import re
import threading
from datetime import UTC, datetime, timedelta
from html import escape

from feedparser.datetimes import _parse_date
from lxml import etree

from aggregator.content import absolute_url, first_image, plain_text
from aggregator.model import Entry, ParsedFeed

ATOM = "http://www.w3.org/2005/Atom"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
RSS1 = "http://purl.org/rss/1.0/"
DC = "http://purl.org/dc/elements/1.1/"
CONTENT = "http://purl.org/rss/1.0/modules/content/"
MEDIA = "http://search.yahoo.com/mrss/"
SY = "http://purl.org/rss/1.0/modules/syndication/"
XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# A feed asking for more than a week between polls is almost always a mistake (ttl in
# seconds, not minutes); we honour up to a week.
MAX_FEED_INTERVAL = 7 * 86400
_UPDATE_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 604800, "monthly": 2592000,
                   "yearly": 31536000}

WFW = "http://wellformedweb.org/CommentAPI/"
SLASH = "http://purl.org/rss/1.0/modules/slash/"
# Children an item may have for the fast path; anything else (iTunes, unknown
# namespaces, upper-case spellings...) sends the whole feed to feedparser.
RSS2_ITEM = frozenset({
    "title", "link", "description", "guid", "pubDate", "author", "category", "comments",
    "enclosure", "source", f"{{{CONTENT}}}encoded", f"{{{DC}}}creator", f"{{{DC}}}date",
    f"{{{DC}}}subject", f"{{{MEDIA}}}thumbnail", f"{{{MEDIA}}}content", f"{{{MEDIA}}}group",
    f"{{{WFW}}}commentRss", f"{{{SLASH}}}comments",
})
RSS2_SINGLE = ("title", "link", "description", "guid", "pubDate", f"{{{CONTENT}}}encoded")
ATOM_ENTRY = frozenset(f"{{{ATOM}}}{t}" for t in (
    "id", "title", "link", "published", "updated", "summary", "content", "author",
    "contributor", "category", "rights", "source")) | {
    f"{{{MEDIA}}}thumbnail", f"{{{MEDIA}}}content", f"{{{MEDIA}}}group"}
ATOM_SINGLE = tuple(f"{{{ATOM}}}{t}" for t in ("id", "title", "published", "updated",
                                               "summary", "content"))
RSS1_ITEM = frozenset({
    f"{{{RSS1}}}title", f"{{{RSS1}}}link", f"{{{RSS1}}}description", f"{{{CONTENT}}}encoded",
    f"{{{DC}}}creator", f"{{{DC}}}date", f"{{{DC}}}subject", f"{{{MEDIA}}}thumbnail",
    f"{{{MEDIA}}}content",
})
RSS1_SINGLE = (f"{{{RSS1}}}title", f"{{{RSS1}}}link", f"{{{RSS1}}}description",
               f"{{{DC}}}date")

_RSS, _FEED, _RDF = "rss", f"{{{ATOM}}}feed", f"{{{RDF}}}RDF"

_PARSERS = threading.local()


def _parser() -> etree.XMLParser:
    """This thread's parser: lxml supports its default parser or one parser per thread,
    not one shared by the fetch threads (a poll of a few feeds parses in them)."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True,
            remove_pis=True, load_dtd=False)
    return parser


class _Unsupported(Exception):
    """Something this fast path does not handle: use feedparser."""


# C1 control characters, raw in UTF-8 or as character references: nearly always
# Windows-1252 or double-encoded UTF-8 that feedparser knows how to repair.
_C1 = re.compile(rb"\xc2[\x80-\x9f]|&#(?:12[89]|1[3-5][0-9]);|&#[xX]0*[89][0-9a-fA-F];")


def parse_fast(body: bytes, url: str) -> ParsedFeed | None:
    """ParsedFeed for a plain well-formed feed, else None (the caller falls back)."""
    if b"<!DOCTYPE" in body[:2048] or b"<!ENTITY" in body[:4096]:
        return None  # entities and DTDs: feedparser's territory
    if (b"\xc2" in body or b"&#" in body) and _C1.search(body):  # `in`: memchr, not regex
        return None
    try:
        root = etree.fromstring(body, _parser())
    except (etree.XMLSyntaxError, ValueError, LookupError):
        return None
    try:
        if root.tag in (_RSS, _FEED, _RDF):
            _check_no_base(root, body)
        if root.tag == _RSS:
            return _rss2(root, url)
        if root.tag == _FEED:
            return _atom(root, url)
        if root.tag == _RDF:
            return _rss1(root, url)
    except _Unsupported:
        return None
    return None


# -- helpers -----------------------------------------------------------------------------
def _text(node: etree._Element | None) -> str:
    if node is None:
        return ""
    if len(node):
        raise _Unsupported("markup inside a text element")
    return (node.text or "").strip()


def _first(parent: etree._Element, *tags: str) -> etree._Element | None:
    for tag in tags:
        found = parent.find(tag)
        if found is not None:
            return found
    return None


# The two forms nearly every feed uses, read directly: feedparser's _parse_date tries its
# handlers one after another and was a quarter of reading an RSS item. Anything else, or
# anything datetime() refuses, goes to feedparser, whose results these equal
# (tests/test_fast_paths.py).
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"), 1)}
_RFC822 = re.compile(r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) (" + "|".join(_MONTHS)
                     + r") (\d{4}) (\d\d):(\d\d):(\d\d) (?:([+-])(\d\d)(\d\d)|GMT|UTC|UT|Z)")
_W3DTF = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:Z|([+-])(\d\d):(\d\d))")


def _common_date(value: str) -> datetime | None:
    if m := _RFC822.fullmatch(value):
        day, month, year, hour, minute, second, sign, tzh, tzm = m.groups()
        month = _MONTHS[month]
    elif m := _W3DTF.fullmatch(value):
        year, month, day, hour, minute, second, sign, tzh, tzm = m.groups()
    else:
        return None
    if not 1900 <= int(year) <= 2999:  # feedparser's overflow handling stays its own
        return None
    try:
        stamp = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                         tzinfo=UTC)
    except ValueError:
        return None
    if sign:
        offset = timedelta(hours=int(tzh), minutes=int(tzm))
        stamp = stamp - offset if sign == "+" else stamp + offset
    return stamp


def _date(value: str) -> datetime | None:
    if not value:
        return None
    if (common := _common_date(value)) is not None:
        return common
    return _feedparser_date(value)


def _feedparser_date(value: str) -> datetime | None:
    parsed = _parse_date(value)
    if not parsed:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _min_interval(channel: etree._Element) -> timedelta | None:
    seconds: list[float] = []
    ttl = _text(channel.find("ttl"))
    if ttl.isdigit() and int(ttl) > 0:
        seconds.append(int(ttl) * 60)
    period = _text(channel.find(f"{{{SY}}}updatePeriod")).lower()
    if period in _UPDATE_PERIODS:
        freq = _text(channel.find(f"{{{SY}}}updateFrequency"))
        seconds.append(_UPDATE_PERIODS[period] / (int(freq) if freq.isdigit() and int(freq) else 1))
    return timedelta(seconds=min(max(seconds), MAX_FEED_INTERVAL)) if seconds else None


def _check_no_base(root: etree._Element, body: bytes) -> None:
    if b"xml:" not in body and b"XML/1998" not in body and _ascii_compatible(body):
        return  # no xml:base or xml:lang anywhere ("xml" is the one prefix of that namespace)
    for node in root.iter():
        if XML_BASE in node.attrib or (XML_LANG in node.attrib and node is not root):
            raise _Unsupported("xml:base or a nested xml:lang")


def _ascii_compatible(body: bytes) -> bool:
    """Whether ASCII text is in body as ASCII bytes (UTF-8, GBK, Big5...; not UTF-16/32),
    so that a search of the bytes for markup finds all of it."""
    head = body[:4]
    return b"\x00" not in head and not head.startswith((b"\xfe\xff", b"\xff\xfe"))


_NO_CHILD = (None,)


def _children(item: etree._Element, allowed: frozenset[str],
              single: tuple[str, ...]) -> dict[str, list[etree._Element]]:
    """item's children by tag, in order; _Unsupported for any not allowed, or a single one
    twice. One pass over the children: a find() per field cost more than the rest of
    reading an entry."""
    children: dict[str, list[etree._Element]] = {}
    for child in item:
        tag = child.tag
        if tag.__class__ is not str or tag not in allowed:
            raise _Unsupported(f"unexpected element {tag!r}")
        same = children.get(tag)
        if same is None:
            children[tag] = [child]
        elif tag in single:
            raise _Unsupported(f"{tag} twice")
        else:
            same.append(child)
    return children


def _child(children: dict[str, list[etree._Element]], tag: str) -> etree._Element | None:
    return children.get(tag, _NO_CHILD)[0]  # type: ignore[return-value]


def _html(node: etree._Element | None) -> str:
    """Escaped HTML carried as text (the usual RSS way); real child elements: bail."""
    if node is None:
        return ""
    if len(node):
        raise _Unsupported("unescaped markup")
    return (node.text or "").strip()


def _categories(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        parts = [value] if "," not in value or len(value) > 60 else value.split(",")
        for part in parts:
            part = " ".join(part.split())
            if part and part not in out:
                out.append(part)
    return tuple(out)


def _media_thumbnail(item: etree._Element, base: str) -> str | None:
    for thumb in item.iter(f"{{{MEDIA}}}thumbnail"):
        if url := absolute_url(thumb.get("url"), base):
            return url
    for media in item.iter(f"{{{MEDIA}}}content"):
        kind = (media.get("medium") or media.get("type") or "").lower()
        if kind.startswith("image") and (url := absolute_url(media.get("url"), base)):
            return url
    return None


_ELLIPSIS = " .…[]»>"
TEASER_MIN = 20  # characters of a content that, beginning the summary, make it a teaser
# A summary this much longer (and twice as long) is the whole post beside a one-liner;
# a little longer, as "Summary of story 1." beside "New text.", it is only a summary.
FULLER_BY = 280


def richest_body(content: str, summary: str) -> tuple[str, str]:
    """(body, summary) of an entry with both a content and a summary element (HTML).

    The content (content:encoded, atom:content) is the full text as a rule; but feeds
    also put a one-line plain text there beside the whole post in the description (a
    3,596-character post stored as its 79-character teaser). The summary is the body
    when it has more text and no fewer images, and the content's text begins it (a
    teaser) or is much shorter. Both parse paths choose with this.
    """
    if summary == content:  # one text twice: no summary of its own
        return content, ""
    if not content or not summary or len(summary) <= len(content):
        return (content or summary), (summary if content else "")
    content_text, summary_text = plain_text(content), plain_text(summary)
    if len(summary_text) <= len(content_text) or (
            summary.count("<img") < content.count("<img")):
        return content, summary
    head = content_text.rstrip(_ELLIPSIS)[:100]
    if len(head) >= TEASER_MIN and summary_text.startswith(head):
        return summary, content  # the content is a teaser of the summary
    if len(summary_text) >= max(2 * len(content_text), len(content_text) + FULLER_BY):
        return summary, content
    return content, summary


# -- RSS 2.0 -------------------------------------------------------------------------------
def _rss2(root: etree._Element, url: str) -> ParsedFeed:
    channel = root.find("channel")
    if channel is None:
        raise _Unsupported("no channel")
    feed_link = absolute_url(_text(channel.find("link")), url)
    base = feed_link or url
    entries = tuple(_rss2_item(item, base) for item in channel.iterfind("item"))
    if not entries and root.find("item") is not None:
        raise _Unsupported("items outside the channel")
    return ParsedFeed(
        title=plain_text(_text(channel.find("title"))) or None,
        link=feed_link,
        language=_text(channel.find("language")) or None,
        entries=entries,
        min_interval=_min_interval(channel),
    )


def _rss2_item(item: etree._Element, feed_base: str) -> Entry:
    children = _children(item, RSS2_ITEM, RSS2_SINGLE)
    guid_node = _child(children, "guid")
    guid = _text(guid_node) or None
    link = absolute_url(_text(_child(children, "link")), feed_base)
    if link is None and guid and (guid_node.get("isPermaLink", "true").lower() == "true"):
        link = absolute_url(guid, None)  # feedparser does the same for permalink guids
    description = _html(_child(children, "description"))
    encoded = _html(_child(children, f"{{{CONTENT}}}encoded"))
    content, summary = richest_body(encoded, description)
    base = link or feed_base
    date = (_date(_text(_child(children, "pubDate")))
            or _date(_text(_child(children, f"{{{DC}}}date"))))
    author = (_text(_child(children, f"{{{DC}}}creator"))
              or _author_name(_text(_child(children, "author"))))
    thumbnail = _media_thumbnail(item, base)
    if thumbnail is None:
        for enclosure in children.get("enclosure", ()):
            if (enclosure.get("type") or "").startswith("image/"):
                thumbnail = absolute_url(enclosure.get("url"), base)
                if thumbnail:
                    break
    return Entry(
        entry_id=guid,
        link=link,
        title=" ".join(plain_text(_text(_child(children, "title"))).split()),
        content_html=content,
        summary_html=summary,
        published=date,
        updated=None,
        author=plain_text(author) or None,
        categories=_categories([_text(c) for c in children.get("category", ())]
                               + [_text(c) for c in children.get(f"{{{DC}}}subject", ())]),
        thumbnail=thumbnail or absolute_url(first_image(content), base),
        base_url=base,
    )


def _author_name(value: str) -> str:
    """'mei@example.org (Mei Lin)' -> 'Mei Lin', as feedparser reports it."""
    if "(" in value and value.endswith(")"):
        return value[value.index("(") + 1:-1].strip()
    return value


# -- Atom 1.0 ------------------------------------------------------------------------------
def _atom_text(node: etree._Element | None) -> tuple[str, bool]:
    """(text or HTML, is_html) of an Atom text construct."""
    if node is None:
        return "", False
    kind = node.get("type", "text")
    if kind == "xhtml":
        div = node.find("{http://www.w3.org/1999/xhtml}div")
        if div is None:
            raise _Unsupported("xhtml without a div")
        inner = (div.text or "") and escape(div.text or "")
        for child in div:
            inner += etree.tostring(child, encoding="unicode", method="html", with_tail=True)
        return inner.strip(), True
    if len(node):
        raise _Unsupported("markup inside an Atom text construct")
    text = (node.text or "").strip()
    if kind in ("html", "text/html"):
        return text, True
    if kind in ("text", "text/plain"):
        return text, False
    raise _Unsupported(f"Atom content type {kind}")


def _atom(root: etree._Element, url: str) -> ParsedFeed:
    feed_link = _atom_link(root, url)
    base = feed_link or url
    entries = tuple(_atom_entry(e, base) for e in root.iterfind(f"{{{ATOM}}}entry"))
    title, _ = _atom_text(root.find(f"{{{ATOM}}}title"))
    return ParsedFeed(
        title=plain_text(title) or None,
        link=feed_link,
        language=root.get(XML_LANG) or None,
        entries=entries,
    )


def _atom_link(node: etree._Element, base: str) -> str | None:
    for link in node.iterfind(f"{{{ATOM}}}link"):
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return absolute_url(link.get("href"), base)
    return None


def _atom_entry(entry: etree._Element, feed_base: str) -> Entry:
    children = _children(entry, ATOM_ENTRY, ATOM_SINGLE)
    link = _atom_link(entry, feed_base)
    base = link or feed_base
    title, title_html = _atom_text(_child(children, f"{{{ATOM}}}title"))
    summary, summary_html = _atom_text(_child(children, f"{{{ATOM}}}summary"))
    content_node = _child(children, f"{{{ATOM}}}content")
    if content_node is not None and content_node.get("src"):
        raise _Unsupported("out-of-line content")
    content, content_html = _atom_text(content_node)
    if summary and not summary_html:
        summary = escape(summary)
    if content and not content_html:
        content = "<p>" + escape(content).replace("\n\n", "</p><p>") + "</p>"
    body, summary = richest_body(content, summary)
    author = entry.find(f"{{{ATOM}}}author/{{{ATOM}}}name")
    categories = []
    for cat in children.get(f"{{{ATOM}}}category", ()):
        term, label = (cat.get("term") or "").strip(), (cat.get("label") or "").strip()
        categories.append(label if label and (not term or "://" in term) else term)
    thumbnail = _media_thumbnail(entry, base)
    if thumbnail is None:
        for enclosure in entry.iterfind(f"{{{ATOM}}}link[@rel='enclosure']"):
            if (enclosure.get("type") or "").startswith("image/"):
                thumbnail = absolute_url(enclosure.get("href"), base)
                if thumbnail:
                    break
    return Entry(
        entry_id=_text(_child(children, f"{{{ATOM}}}id")) or None,
        link=link,
        title=plain_text(title) if title_html else " ".join(title.split()),
        content_html=body,
        summary_html=summary,
        published=_date(_text(_child(children, f"{{{ATOM}}}published"))),
        updated=_date(_text(_child(children, f"{{{ATOM}}}updated"))),
        author=plain_text(_text(author)) or None,
        categories=_categories(categories),
        thumbnail=thumbnail or absolute_url(first_image(body), base),
        base_url=base,
    )


# -- RSS 1.0 -------------------------------------------------------------------------------
def _rss1(root: etree._Element, url: str) -> ParsedFeed:
    channel = root.find(f"{{{RSS1}}}channel")
    if channel is None:
        raise _Unsupported("RDF without an RSS 1.0 channel")
    feed_link = absolute_url(_text(channel.find(f"{{{RSS1}}}link")), url)
    base = feed_link or url
    entries = tuple(_rss1_item(i, base) for i in root.iterfind(f"{{{RSS1}}}item"))
    return ParsedFeed(
        title=plain_text(_text(channel.find(f"{{{RSS1}}}title"))) or None,
        link=feed_link,
        language=_text(channel.find(f"{{{DC}}}language")) or None,
        entries=entries,
        min_interval=_min_interval(channel),
    )


def _rss1_item(item: etree._Element, feed_base: str) -> Entry:
    children = _children(item, RSS1_ITEM, RSS1_SINGLE)
    link = absolute_url(_text(_child(children, f"{{{RSS1}}}link")), feed_base)
    about = item.get(f"{{{RDF}}}about")
    description = _html(_child(children, f"{{{RSS1}}}description"))
    encoded = _html(_child(children, f"{{{CONTENT}}}encoded"))
    content, summary = richest_body(encoded, description)
    base = link or feed_base
    return Entry(
        entry_id=about or None,
        link=link or absolute_url(about, None),
        title=" ".join(plain_text(_text(_child(children, f"{{{RSS1}}}title"))).split()),
        content_html=content,
        summary_html=summary,
        published=None,
        updated=_date(_text(_child(children, f"{{{DC}}}date"))),
        author=plain_text(_text(_child(children, f"{{{DC}}}creator"))) or None,
        categories=_categories([_text(c) for c in children.get(f"{{{DC}}}subject", ())]),
        thumbnail=_media_thumbnail(item, base) or absolute_url(first_image(content), base),
        base_url=base,
    )
