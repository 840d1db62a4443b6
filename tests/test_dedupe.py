"""Dedupe (SPEC §3): link normalization, entry keys, merging terms and sources. Pure tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from aggregator.dedupe import (
    add_source,
    apply_update,
    content_hash,
    digest,
    entry_keys,
    link_keys,
    merge_terms,
    normalize_link,
)
from aggregator.model import Item, freeze

T0 = datetime(2025, 2, 14, 10, 49, 11, tzinfo=timezone(timedelta(hours=8)))


@pytest.mark.parametrize(("url", "expected"), [
    # scheme and host are case-insensitive; the path is not
    ("HTTP://Example.COM/News/A", "http://example.com/News/A"),
    ("https://EXAMPLE.com.", "https://example.com/"),
    # default ports go, others stay
    ("http://example.com:80/a", "http://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:8080/a", "http://example.com:8080/a"),
    ("https://example.com:80/a", "https://example.com:80/a"),
    # fragment dropped
    ("http://example.com/a#comments", "http://example.com/a"),
    ("http://example.com/a?#", "http://example.com/a"),
    # tracking parameters dropped, any case; the rest sorted
    ("http://example.com/a?utm_source=rss&b=2&a=1&utm_medium=feed",
     "http://example.com/a?a=1&b=2"),
    ("http://example.com/a?spm=1.2&fbclid=z&gclid=q&id=5", "http://example.com/a?id=5"),
    ("http://example.com/a?UTM_Campaign=x&ID=5", "http://example.com/a?ID=5"),
    ("http://example.com/a?utm_source=rss", "http://example.com/a"),
    ("http://example.com/a?b=1&b=0", "http://example.com/a?b=0&b=1"),
    ("http://example.com/a?q", "http://example.com/a?q="),
    ("http://example.com/a?q=a+b", "http://example.com/a?q=a%20b"),
    ("http://example.com/a?q=a%2Bb", "http://example.com/a?q=a%2Bb"),
    ("http://example.com/a?q=中", "http://example.com/a?q=%E4%B8%AD"),
    # escapes of unreserved characters decoded; reserved ones kept (a%2Fb is not a/b)
    ("http://example.com/%7Euser/%41b%2d", "http://example.com/~user/Ab-"),
    ("http://example.com/a%2Fb", "http://example.com/a%2Fb"),
    ("http://example.com/a%2fb%3f", "http://example.com/a%2Fb%3F"),
    ("http://example.com/a b", "http://example.com/a%20b"),
    ("http://example.com/100%", "http://example.com/100%25"),
    # Chinese paths, IDN hosts: encoded and decoded forms compare equal
    ("https://example.com/新闻/一", "https://example.com/%E6%96%B0%E9%97%BB/%E4%B8%80"),
    ("https://example.com/%e6%96%b0%e9%97%bb/%E4%B8%80",
     "https://example.com/%E6%96%B0%E9%97%BB/%E4%B8%80"),
    ("http://例子.测试/a", "http://xn--fsqu00a.xn--0zwm56d/a"),
    ("http://XN--FSQU00A.xn--0zwm56d/a", "http://xn--fsqu00a.xn--0zwm56d/a"),
    # empty path is "/"; user info and IPv6 literals survive
    ("http://example.com", "http://example.com/"),
    ("http://user:pw@Example.com/", "http://user:pw@example.com/"),
    ("http://[::1]:80/x", "http://[::1]/x"),
    ("http://[2001:DB8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
    # not web URLs: left alone, but never a crash
    ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"),
    ("tag:example.com,2025:1", "tag:example.com,2025:1"),
    ("  http://example.com/a  ", "http://example.com/a"),
    ("", ""),
    ("http://[::1/x", "http://[::1/x"),  # invalid IPv6: returned as given
    ("http://example.com:99999/", "http://example.com:99999/"),
    ("not a url", "not%20a%20url"),
])
def test_normalize_link(url: str, expected: str) -> None:
    assert normalize_link(url) == expected
    assert normalize_link(expected) == expected  # a fixed point


@pytest.mark.parametrize(("a", "b"), [
    ("https://Example.org/a/20250214-001?utm_source=rss#top",
     "https://example.org/a/20250214-001"),
    ("http://example.org:80/a?y=2&x=1", "http://example.org/a?x=1&y=2"),
    ("https://example.org/%E6%96%B0%E9%97%BB", "https://example.org/新闻"),
])
def test_same_story_same_link_key(a: str, b: str) -> None:
    assert entry_keys("one", None, a, "t", "x", None)[0] == entry_keys(
        "two", None, b, "other title", "y", None)[0]


def test_entry_keys_order_and_content() -> None:
    keys = entry_keys("qq", " guid-1 ", "HTTP://Example.org/a?utm_source=x", "Title", "Text", T0)
    assert keys == [
        "id:qq\x00guid-1",
        "link:http://example.org/a",
        f"text:qq\x00{digest('Title', 'Text')}",
    ]


@pytest.mark.parametrize(("link", "keys"), [
    ("http://s.example/2025/06/26.html#a080605",
     ["link:http://s.example/2025/06/26.html", "frag:http://s.example/2025/06/26.html#a080605"]),
    ("https://B.example/p/?utm_source=x#comment-7",
     ["link:https://b.example/p/", "frag:https://b.example/p/#comment-7"]),
    ("https://b.example/p/#", ["link:https://b.example/p/"]),
    ("https://b.example/p/", ["link:https://b.example/p/"]),
])
def test_a_link_with_a_fragment_has_a_frag_key_too(link: str, keys: list[str]) -> None:
    """The fragment tells items of one page apart (a day page's anchors, a post's
    comments); the link: key stays as before, so stores made before match as they did."""
    assert link_keys(link) == keys
    assert entry_keys("s", "g", link, "t", "x", None)[1:-1] == keys


def test_entry_id_is_per_source_link_is_not() -> None:
    a = entry_keys("a", "1", "https://e.org/x", "t", "x", None)
    b = entry_keys("b", "1", "https://e.org/x", "t", "x", None)
    assert a[0] != b[0]  # same guid, other source: not the same item by id
    assert a[1] == b[1]  # same link: the same item across sources


def test_hash_key_only_without_id_and_link() -> None:
    no_date = entry_keys("s", None, None, "Title", "Some  text\n", None)
    assert no_date == [
        f"hash:{digest('Title', digest('Some text'))}",
        f"text:s\x00{digest('Title', 'Some text')}",
    ]
    dated = entry_keys("s", None, None, "Title", "Some text", T0)
    assert dated[0] == f"hash:{digest('Title', T0.isoformat())}"
    assert not any(k.startswith("hash:") for k in entry_keys("s", "id", None, "T", "x", T0))
    assert not any(k.startswith("hash:") for k in entry_keys("s", None, "http://e/", "T", "x", T0))


def test_hash_key_ignores_whitespace_and_source() -> None:
    a = entry_keys("a", None, None, " Title ", "one\n two", None)[0]
    b = entry_keys("b", None, None, "Title", "one two", None)[0]
    assert a == b


def test_text_key_survives_rotating_guids() -> None:
    first = entry_keys("s", "guid-1", None, "Title", "Body", T0)
    second = entry_keys("s", "guid-2", None, "Title", "Body", T0 + timedelta(minutes=5))
    assert first[0] != second[0]
    assert first[-1] == second[-1] and first[-1].startswith("text:")


def test_no_text_key_for_an_empty_entry() -> None:
    assert entry_keys("s", "id", None, "  ", "", None) == ["id:s\x00id"]


def test_digest_separates_parts_and_survives_surrogates() -> None:
    assert digest("ab", "c") != digest("a", "bc")
    assert len(digest("\ud800")) == 40


@pytest.mark.parametrize(("existing", "added", "expected"), [
    ((), (), ()),
    (("医疗",), ("AI", "医疗"), ("医疗", "AI")),
    (("AI",), ("ai", "Ai", "ML"), ("AI", "ML")),  # first spelling wins
    ((), ("ml", "ML", "Ml"), ("ml",)),
    (("Straße",), ("STRASSE",), ("Straße",)),  # casefold, not lower
    (("b", "a"), ("c",), ("b", "a", "c")),  # order kept
])
def test_merge_terms(existing: tuple[str, ...], added: tuple[str, ...],
                     expected: tuple[str, ...]) -> None:
    assert merge_terms(existing, added) == expected


def item(**changes: object) -> Item:
    base = Item(
        title="Title", date=T0, summary="Summary", categories=("qq",), lang=("zh-CN",),
        tags=("qq", "医疗"), thumbnail="https://e.org/1.jpg", author="A",
        link="https://e.org/a", source="qq", guid="g-1",
        extra=freeze({"sidebar": "right"}), body="Body\n",
    )
    return replace(base, **changes)


def test_add_source_adds_terms_and_lists_the_source() -> None:
    merged = add_source(item(), "sina", ("AI", "医疗"), ("国际", "QQ"))
    assert merged.tags == ("qq", "医疗", "AI")
    assert merged.categories == ("qq", "国际")
    assert merged.sources == ("qq", "sina")
    assert merged.source == "qq"  # the first source stays the item's source
    assert (merged.title, merged.body, merged.date) == ("Title", "Body\n", T0)


def test_add_source_is_idempotent() -> None:
    once = add_source(item(), "sina", ("AI",), ("x",))
    assert add_source(once, "sina", ("AI",), ("x",)) == once
    assert add_source(once, "qq", (), ()) == once


def test_add_source_of_its_own_source_lists_nothing_extra() -> None:
    assert add_source(item(), "qq", ("new",), ()).sources == ()


def test_apply_update_keeps_identity_and_takes_new_text() -> None:
    old = item(sources=("qq", "sina"), tags=("qq", "医疗", "from-sina"))
    new = item(title="New title", summary="New summary", body="New body\n", date=T0 + timedelta(1),
               guid="g-2", link="https://e.org/moved", tags=("qq", "医疗", "fresh"),
               thumbnail=None, extra=freeze({}))
    now = T0 + timedelta(days=2)
    updated = apply_update(old, new, now)
    assert (updated.title, updated.summary, updated.body, updated.thumbnail) == (
        "New title", "New summary", "New body\n", None)
    assert updated.date == T0  # the date it was first published, not the re-poll's
    assert updated.lastmod == now
    assert (updated.guid, updated.link, updated.source) == ("g-1", "https://e.org/a", "qq")
    assert updated.sources == ("qq", "sina")
    assert updated.tags == ("qq", "医疗", "fresh", "from-sina")  # nothing a source added is lost
    assert dict(updated.extra) == {"sidebar": "right"}  # theme keys of the file stay


def test_apply_update_fills_missing_identity_from_the_new_entry() -> None:
    updated = apply_update(item(guid=None, link=None), item(guid="g-9", link="https://e/9"), T0)
    assert (updated.guid, updated.link) == ("g-9", "https://e/9")


@pytest.mark.parametrize("change", [
    {"title": "x"}, {"summary": "x"}, {"body": "x\n"}, {"thumbnail": "https://e.org/2.jpg"},
])
def test_content_hash_sees_content_changes(change: dict[str, object]) -> None:
    assert content_hash(item()) != content_hash(item(**change))


@pytest.mark.parametrize("change", [
    {"date": T0 + timedelta(hours=1)}, {"tags": ("x",)}, {"categories": ("y",)},
    {"sources": ("qq", "b")}, {"lastmod": T0}, {"guid": "other"},
])
def test_content_hash_ignores_metadata(change: dict[str, object]) -> None:
    assert content_hash(item()) == content_hash(item(**change))
