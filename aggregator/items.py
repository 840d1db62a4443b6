"""Pure: one feed entry + its source -> the store Item it becomes (SPEC §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from aggregator.content import (
    absolute_url,
    first_image,
    front_matter_text,
    html_to_markdown,
    markdown_link,
    markdown_url,
    plain_text,
    sanitize_html,
    sanitized_text,
    scrub_surrogates,
    shorten,
    title_from_text,
)
from aggregator.dedupe import digest, merge_terms
from aggregator.html2md import escape_text
from aggregator.model import Entry, Item, ParsedFeed, Site, Source, freeze
from aggregator.slug import MAX_SLUG_BYTES, hugo_urlize

SUMMARY_LIMIT = 200
# Dates more than this far ahead are a publisher's mistake: the item is dated when first seen.
FUTURE_SLACK = timedelta(days=1)
EPOCH_FLOOR = datetime(1970, 1, 2).astimezone()
# Before this, a date is a generator's "zero" (Go's and Hugo's 0001-01-01), not a date.
ZERO_DATE_BEFORE = datetime(1000, 1, 1, tzinfo=UTC)
_IMG_ALT = re.compile(r"<img\b[^>]*?\balt=\"([^\"]*)\"", re.I)


def source_title(source: Source, feed: ParsedFeed | None) -> str:
    # The feed's own title is a stranger's text: the back-link label of every item.
    return (source.title or (front_matter_text(feed.title) if feed and feed.title else None)
            or source.id)


def passes_filters(source: Source, title: str, summary_text: str) -> bool:
    """include: keep if any matches (when given); exclude: drop if any matches."""
    text = f"{title}\n{summary_text}"
    if source.include and not any(re.search(p, text, re.I) for p in source.include):
        return False
    return not any(re.search(p, text, re.I) for p in source.exclude)


def build_item(entry: Entry, source: Source, feed: ParsedFeed, site: Site,
               front_matter: Mapping[str, Any], now: datetime) -> Item | None:
    """The item an entry becomes, or None when it has nothing to store.

    ``now`` dates entries that carry no date (or one in the future); it is an
    argument so this stays a pure function.
    """
    tz = ZoneInfo(site.timezone)
    entry = _scrubbed(entry)
    clean_html = sanitize_html(entry.content_html, entry.base_url or entry.link)
    text = sanitized_text(clean_html)
    title = front_matter_text(entry.title) or title_from_text(text)
    if not title:
        title = plain_text(entry.summary_html)[:80] or ""
    thumbnail = absolute_url(entry.thumbnail, entry.base_url) if entry.thumbnail else None
    image = thumbnail or first_image(clean_html)
    if not (entry.entry_id or entry.link or title or text or image):
        return None
    date = entry.published or entry.updated
    if date is not None and date < ZERO_DATE_BEFORE:
        date = None  # dated when first seen, as an entry without a date
    if not title and (alt := _IMG_ALT.search(clean_html)):
        title = plain_text(alt.group(1))  # SPEC §3: else an image's alt text
    if not title and image and not (entry.entry_id or entry.link):
        # An entry of only an image is stored too: titled by its source and its date (the
        # feed's, not now's: the title keys an entry with no id or link).
        title = " ".join([source_title(source, feed)]
                         + ([date.astimezone(tz).date().isoformat()] if date else []))
    if not title:
        title = entry.link or entry.entry_id or "untitled"
    # Front-matter strings hold no tags and no invisible characters (front_matter_text).
    title = front_matter_text(title) or "untitled"
    summary_source = plain_text(sanitize_html(entry.summary_html)) if entry.summary_html else text
    # A bounded prefix: the text may be a 5 MB body, and the summary keeps 200 characters.
    summary = shorten(front_matter_text((summary_source or text)[:SUMMARY_LIMIT * 4]),
                      SUMMARY_LIMIT)

    if date is None or date > now + FUTURE_SLACK:
        date = now
    elif date < EPOCH_FLOOR:
        date = EPOCH_FLOOR
    date = date.astimezone(tz).replace(microsecond=0)

    body = html_to_markdown(clean_html)
    # The body holds URLs as Markdown link targets (percent-encoded): look for that form too.
    if thumbnail and thumbnail not in body and markdown_url(thumbnail) not in body:
        # The title is plain text: escaped, or its '<i>' would be raw HTML in the Markdown.
        body = f"![{escape_text(title)}]({markdown_url(thumbnail)})" + ("\n\n" + body if body else "")
    if entry.link:
        body = (body + "\n\n" if body else "") + markdown_link(source_title(source, feed),
                                                              entry.link)
    guid = entry.entry_id or entry.link or f"urn:aggregator:{digest(source.id, title, text)}"
    lang = source.lang or feed.language or site.language
    # feeds.yaml's own terms too: a source with `categories: ["../../etc"]` stored it, and
    # Hugo then refused to build the whole site ("missing taxonomy").
    return Item(
        title=title,
        date=date,
        summary=summary,
        categories=merge_terms((), _store_terms(source.categories)),
        lang=(_lang_tag(front_matter_text(lang)),),
        tags=merge_terms(_store_terms(source.tags), entry_terms(entry, source)[0]),
        thumbnail=thumbnail,
        author=front_matter_text(entry.author or "") or None,
        link=entry.link,
        source=source.id,
        guid=guid,
        extra=freeze(front_matter),
        body=body + "\n",
    )


def entry_terms(entry: Entry, source: Source) -> tuple[tuple[str, ...], int]:
    """(the entry's own categories as the store holds them, how many beyond max_tags were
    dropped). The feed's first ones are kept: one item with 10,000 categories made 30,000
    feed files, each listing all 10,000 (the output grows with the square of the count)."""
    terms = tuple(dict.fromkeys(_store_terms(entry.categories)))
    return terms[:source.max_tags], max(0, len(terms) - source.max_tags)


def _store_terms(terms: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in map(store_term, terms) if t)


@lru_cache(maxsize=65536)
def store_term(term: str) -> str | None:
    """A term as the store holds it, or None when it cannot be one: plain text (no tags,
    no invisible characters), a path Hugo can build (hugo_safe_term), and its Hugo folder
    at most MAX_SLUG_BYTES long, cut as the output's slugs are. 120 Chinese characters
    are 360 bytes, and Hugo failed the whole site on them ("file name too long"); cut in
    the store, the term's folder is the same for Hugo and for us."""
    term = front_matter_text(term)
    if not term or not hugo_safe_term(term):
        return None
    if len(hugo_urlize(term).encode("utf-8")) <= MAX_SLUG_BYTES:
        return term
    low, high = 0, len(term)  # the longest prefix whose folder fits (binary search)
    while low < high:
        mid = (low + high + 1) // 2
        if len(hugo_urlize(term[:mid].rstrip()).encode("utf-8")) <= MAX_SLUG_BYTES:
            low = mid
        else:
            high = mid - 1
    cut = term[:low].rstrip()
    return cut if cut and hugo_safe_term(cut) else None


