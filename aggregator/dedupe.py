"""Pure dedupe logic: link normalization, the keys an entry is known by, merging.

Two entries are the same item when any key matches, tried in this order (SPEC §3):

1. ``id:``   same source and same entry id (guid / atom:id);
2. ``link:`` same normalized link, across sources; ``frag:`` the same with its fragment,
   for links such as ``/2008/06/26.html#a080605`` that tell items of one page apart;
3. ``hash:`` no id and no link: same title and same date/content hash;
4. ``text:`` same source, same title and content: catches feeds whose GUIDs change
   on every fetch and that carry no stable link either.

Every key an item was ever known by keeps pointing at it, so an entry whose guid
rotates still finds its item through its link or its text. Which match counts is
pipeline._FeedIndex's decision: only an id is certain; the other keys can be shared by
distinct items (a podcast's episodes that all link its home page).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from datetime import datetime
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from aggregator.model import Item

TRACKING_PARAMS = frozenset({
    "spm", "fbclid", "gclid", "dclid", "gclsrc", "msclkid", "yclid", "mc_cid", "mc_eid",
    "igshid", "_hsenc", "_hsmi", "mkt_tok", "vero_id", "oly_anon_id", "oly_enc_id",
    "wickedid", "twclid", "ttclid", "scm", "share_token", "from_source",
})
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hmsr", "hmpl", "hmcu", "hmkw", "hmci")
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = "-._~"
_PATH_SAFE = "/:@!$&'()*+,;=%" + _UNRESERVED
MAX_CONTENT_UPDATES = 24  # SPEC §3: an item whose content churns is left alone after this


def normalize_link(url: str) -> str:
    """The form of a link used to compare items across sources.

    Lower-case scheme and host, no default port, no fragment, tracking parameters
    (utm_*, spm, fbclid, gclid...) dropped, remaining query sorted, percent-escapes
    of unreserved characters decoded.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if not host.isascii():
        # An IDN host compares equal to its punycode form (例子.测试 == xn--fsqu00a.xn--0zwm56d).
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    if ":" in host:  # urlsplit's hostname drops an IPv6 literal's brackets; put them back
        host = f"[{host}]"
    if port is not None and DEFAULT_PORTS.get(scheme) != port:
        host = f"{host}:{port}"
    if parts.username:
        auth = parts.username + (f":{parts.password}" if parts.password else "")
        host = f"{auth}@{host}"
    path = quote(parts.path, safe=_PATH_SAFE)
    if scheme:  # without one, decoding '%41:' would make 'A:' read as a scheme next time
        path = _normalize_escapes(path)
    if not host and path.startswith("//"):
        path = "/" + path.lstrip("/")  # else it would read as a host ('////x' -> '//x')
    path = path or ("/" if host else "")
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in TRACKING_PARAMS and not k.lower().startswith(TRACKING_PREFIXES)
    ]
    query.sort()
    return urlunsplit((scheme, host, path, urlencode(query, quote_via=quote), ""))


_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _normalize_escapes(path: str) -> str:
    """Decode escapes of unreserved characters only (RFC 3986 6.2.2.2), upper-case the rest.

    Decoding every escape would make ``a%2Fb`` equal ``a/b``: different resources.
    A '%' that starts no escape is escaped itself, so the result is stable.
    """
    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        if ch.isascii() and (ch.isalnum() or ch in _UNRESERVED):
            return ch
        return "%" + m.group(1).upper()

    return _ESCAPE.sub(fix, _STRAY_PERCENT.sub("%25", path))


def digest(*parts: str) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _squash(text: str) -> str:
    r"""Whitespace collapsed: re.sub(r"\s+", " ", text).strip(), which the stored keys were
    made with (both go by str.isspace()), several times faster."""
    return " ".join(text.split())


def entry_keys(source_id: str, entry_id: str | None, link: str | None, title: str,
               text: str, date: datetime | None) -> list[str]:
    """Every key this entry is known by, strongest first."""
    keys: list[str] = []
    if entry_id:
        keys.append(f"id:{source_id}\x00{entry_id.strip()}")
    if link:
        keys += link_keys(link)
    if not entry_id and not link:
        stamp = date.isoformat() if date else digest(_squash(text))
        keys.append(f"hash:{digest(_squash(title), stamp)}")
    if title.strip() or text.strip():
        keys.append(f"text:{source_id}\x00{digest(_squash(title), _squash(text))}")
    return keys


def link_keys(link: str) -> list[str]:
    """``link:`` the normalized link; ``frag:`` it with the link's fragment, when it has one."""
    normalized = normalize_link(link)
    fragment = link_fragment(link)
    return [f"link:{normalized}"] + ([f"frag:{normalized}#{fragment}"] if fragment else [])


def link_fragment(link: str | None) -> str:
    """The fragment of a link ('' for none): what tells items on one page apart."""
    return link.strip().partition("#")[2] if link and "#" in link else ""


def shared_link_key(source_id: str, link: str) -> str:
    """A marker: this source has several items with this link, so within the source the
    link identifies none of them (never a key an entry is found by)."""
    return f"shared:{source_id}\x00{normalize_link(link)}"


def content_hash(item: Item) -> str:
    """What counts as a change of an entry's content: title, summary and body."""
    return digest(item.title, item.summary, item.body, item.thumbnail or "")


def merge_terms(existing: tuple[str, ...], added: tuple[str, ...]) -> tuple[str, ...]:
    """Union keeping first spelling and order; duplicates compared case-insensitively."""
    seen = {t.casefold() for t in existing}
    out = list(existing)
    for term in added:
        if term.casefold() not in seen:
            seen.add(term.casefold())
            out.append(term)
    return tuple(out)


def add_source(item: Item, source_id: str, tags: tuple[str, ...],
               categories: tuple[str, ...]) -> Item:
    """The item as listed by one more source: its tags, categories and id added."""
    sources = item.all_sources
    if source_id not in sources:
        sources = (*sources, source_id)
    return replace(
        item,
        tags=merge_terms(item.tags, tags),
        categories=merge_terms(item.categories, categories),
        sources=sources if len(sources) > 1 else (),
    )


def apply_update(old: Item, new: Item, now: datetime) -> Item:
    """The first source re-polled a changed entry: new text, old identity and extra terms."""
    return replace(
        new,
        date=old.date,
        source=old.source,
        guid=old.guid or new.guid,
        link=old.link or new.link,
        tags=merge_terms(new.tags, old.tags),
        categories=merge_terms(new.categories, old.categories),
        sources=old.sources,
        lastmod=now.astimezone(old.date.tzinfo).replace(microsecond=0),  # in date's zone
        extra=old.extra,
    )
