"""Table-driven tests of the folder names of tags and categories (SPEC §4).

`hugo_urlize` must give the folder Hugo (0.111, `MakePathSanitized` + `ToLower`) gives
a term; tests/test_hugo_paths.py checks that against the real `hugo`. `term_slug` is
that folder when it is safe on disk, else a safe one of our own; `url_segment` is how
the folder appears in a URL.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.slug import (
    MAX_SLUG_BYTES,
    assign_slugs,
    hugo_urlize,
    is_safe_slug,
    term_slug,
    url_segment,
)

HUGO_CASES = [
    ("人工智能", "人工智能"),                 # Chinese kept as it is
    ("大模型", "大模型"),
    ("AI 医疗", "ai-医疗"),                   # space -> '-', lower-cased
    ("Machine Learning", "machine-learning"),
    ("Machine   \t Learning", "machine-learning"),  # a run of whitespace -> one '-'
    ("  leading and trailing  ", "leading-and-trailing"),
    ("a - b", "a-b"),                          # no '--' around an explicit hyphen
    ("e-mail", "e-mail"),
    ("C#", "c#"),
    ("C++", "c++"),
    (".NET", ".net"),
    ("Node.js", "node.js"),
    ("R&D", "rd"),                              # punctuation dropped
    ("foo!bar?", "foobar"),
    ("50%", "50"),                              # '%' kept only before two hex digits
    ("%41bc", "%41bc"),
    ("@home", "@home"),
    ("~tilde", "~tilde"),
    ("under_score", "under_score"),
    ("A/B testing", "a/b-testing"),             # Hugo keeps '/': a subfolder (unsafe here)
    ("back\\slash", "back\\slash"),
    ("MixedCase", "mixedcase"),
    ("café", "café"),                           # letters with accents kept
    ("cafe\u0301", "cafe\u0301"),               # combining marks kept
    ("١٢٣", "١٢٣"),                             # decimal digits of any script
    ("x²", "x"),                                # other numbers dropped
    ("Ⅻ", ""),
    ("a\u200fb", "ab"),                         # RTL mark (a format character) dropped
    ("\u202eevil", "evil"),                     # right-to-left override dropped
    ("ΟΔΟΣ", "οδοσ"),                           # Go lowers rune by rune: no final sigma
    ("İstanbul", "istanbul"),                   # Go: İ -> i, not i + U+0307
    ("x\x1cy", "xy"),                           # not a space to Go: dropped
    ("x\u3000y", "x-y"),                        # ideographic space is one
    ("CON", "con"),
    ("", ""),
    ("   ", ""),
    ("!!!", ""),
]


@pytest.mark.parametrize(("term", "expected"), HUGO_CASES)
def test_hugo_urlize(term: str, expected: str) -> None:
    assert hugo_urlize(term) == expected


SAFE_AS_HUGO = ["人工智能", "AI 医疗", "C#", ".NET", "R&D", "CON", "MixedCase", "c++",
                "@home", "ΟΔΟΣ"]


@pytest.mark.parametrize("term", SAFE_AS_HUGO)
def test_term_slug_is_hugos_when_safe(term: str) -> None:
    assert is_safe_slug(hugo_urlize(term))
    assert term_slug(term) == hugo_urlize(term)


HOSTILE = ["../../etc", "..", ".", "/", "\\", "\x00", "a\x00b", "", "   ", "\t\n",
           "A/B testing", "a/../../b", "..\\..\\windows", "/etc/passwd", "%2e%2e", "%2F",
           "x" * 1000, "人" * 400, "\u200f\u200e", "!!!", "..." * 60, ". .", "-/-"]


@pytest.mark.parametrize("term", HOSTILE)
def test_term_slug_is_always_safe(term: str) -> None:
    slug = term_slug(term)
    assert is_safe_slug(slug), slug
    assert slug not in ("", ".", "..")
    assert not slug.startswith(".") or hugo_urlize(term) == slug
    for bad in ("/", "\\", "\x00", "%"):
        assert bad not in slug
    assert len(slug.encode("utf-8")) <= MAX_SLUG_BYTES
    assert slug == term_slug(term), "not stable"


def test_long_terms_are_cut_to_150_bytes_and_stay_apart() -> None:
    a, b = "x" * 1000, "x" * 999 + "y"
    assert len(term_slug(a).encode()) <= 150
    assert len(term_slug("医" * 1000).encode()) <= 150
    assert term_slug(a) != term_slug(b)


def test_hostile_terms_that_would_collide_get_distinct_slugs() -> None:
    terms = ["../etc", "../../etc", "..\\etc", "/etc", "etc/", "./etc"]
    assert len({term_slug(t) for t in terms}) == len(terms)


def test_terms_hugo_merges_share_a_slug_even_when_derived() -> None:
    # 'A/B' and 'a/b' are one term to Hugo, so one feed here too.
    assert term_slug("A/B Testing") == term_slug("a/b testing")
    assert term_slug("AI") == term_slug("ai")


def test_assign_slugs_keeps_hugo_slugs_and_avoids_taken_folders() -> None:
    derived = term_slug("../../etc")
    slugs = assign_slugs(["../../etc", derived, "AI", "ai", "人工智能"])
    assert slugs[derived] == derived  # a term's own Hugo slug wins
    assert slugs["../../etc"] != derived
    assert is_safe_slug(slugs["../../etc"])
    assert slugs["AI"] == slugs["ai"] == "ai"
    assert slugs["人工智能"] == "人工智能"
    # Independent of the order terms come in.
    assert assign_slugs(reversed(list(slugs))) == slugs


@pytest.mark.parametrize(("slug", "segment"), [
    ("人工智能", "%E4%BA%BA%E5%B7%A5%E6%99%BA%E8%83%BD"),
    ("c#", "c%23"),
    ("ai-医疗", "ai-%E5%8C%BB%E7%96%97"),
    ("c++", "c++"),
    (".net", ".net"),
    ("machine-learning", "machine-learning"),
    ("@home", "@home"),
    ("~tilde", "~tilde"),
    ("a?b", "a%3Fb"),
])
def test_url_segment(slug: str, segment: str) -> None:
    assert url_segment(slug) == segment


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_term_slug_is_safe_for_any_text(term: str) -> None:
    slug = term_slug(term)
    assert is_safe_slug(slug)
    assert slug == hugo_urlize(term) or not is_safe_slug(hugo_urlize(term))
