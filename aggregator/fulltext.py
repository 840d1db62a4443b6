"""Full text for feeds that carry only a summary (a source's ``full_text: true``).

For each entry the store does not know yet, fetch the linked article once —
politely, through the same Fetcher (User-Agent, per-host limit, timeout,
max_bytes) — and extract its main content with trafilatura. On any failure the
entry keeps its summary. An item once stored is never fetched again: its keys are
in the index, so ``is_known`` answers yes from then on.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

from aggregator.content import is_web_url
from aggregator.errors import SourceError
from aggregator.fetch import Fetcher
from aggregator.model import Entry, HttpState, Source

log = logging.getLogger("aggregator.fulltext")
MAX_ARTICLES_PER_POLL = 50  # a feed of 1,000 new entries must not become 1,000 page loads


def extract_article(body: bytes, url: str) -> str | None:
    """The main content of an article page as HTML, or None if nothing readable."""
    import trafilatura  # imported on first use: it is slow to import and rarely needed

    try:
        html = trafilatura.extract(body, url=url, output_format="html", include_images=True,
                                   include_links=True, include_tables=True, favor_precision=True)
    except Exception as e:  # trafilatura's own parsing errors: fall back to the summary
        log.info("cannot extract %s: %s", url, e)
        return None
    if not html or len(html) < 200:
        return None
    return html


def may_fetch(article_url: str, feed_url: str) -> bool:
    """An article on the feed's own host, or on a public address: a feed must not make
    us fetch (and publish) pages of our own network (SSRF)."""
    host = (urlsplit(article_url).hostname or "").lower()
    if host and host == (urlsplit(feed_url).hostname or "").lower():
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_global
                                   for a in addresses)


def enrich_entries(entries: tuple[Entry, ...], source: Source, fetcher: Fetcher,
                   is_known: Callable[[Entry], bool]) -> tuple[Entry, ...]:
    """Entries with the linked article's text as content, for the ones not stored yet."""
    out: list[Entry] = []
    fetched = 0
    for entry in entries:
        if (fetched >= MAX_ARTICLES_PER_POLL or not is_web_url(entry.link)
                or is_known(entry)):
            out.append(entry)
            continue
        assert entry.link is not None
        if not may_fetch(entry.link, source.url):
            log.info("%s: full text of %s not fetched: not the feed's host nor a public "
                     "address", source.id, entry.link)
            out.append(entry)
            continue
        fetched += 1
        page = replace(source, url=entry.link)
        try:
            result = fetcher.fetch(page, HttpState())
        except SourceError as e:
            # A page over max_bytes is worth a warning: the item silently kept its summary.
            (log.warning if e.detail.startswith("too large") else log.info)(
                "%s: full text of %s not fetched: %s", source.id, entry.link, e.detail)
            out.append(entry)
            continue
        if not may_fetch(result.url, source.url):  # redirected into our own network
            out.append(entry)
            continue
        article = extract_article(result.body, result.url) if result.body else None
        if article is None:
            out.append(entry)
            continue
        summary = entry.summary_html or entry.content_html
        out.append(replace(entry, content_html=article, summary_html=summary,
                           base_url=result.url))
    return tuple(out)