@lru_cache(maxsize=65536)  # a feed's terms come again and again (every item, every poll)
def hugo_safe_term(term: str) -> bool:
    """False for a feed's category that Hugo cannot build ('..', '../../etc', '///'):
    Hugo fails on it or writes outside tags/, so the store never holds it. Terms Hugo
    nests ('A/B testing' -> tags/a/b-testing/) are kept as spelt."""
    parts = hugo_urlize(term).replace("\\", "/").split("/")
    return all(p not in ("", ".", "..") for p in parts)


def _scrubbed(entry: Entry) -> Entry:
    """The entry with lone surrogates (from JSON escapes) replaced: a file holds only UTF-8."""
    texts = {name: scrubbed for name in _ENTRY_TEXTS
             if isinstance(value := getattr(entry, name), str)
             and (scrubbed := scrub_surrogates(value)) is not value}
    categories = tuple(scrub_surrogates(c) for c in entry.categories)
    if not texts and all(a is b for a, b in zip(categories, entry.categories, strict=True)):
        return entry  # nearly always: nothing to replace, and replace() costs more than this
    return replace(entry, categories=categories, **texts)


_ENTRY_TEXTS = ("entry_id", "link", "title", "content_html", "summary_html", "author",
                "thumbnail", "base_url")


def _lang_tag(lang: str) -> str:
    """'zh-cn' -> 'zh-CN': the BCP 47 spelling Hugo sites use."""
    parts = lang.strip().replace("_", "-").split("-")
    if len(parts) >= 2 and len(parts[1]) == 2:
        parts[1] = parts[1].upper()
    parts[0] = parts[0].lower()
    return "-".join(parts)
