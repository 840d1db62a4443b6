"""Pure: the output folder of a tag, category or source, as Hugo would name it.

Hugo's taxonomy paths come from ``PathSpec.MakePathSanitized``: Unicode letters,
digits and marks kept, plus ``. _ # + ~ - @ / \\`` and ``%XX`` escapes; a run of
whitespace after some kept text becomes one ``-``; everything else dropped; then
lower-cased. We follow it exactly, so a Hugo site built from the same store has
its taxonomy feeds at the same URLs, except where Hugo's answer would be unsafe
on disk (``/`` or ``\\`` making subfolders, ``.``/``..``, nothing left, a name
too long for the filesystem): then we pick a safe slug of our own.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote

MAX_SLUG_BYTES = 150
_KEPT = frozenset("._#+~-@/\\")
_HEX = frozenset("0123456789abcdefABCDEF")


def _kept(ch: str) -> bool:
    if ch in _KEPT:
        return True
    category = unicodedata.category(ch)
    return category[0] in ("L", "M") or category == "Nd"


def _go_is_space(ch: str) -> bool:
    # Go's unicode.IsSpace; Python's isspace() also counts the \x1c-\x1f separators,
    # which Hugo drops instead of turning them into '-'.
    return ch.isspace() and not "\x1c" <= ch <= "\x1f"


def _go_lower(text: str) -> str:
    # Go's strings.ToLower maps rune by rune (simple case mapping): no final sigma
    # (ΟΔΟΣ -> οδοσ, where str.lower() gives οδος) and İ -> i (not i + U+0307).
    return "".join("i" if ch == "\u0130" else ch.lower() for ch in text)


@lru_cache(maxsize=65536)  # a publish asks for the same few thousand terms again and again
def hugo_urlize(term: str) -> str:
    """Hugo's MakePathSanitized (UnicodeSanitize + ToLower), character for character."""
    target: list[str] = []
    prepend_hyphen = False
    was_hyphen = False
    for i, ch in enumerate(term):
        allowed = _kept(ch) or (ch == "%" and i + 2 < len(term) and term[i + 1] in _HEX
                                and term[i + 2] in _HEX)
        if allowed:
            was_hyphen = ch == "-"
            if prepend_hyphen:
                if not was_hyphen:
                    target.append("-")
                prepend_hyphen = False
            target.append(ch)
        elif target and not was_hyphen and _go_is_space(ch):
            prepend_hyphen = True
    return _go_lower("".join(target))


def _digest(term: str) -> str:
    return hashlib.sha1(term.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def is_safe_slug(slug: str) -> bool:
    # A '%XX' that Hugo keeps would be decoded by the web server into another path
    # than the folder on disk, so it counts as unsafe here too.
    return (bool(slug) and slug not in (".", "..") and "/" not in slug and "\\" not in slug
            and "\x00" not in slug and len(slug.encode("utf-8")) <= MAX_SLUG_BYTES
            and "%" not in slug)


@lru_cache(maxsize=65536)
def term_slug(term: str) -> str:
    """Hugo's slug when it is safe on disk, else a safe one derived from it."""
    slug = hugo_urlize(term)
    if is_safe_slug(slug):
        return slug
    safe = re.sub(r"[/\\%]+", "-", slug)
    safe = re.sub(r"-{2,}", "-", safe)
    safe = re.sub(r"^[.-]+|-+$", "", safe)  # no '.', '..' or hidden name left at the start
    encoded = safe.encode("utf-8")[:MAX_SLUG_BYTES - 9].decode("utf-8", "ignore").rstrip("-")
    # Hash Hugo's slug, not the raw term: 'A/B' and 'a/b' are one term to Hugo (one
    # feed), so they must share one folder here too. A term Hugo empties ('!!!') has
    # no slug to hash; its own text keeps it apart from other such terms.
    digest = _digest(slug or term)
    return f"{encoded}-{digest}" if encoded else f"term-{digest}"


def assign_slugs(terms: Iterable[str]) -> dict[str, str]:
    """term -> folder for every term of one taxonomy, no two Hugo terms in one folder.

    A derived slug ('etc-1a2b3c4d') could equal another term's own Hugo slug (a tag
    spelt 'etc-1a2b3c4d'), or two derived slugs could share a digest; Hugo's slugs
    are kept (they must match a Hugo site) and a derived one that is taken gets a
    '-2', '-3'... suffix. Pure and independent of the order of ``terms``.
    """
    unique = set(terms)
    hugo = {t: hugo_urlize(t) for t in unique}
    owner: dict[str, str] = {}  # folder -> the Hugo key of the term(s) in it
    out: dict[str, str] = {}
    for term in sorted(unique, key=lambda t: (not is_safe_slug(hugo[t]), t)):
        key = hugo[term] or "\x00" + term
        base = slug = term_slug(term)
        n = 2
        while owner.setdefault(slug, key) != key:
            suffix = f"-{n}"
            slug = base.encode("utf-8")[:MAX_SLUG_BYTES - len(suffix)].decode(
                "utf-8", "ignore") + suffix
            n += 1
        out[term] = slug
    return out


@lru_cache(maxsize=65536)
def url_segment(slug: str) -> str:
    """The slug as it appears in a URL: percent-encoded UTF-8 (人工智能 -> %E4%BA%BA...).

    '#' must be escaped (c# -> c%23) or a browser would read it as a fragment.
    """
    return quote(slug, safe="-._~@+")
