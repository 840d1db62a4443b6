"""The data that flows between pipeline stages: frozen dataclasses, no I/O.

    Config/Source --fetch--> FetchResult --parse--> ParsedFeed(Entry...)
        --dedupe/store--> Item (one Markdown file) --publish--> FeedSpec outputs
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

FrozenMapping = Mapping[str, Any]


class FrozenDict(dict[str, Any]):
    """A dict that refuses changes, so a frozen dataclass cannot be changed through its
    dict field; unlike MappingProxyType it pickles (items cross process boundaries)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("FrozenDict cannot be changed")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))


def freeze(mapping: Mapping[str, Any] | None) -> FrozenMapping:
    """A read-only copy, safe inside frozen dataclasses and across processes."""
    return FrozenDict(mapping or {})


@dataclass(frozen=True)
class Site:
    title: str
    description: str
    base_url: str  # always ends with "/"
    language: str
    timezone: str  # IANA name, used for store dates that carry no offset
    websub_hub: str | None = None


@dataclass(frozen=True)
class Defaults:
    interval: timedelta = timedelta(minutes=30)
    timeout: float = 20.0  # seconds, for the whole fetch
    max_bytes: int = 10 * 1024 * 1024
    keep_items: int = 50
    interval_auto: bool = False  # `interval: auto`; `interval` is then the fallback
    # Bounds on what one feed can make us store and publish (a hostile feed's attack on
    # the disk: issue 20). See README "Security" for why these numbers.
    max_tags: int = 32  # a feed's own categories kept per item
    max_items: int = 1000  # entries taken from one feed per poll
    max_new_terms: int = 200  # tags not yet published that one source adds per poll


@dataclass(frozen=True)
class Source:
    id: str
    url: str  # http(s) URL, or an absolute file: URL (local paths are turned into these)
    title: str | None = None  # None: the feed's own title
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    lang: str | None = None  # None: the feed's language, else the site's
    interval: timedelta = timedelta(minutes=30)
    timeout: float = 20.0
    max_bytes: int = 10 * 1024 * 1024
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    enabled: bool = True
    full_text: bool = False
    max_tags: int = 32
    max_items: int = 1000
    max_new_terms: int = 200
    line: int | None = None  # where it stands in feeds.yaml, for messages
    # `interval: auto`: follow the feed's rhythm (schedule.choose_interval); `interval`
    # is used until two dated items are known.
    interval_auto: bool = False

    @property
    def is_http(self) -> bool:
        return self.url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Config:
    path: Path
    site: Site
    store_dir: Path
    output_dir: Path
    defaults: Defaults
    front_matter: FrozenMapping = field(default_factory=dict)
    sources: tuple[Source, ...] = ()
    after_publish: tuple[str, ...] = ()  # argv run after a publish that changed files
    after_publish_timeout: float = 600.0  # seconds; then its process group is killed

    def source(self, source_id: str) -> Source | None:
        return next((s for s in self.sources if s.id == source_id), None)


@dataclass(frozen=True)
class HttpState:
    """What a source's last fetch told us, kept between polls (and restarts)."""

    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None  # after a 301/308, where to go next time


@dataclass(frozen=True)
class FetchResult:
    status: Literal["ok", "not_modified"]
    url: str  # the URL that answered (after redirects)
    body: bytes = b""
    headers: FrozenMapping = field(default_factory=dict)  # lower-cased names
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None  # set when a permanent redirect was followed
    max_age: timedelta | None = None  # Cache-Control max-age: do not poll sooner


@dataclass(frozen=True)
class Entry:
    """One entry as the feed gave it, before it becomes a store item."""

    entry_id: str | None
    link: str | None
    title: str  # may be empty: the store derives one from the text
    content_html: str  # the fullest HTML the entry has (content, else summary)
    summary_html: str  # the entry's own summary, if any
    published: datetime | None
    updated: datetime | None
    author: str | None = None
    categories: tuple[str, ...] = ()
    thumbnail: str | None = None
    base_url: str = ""  # for resolving relative links in the HTML


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    link: str | None
    language: str | None
    entries: tuple[Entry, ...]
    warning: str | None = None  # bozo message of a feed that still had entries
    min_interval: timedelta | None = None  # ttl / sy:updatePeriod: do not poll sooner


@dataclass(frozen=True)
class Item:
    """One store file: its front matter and Markdown body.

    Hand-written files may lack link/guid/source; ``extra`` holds every front
    matter key we do not model (theme keys, ``translations``...) in file order.
    """

    title: str
    date: datetime
    summary: str = ""
    categories: tuple[str, ...] = ()
    lang: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    thumbnail: str | None = None
    author: str | None = None
    link: str | None = None
    source: str | None = None
    guid: str | None = None
    sources: tuple[str, ...] = ()  # every source that lists it, first one first
    lastmod: datetime | None = None
    extra: FrozenMapping = field(default_factory=dict)
    body: str = ""

    @property
    def all_sources(self) -> tuple[str, ...]:
        if self.sources:
            return self.sources
        return (self.source,) if self.source else ()


@dataclass(frozen=True)
class StoredItem:
    """An item as publish sees it: where it lives and what its body renders to."""

    path: str  # relative to the store, POSIX separators
    item: Item
    html: str  # the body rendered to sanitized HTML with absolute URLs


FeedKind = Literal["all", "tag", "category", "source"]


@dataclass(frozen=True)
class FeedSpec:
    """One published feed: which items and where it goes."""

    kind: FeedKind
    term: str  # the tag, category or source id as written; "" for all items
    slug: str  # the folder under tags/, categories/ or sources/
    title: str

    @property
    def directory(self) -> str:
        """Relative output folder, POSIX separators, "" for the site-wide feeds."""
        if self.kind == "all":
            return ""
        folder = {"tag": "tags", "category": "categories", "source": "sources"}[self.kind]
        return f"{folder}/{self.slug}"


SourceStatus = Literal["ok", "not_modified", "error", "skipped"]


@dataclass(frozen=True)
class SourceReport:
    """What one source's poll did, for the CLI line and --json."""

    id: str
    status: SourceStatus
    new: int = 0
    updated: int = 0
    error: str | None = None
    seconds: float = 0.0
    warning: str | None = None
