"""Hypothesis properties of the pure parts: things that must hold for any input at all."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from aggregator.config import (
    DEFAULT_KEYS,
    SITE_KEYS,
    SOURCE_KEYS,
    TOP_KEYS,
    format_duration,
    parse_duration,
    parse_yaml,
    validate,
)
from aggregator.content import (
    html_to_markdown,
    markdown_to_html,
    plain_text,
    sanitize_html,
    sanitized_text,
)
from aggregator.content import shorten as shorten_text
from aggregator.dedupe import TRACKING_PARAMS, normalize_link
from aggregator.errors import ConfigError
from aggregator.model import Item, freeze
from aggregator.store import (
    MAX_NAME_BYTES,
    MODELED_KEYS,
    is_safe_relative,
    item_path,
    read_item,
    render_item,
)

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
SHANGHAI = ZoneInfo("Asia/Shanghai")

# Any text except lone surrogates, which no UTF-8 file can hold (they become U+FFFD).
TEXT = st.text(st.characters(codec="utf-8"))
# Pieces URLs are made of, so generated strings look like links often enough to matter.
URL_PIECES = st.sampled_from([
    "http://", "https://", "HTTP://", "//", "Example.COM", "例子.测试", "xn--fsqu00a.xn--0zwm56d",
    "[::1]", "[", "]", ":", ":80", ":443", ":8080", "@", "user:pw@", "/", "/a", "/新闻", "..",
    "%", "%2", "%41", "%2F", "%e4%b8%ad", "%7E", "?", "&", "=", "#", "#frag", "utm_source=x",
    "spm=1", "fbclid=z", "a=1", "b=2", "+", ";", " ", "\t", "\n", "\x00", ".", "~",
])
URLISH = st.one_of(TEXT, st.lists(st.one_of(URL_PIECES, st.text(max_size=3)), max_size=14)
                   .map("".join))


# -- dedupe ---------------------------------------------------------------------------------
@SETTINGS
@given(URLISH)
def test_normalize_link_is_idempotent_and_never_raises(url: str) -> None:
    once = normalize_link(url)
    assert isinstance(once, str)
    assert normalize_link(once) == once


@SETTINGS
@given(host=st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(com|org|cn)", fullmatch=True),
       path=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="/?#%"),
                             min_size=1, max_size=6), max_size=4),
       params=st.lists(st.tuples(st.sampled_from(["id", "page", "utm_source", "utm_medium",
                                                  "spm", "fbclid", "gclid", "q"]),
                                 st.text(st.characters(codec="utf-8"), max_size=5)),
                       max_size=5),
       fragment=st.text(max_size=5))
def test_normalized_web_links_lose_tracking_and_fragments(host: str, path: list[str],
                                                          params: list[tuple[str, str]],
                                                          fragment: str) -> None:
    from urllib.parse import quote, urlencode
    url = f"HTTPS://{host.upper()}:443/" + "/".join(quote(p) for p in path)
    if params:
        url += "?" + urlencode(params)
    url += "#" + quote(fragment)
    normal = normalize_link(url)
    assert normal.startswith(f"https://{host}/")
    assert "#" not in normal
    query = normal.partition("?")[2]
    keys = [pair.split("=", 1)[0] for pair in query.split("&") if pair]
    assert not any(k in TRACKING_PARAMS or k.startswith("utm_") for k in keys)
    assert keys == sorted(keys)
    # Reordering the query or changing the case of the host changes nothing.
    reordered = url.replace(host.upper(), host)
    if params:
        reordered = url.split("?")[0] + "?" + urlencode(list(reversed(params))) + "#"
    assert normalize_link(reordered) == normal


# -- durations ------------------------------------------------------------------------------
@SETTINGS
@given(st.integers(min_value=1, max_value=10**8))
def test_parse_duration_round_trips_format_duration(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from("dhms")), min_size=1, max_size=4))
def test_parse_duration_adds_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    seconds = sum(n * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds == 0:
        return
    assert parse_duration(text) == timedelta(seconds=seconds)


@SETTINGS
@given(st.one_of(TEXT, st.integers(), st.floats(allow_nan=True, allow_infinity=True)))
def test_parse_duration_gives_a_positive_delta_or_a_value_error(value: object) -> None:
    try:
        delta = parse_duration(value)
    except ValueError:
        return
    assert delta > timedelta(0)


# -- config ---------------------------------------------------------------------------------
_CONFIG_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=12),
    st.sampled_from(["15m", "10MB", "0s", "http://[bad", "file:x.xml", "file://host/x", "a.xml",
                     "Asia/Shanghai", "Mars/Base", "(", "[a-", "https://e.example/", "~/x"]))
_CONFIG_KEYS = st.sampled_from(sorted(TOP_KEYS | SITE_KEYS | SOURCE_KEYS | DEFAULT_KEYS)
                               + ["Title", "colour"])
_CONFIG_VALUES = st.recursive(_CONFIG_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_CONFIG_KEYS, inner, max_size=6)),
    max_leaves=25)


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(TOP_KEYS)), _CONFIG_VALUES, max_size=6))
def test_any_config_document_validates_or_gives_one_config_error(document: dict) -> None:
    path = Path("/srv/site/feeds.yaml")
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        config = validate(parse_yaml(text, path), path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}:") and "\n" not in str(e)
    else:
        assert all(s.url.startswith(("http://", "https://", "file:")) for s in config.sources)
        assert config.defaults.interval > timedelta(0)


# -- store paths ----------------------------------------------------------------------------
@SETTINGS
@given(source_id=st.from_regex(r"[a-z0-9_-]{1,40}", fullmatch=True),
       title=TEXT, link=st.one_of(st.none(), URLISH), key=st.text(),
       when=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1),
                         timezones=st.just(UTC)),
       dated=st.booleans())
def test_item_path_is_always_safe(source_id: str, title: str, link: str | None, key: str,
                                  when: datetime, dated: bool) -> None:
    path = item_path(source_id, Item(title=title, date=when, link=link), key, dated)
    assert is_safe_relative(path), path
    folder, name = path.split("/")
    assert folder == source_id and name.endswith(".md")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and ".." not in name
    assert len(name.encode()) <= MAX_NAME_BYTES


# -- store files -------------------------------------------------------------------------
def _terms(values: list[str]) -> tuple[str, ...]:
    """What a list of terms is in a file: stripped, non-empty, no exact duplicates."""
    out: list[str] = []
    for value in values:
        if value.strip() and value.strip() not in out:
            out.append(value.strip())
    return tuple(out)


TRICKY = st.sampled_from(['"', "'", "\\", "\n", "\r", "\t", "\u2028", "\u2029", "\x00", "\x07",
                          "\x1b", "\x7f", "\x85", "\ufeff", "---", "# ", ": ", "- ", "{", "[",
                          "中文", "😀", "yes", "null", "~", "&a", "*b", "!c", "%", "@", "`"])
RICH = st.lists(st.one_of(TRICKY, TEXT), max_size=6).map("".join)
EXTRA_KEYS = st.text(st.characters(codec="utf-8", categories=("L", "N")), min_size=1,
                     max_size=8).filter(lambda k: k not in MODELED_KEYS)
EXTRA_VALUES = st.one_of(st.booleans(), st.integers(-10**6, 10**6), RICH,
                         st.lists(RICH, max_size=3))


@st.composite
def items(draw: st.DrawFn) -> Item:
    # Blank lines (of any whitespace) between the front matter and the text mean nothing.
    body = re.sub(r"^(?:\s*\n)+", "", draw(RICH)).rstrip("\n")
    return Item(
        title=draw(RICH.filter(lambda t: t != "")),  # an empty title reads as the file name
        date=draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                               timezones=st.sampled_from([UTC, SHANGHAI,
                                                          ZoneInfo("America/New_York")]),
                               allow_imaginary=False)).replace(microsecond=0),
        summary=draw(RICH),
        categories=_terms(draw(st.lists(RICH, max_size=4))),
        lang=_terms(draw(st.lists(st.sampled_from(["zh-CN", "en", "ja"]), max_size=2))),
        tags=_terms(draw(st.lists(RICH, max_size=5))),
        thumbnail=draw(st.one_of(st.none(), RICH.filter(bool))),
        author=draw(st.one_of(st.none(), RICH.filter(bool))),
        link=draw(st.one_of(st.none(), RICH.filter(bool))),
        source=draw(st.one_of(st.none(), st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True))),
        guid=draw(st.one_of(st.none(), RICH.filter(bool))),
        sources=draw(st.one_of(st.just(()), st.lists(
            st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), min_size=2, max_size=3,
            unique=True).map(tuple))),
        lastmod=draw(st.one_of(st.none(), st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
            timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)))),
        extra=freeze(draw(st.dictionaries(EXTRA_KEYS, EXTRA_VALUES, max_size=3))),
        # A body is stored between blank lines and ends with one newline.
        body=body + "\n" if body.strip() else "",
    )


@SETTINGS
@given(items())
def test_render_then_read_gives_the_same_item(item: Item) -> None:
    text = render_item(item)
    text.encode("utf-8")  # always writable
    # A file holds an offset, not a zone name; Python never calls a datetime in a zone with
    # DST equal to one with a fixed offset when its offset depends on `fold`, so compare those.
    assert read_item(text, SHANGHAI) == replace(item, date=_fixed(item.date),
                                                lastmod=_fixed(item.lastmod))
    assert render_item(read_item(text, SHANGHAI)) == text


def _fixed(when: datetime | None) -> datetime | None:
    return when.astimezone(timezone(when.utcoffset())) if when else None  # type: ignore[arg-type]


@SETTINGS
@given(st.text())  # lone surrogates included
def test_any_title_gives_a_readable_file(title: str) -> None:
    item = Item(title=title or "x", date=datetime(2025, 2, 14, tzinfo=UTC), summary=title,
                tags=(title,) if title.strip() else (), body=title)
    text = render_item(item)
    text.encode("utf-8")
    back = read_item(text, SHANGHAI)
    scrub = re.compile("[\ud800-\udfff]")
    assert back.title == scrub.sub("\ufffd", title or "x")
    assert back.summary == scrub.sub("\ufffd", title)


# -- content ------------------------------------------------------------------------------
_RAW_ON = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_RAW_OFF = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
CHARS = st.sampled_from(list("ab \\*_`[]()<>&;#!-+.=|~:/\"'1") + [
    "&lt;", "&amp;", "&gt;", "\n", "中", "http://x.example", "1. ", "- ", "> ", "```", "    ",
    "&lt;script&gt;", "&lt;b onclick=x&gt;"])
LEAF = st.lists(CHARS, min_size=1, max_size=8).map(lambda parts: "x" + "".join(parts) + "x")


def _inline(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(st.sampled_from(["b", "i", "em", "strong", "code", "span"]), children)
        .map(lambda t: f"<{t[0]}>{t[1]}</{t[0]}>"),
        st.tuples(LEAF, children).map(
            lambda t: f'<a href="http://e.example/{html.escape(t[0])}">{t[1]}</a>'),
        st.lists(children, min_size=1, max_size=3).map(" ".join),
        st.just("<br>"),
    )


INLINE = st.recursive(LEAF.map(lambda t: html.escape(t, quote=False)), _inline, max_leaves=6)
BLOCK = st.one_of(
    st.tuples(st.sampled_from(["p", "h2", "blockquote", "pre", "div"]), INLINE)
    .map(lambda t: f"<{t[0]}>{t[1]}</{t[0]}>"),
    st.lists(INLINE, min_size=1, max_size=3)
    .map(lambda items: "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"),
)


@SETTINGS
@given(st.lists(BLOCK, min_size=1, max_size=3).map("".join))
def test_markdown_keeps_the_text_and_holds_no_raw_html(fragment: str) -> None:
    clean = sanitize_html(fragment)
    markdown = html_to_markdown(clean)
    assert _RAW_ON.render(markdown) == _RAW_OFF.render(markdown)
    rendered = markdown_to_html(markdown)
    assert plain_text(rendered).replace(" ", "") == plain_text(clean).replace(" ", "")


@SETTINGS
@given(st.one_of(st.lists(BLOCK, min_size=1, max_size=3).map("".join), TEXT,
                 st.lists(st.sampled_from(['<img alt="a>b" src="https://e.example/x.png">',
                                           "<p title='\"q\"'>x</p>", "&lt;b&gt;", "<!-- c -->",
                                           "<script>s</script>", "a<br>b", "</p>", "t"]),
                          max_size=6).map("".join)))
def test_the_text_of_sanitized_html_is_what_nh3_sees(fragment: str) -> None:
    clean = sanitize_html(fragment)
    assert sanitized_text(clean) == plain_text(clean)


@SETTINGS
@given(TEXT)
def test_shorten_is_at_most_200_characters(text: str) -> None:
    out = shorten_text(text)
    assert len(out) <= 200
    if len(text.strip()) <= 200:
        assert out == text.strip()
    else:
        assert out.endswith("...")


def _nh3_reference(fragment: str, base: str) -> str:
    """sanitize_html as nh3.clean with the base given on every call."""
    import nh3

    from aggregator.content import (
        ALLOWED_ATTRIBUTES,
        ALLOWED_TAGS,
        DROP_WITH_CONTENT,
        SAFE_SCHEMES,
        scrub_surrogates,
    )

    return nh3.clean(scrub_surrogates(fragment), tags=set(ALLOWED_TAGS),
                     clean_content_tags=set(DROP_WITH_CONTENT),
                     attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
                     url_schemes=set(SAFE_SCHEMES), link_rel="noopener noreferrer",
                     url_relative=("rewrite_with_base", base), strip_comments=True)


URL_VALUES = st.sampled_from([
    "https://e.example/a.png", "HTTP://E.example/", "/abs", "rel/x.png", "../up", "?q=1", "#f",
    "//cdn.example/x", "javascript:alert(1)", "data:image/png;base64,AA", "mailto:a@e.example",
    " https://e.example/sp", "&#104;ttps://e.example/", "https&#58;//e.example/", "", "x y",
])


@SETTINGS
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["a href", "img src", "blockquote cite", "A HREF", "img SRC",
                               "img srcset", "q cite"]),
              st.sampled_from(['"', "'", ""]), URL_VALUES)
    .map(lambda t: f"<{t[0]}={t[1]}{t[2]}{t[1]}>x"),
    TEXT, st.just("the src is here"), st.just("href=/x as text")), max_size=5).map("".join),
    st.sampled_from(["https://e.example/news/a.html", "http://127.0.0.1:8000/x/?p=1"]))
def test_sanitizing_with_a_shared_cleaner_resolves_urls_as_nh3_does(fragment: str,
                                                                    base: str) -> None:
    assert sanitize_html(fragment, base) == _nh3_reference(fragment, base)
