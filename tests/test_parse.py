"""parse.parse_feed: bytes + headers + URL -> ParsedFeed (SPEC §6: any declared encoding
is decoded right; JSON Feed is read by the aggregator itself).

The feedparser corpus cases carry their HTTP headers and expectation in a comment at
the top (`Header: Content-type: ...`, `Expect: not bozo and ...`); the tests read them
from there, as feedparser's own test runner does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aggregator.content import plain_text
from aggregator.errors import ParseError
from aggregator.fastparse import parse_fast
from aggregator.model import ParsedFeed
from aggregator.parse import _parse_xml, discover_feed_links, parse_feed
from tests.helpers import CORPUS

ENCODING_DIR = CORPUS / "encoding"
needs_corpus = pytest.mark.skipif(not ENCODING_DIR.is_dir(),
                                  reason=f"feedparser corpus not found at {CORPUS}")


def corpus_case(path: Path) -> tuple[bytes, dict[str, str], str]:
    """A corpus file's bytes, the HTTP headers its comment asks for, and its Expect line."""
    data = path.read_bytes()
    head = data[:2048].decode("latin-1")
    headers = {m.group(1).strip(): m.group(2).strip()
               for m in re.finditer(r"^Header:\s*([^:\r\n]+):\s*(.*?)\s*$", head, re.M)}
    expect = re.search(r"^Expect:\s*(.*?)\s*$", head, re.M)
    return data, headers, expect.group(1) if expect else ""


def parse_corpus(name: str) -> ParsedFeed:
    data, headers, _ = corpus_case(ENCODING_DIR / name)
    return parse_feed(data, headers, f"http://example.org/{name}", "corpus")


def _encoding_files() -> list[str]:
    return sorted(p.name for p in ENCODING_DIR.iterdir()) if ENCODING_DIR.is_dir() else []


# -- the corpus's encoding cases ----------------------------------------------------------------
@needs_corpus
@pytest.mark.parametrize("name", _encoding_files())
def test_every_encoding_case_parses(name: str) -> None:
    data, headers, expect = corpus_case(ENCODING_DIR / name)
    try:
        parsed = parse_feed(data, headers, f"http://example.org/{name}", "corpus")
    except ParseError as e:
        # Only a document feedparser itself calls ill-formed may be refused, and then
        # with a message naming the source and URL, not a crash.
        assert "bozo" in expect and "not bozo" not in expect, (name, str(e))
        assert "corpus" in str(e) and name in str(e)
        return
    assert isinstance(parsed, ParsedFeed)
    if expect.startswith("not bozo"):
        assert parsed.warning is None, (name, parsed.warning)
    for entry in parsed.entries:
        assert "\ufffd" not in entry.title + entry.content_html, name


DECODED = {
    # name: (what to look at, the text it must hold)
    "euc-kr.xml": ("title", "\ub144"),
    "euc-kr-item.xml": ("content", "\ub144"),
    "euc-kr-attribute.xml": ("content", 'alt="\ub144"'),
    "http_text_xml_charset_2.xml": ("content", "This is a \xa3\u201ctest.\u201d"),
    "http_text_xml_charset_overrides_encoding_2.xml": ("content",
                                                       "This is a \xa3\u201ctest.\u201d"),
    "demoronize-1.xml": ("content", "don\u2019t"),
    "demoronize-2.xml": ("content", "don\u2019t"),
    "double-encoded-html.xml": ("content", "\u2026"),
    "http_i18n.xml": ("title", "I\xf1t\xebrn\xe2ti\xf4n\xe0liz\xe6ti\xf8n"),
    # text/xml without a charset: the XML declaration (utf-8) decides, not US-ASCII
    "bozo_http_i18n.xml": ("title", "I\xf1t\xebrn\xe2ti\xf4n\xe0liz\xe6ti\xf8n"),
}


@needs_corpus
@pytest.mark.parametrize("name", sorted(DECODED))
def test_corpus_text_is_decoded_right(name: str) -> None:
    where, expected = DECODED[name]
    parsed = parse_corpus(name)
    text = parsed.title if where == "title" else parsed.entries[0].content_html
    assert expected in (text or "")


@needs_corpus
@pytest.mark.parametrize("name", [n for n in _encoding_files() if "gb2312" in n] + ["big5.xml"])
def test_cjk_labelled_corpus_cases_are_feeds(name: str) -> None:
    parsed = parse_corpus(name)
    assert parsed.warning is None
    assert parsed.entries == ()


# -- hand-written encodings: the labels real feeds use, with characters that need the superset
def _rss(title: str, description: str, declared: str | None) -> str:
    decl = f'<?xml version="1.0" encoding="{declared}"?>' if declared else '<?xml version="1.0"?>'
    return (f"{decl}\n<rss version=\"2.0\"><channel><title>{title}</title>"
            "<link>https://example.org/</link><description>d</description>"
            f"<item><title>{title}</title><link>https://example.org/1</link>"
            f"<description>{description}</description></item></channel></rss>")


ENCODED = [
    # (case id, text, codec that makes the bytes, XML declaration, Content-Type)
    ("gb2312-declared-gbk-bytes", "李喆与张珺：陈镕谈医疗大模型", "gbk", "gb2312", "application/rss+xml"),
    ("gb2312-in-header-only", "李喆与张珺：医学影像", "gbk", None,
     "application/rss+xml; charset=gb2312"),
    ("gb2312-quoted-header-overrides-utf8-decl", "张珺：人工智能", "gbk", "utf-8",
     "application/xml; charset='gb2312'"),
    ("gb2312-text-xml-no-charset", "李喆：大模型", "gbk", "gb2312", "text/xml"),
    ("gbk-local-file", "陈镕：医疗", "gbk", "GBK", ""),
    ("gb18030", "李喆\U00020000", "gb18030", "gb18030", "application/rss+xml"),
    ("big5", "醫療人工智慧", "big5", "big5", "application/rss+xml"),
    ("big5-with-hkscs", "醫療嘅人工智慧", "big5hkscs", "big5", "application/rss+xml"),
    ("shift_jis-with-nec-extension", "医療ＡＩニュース①", "cp932", "Shift_JIS",
     "application/rss+xml"),
    ("euc-kr-with-uhc-extension", "의료 인공지능 똠", "cp949", "EUC-KR", "application/rss+xml"),
    ("latin1-label-windows-1252-bytes", "\u201cSmart\u201d quotes cost \u20ac5", "cp1252",
     "ISO-8859-1", "application/rss+xml"),
    ("windows-1252", "caf\xe9 \u2013 na\xefve", "cp1252", "windows-1252", "text/xml"),
    ("utf-16-bom", "医疗 AI \u2013 utf-16", "utf-16", "UTF-16", "application/xml"),
    ("utf-8-bom", "医疗 AI", "utf-8-sig", None, ""),
]


@pytest.mark.parametrize(("text", "codec", "declared", "content_type"),
                         [case[1:] for case in ENCODED], ids=[case[0] for case in ENCODED])
def test_declared_encodings_are_decoded_right(text: str, codec: str, declared: str | None,
                                              content_type: str) -> None:
    body = _rss(text, f"正文 {text}" if codec not in ("cp1252",) else f"Body {text}",
                declared).encode(codec)
    headers = {"Content-Type": content_type} if content_type else {}
    parsed = parse_feed(body, headers, "http://example.org/feed.xml", "enc")
    assert parsed.title == text
    assert parsed.entries[0].title == text
    assert text in parsed.entries[0].content_html
    assert parsed.warning is None


# -- not feeds ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b"", "application/rss+xml", "empty"),
    (b"  \r\n\t ", "application/rss+xml", "empty"),
    (b"<html><body>hello</body></html>", "text/html", "HTML page"),
    (b"plain words, nothing else", "text/plain", "not a feed"),
    (b'{"hello": "world"}', "application/json", "jsonfeed.org"),
    (b"[1, 2, 3]", "application/json", "not a feed"),
    (b'{"version": "https://jsonfeed.org/version/1.1"', "application/json", "invalid JSON"),
])
def test_non_feeds_raise_parse_error_naming_the_source(body: bytes, content_type: str,
                                                      message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_feed(body, {"Content-Type": content_type}, "http://example.org/x", "src")
    assert message.lower() in str(caught.value).lower()
    assert "src" in str(caught.value) and "http://example.org/x" in str(caught.value)


def test_html_page_error_gives_the_absolute_feed_url() -> None:
    page = (b"<!doctype html><html><head>"
            b"<link rel=\"alternate\" type=\"application/atom+xml\" href=\"feeds/all.atom?a=1&amp;b=2\">"
            b"</head><body></body></html>")
    with pytest.raises(ParseError, match=re.escape("http://example.org/blog/feeds/all.atom?a=1&b=2")):
        parse_feed(page, {"Content-Type": "text/html"}, "http://example.org/blog/", "blog")
    assert discover_feed_links(page.decode(), "http://example.org/blog/") == [
        "http://example.org/blog/feeds/all.atom?a=1&b=2"]


def test_ill_formed_feed_with_entries_parses_with_a_warning() -> None:
    body = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
            b"<item><title>One &nbsp; two</title><link>https://example.org/1</link></item>"
            b"<item><title>Three</title><link>https://example.org/3</link></item>")
    parsed = parse_feed(body, {}, "http://example.org/f", "f")
    assert [e.link for e in parsed.entries] == ["https://example.org/1", "https://example.org/3"]
    assert parsed.warning


# -- JSON Feed --------------------------------------------------------------------------------------
@needs_corpus
def test_json_feed_from_the_corpus() -> None:
    path = CORPUS / "json" / "example.json"
    parsed = parse_feed(path.read_bytes(), {"Content-Type": "application/json"},
                        "https://example.org/feed.json", "json")
    assert parsed.title == "My Example Feed"
    assert parsed.link == "https://example.org/"
    assert [e.entry_id for e in parsed.entries] == ["2", "1"]
    second, first = parsed.entries
    assert second.title == "post 2"
    assert second.link == "https://example.org/second-item"
    assert "This is a second item." in second.content_html
    assert second.categories == ("test", "JSON")
    assert first.author == "you"  # JSON Feed 1.0's single author object
    assert first.link == "https://example.org/initial-post"
    assert "Hello, world!" in first.content_html


def test_hand_written_json_feed_1_1() -> None:
    doc = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "医疗 AI 简报",
        "home_page_url": "https://example.com/briefing/",
        "language": "zh-CN",
        "items": [
            {"id": 42, "url": "posts/42", "title": "  Model   cleared  ",
             "content_text": "First paragraph.\n\nSecond <paragraph> & more.",
             "summary": "A <b>short</b> summary", "date_published": "2025-02-14T10:49:11+08:00",
             "date_modified": "2025-02-15T08:00:00Z", "tags": ["医疗", "AI", "AI", " "],
             "authors": [{"url": "https://example.com/~li"}, {"name": "李喆"}],
             "image": "/img/cover.png"},
            {"id": "no-date", "content_html": "<p>Only <em>HTML</em><img src=\"pic.jpg\"></p>",
             "external_url": "https://elsewhere.example.net/story"},
            "not an item",
            {"id": "", "title": True, "tags": "not a list"},
        ],
    }
    body = b"\xef\xbb\xbf\n  " + json.dumps(doc, ensure_ascii=False).encode("utf-8")
    parsed = parse_feed(body, {"Content-Type": "application/feed+json"},
                        "https://example.com/feed.json", "brief")
    assert (parsed.title, parsed.language) == ("医疗 AI 简报", "zh-CN")
    assert len(parsed.entries) == 3  # the string is skipped; the odd dict is kept, emptied
    first, second, third = parsed.entries
    assert first.entry_id == "42"
    assert first.link == "https://example.com/briefing/posts/42"
    assert first.title == "Model cleared"
    assert first.content_html == ("<p>First paragraph.</p>"
                                  "<p>Second &lt;paragraph&gt; &amp; more.</p>")
    assert first.summary_html == "A &lt;b&gt;short&lt;/b&gt; summary"
    assert first.published.isoformat() == "2025-02-14T10:49:11+08:00"
    assert first.updated.isoformat() == "2025-02-15T08:00:00+00:00"
    assert first.categories == ("医疗", "AI")
    assert first.author == "李喆"
    assert first.thumbnail == "https://example.com/img/cover.png"
    assert second.link == "https://elsewhere.example.net/story"
    assert second.published is None
    assert second.thumbnail == "https://elsewhere.example.net/pic.jpg"
    assert (third.entry_id, third.title, third.categories) == (None, "", ())


@pytest.mark.parametrize("version", ["https://jsonfeed.org/version/1", "http://jsonfeed.org/version/1",
                                     "https://jsonfeed.org/version/1.1", " https://jsonfeed.org/version/1 "])
def test_json_feed_1_0_and_1_1_are_read(version: str) -> None:
    """1.0 documents spell the version with http:// as often as with https://, and carry
    one `author` object where 1.1 has an `authors` list."""
    body = json.dumps({"version": version, "title": "T", "items": [
        {"id": "1", "title": "one", "author": {"name": "Mei"}, "content_text": "x"},
        {"id": "2", "title": "two", "authors": [{"name": "Li"}], "content_text": "y"}]}).encode()
    parsed = parse_feed(body, {"Content-Type": "application/json"}, "https://e.org/f.json", "j")
    assert [(e.title, e.author) for e in parsed.entries] == [("one", "Mei"), ("two", "Li")]


def test_json_feed_detected_without_a_json_content_type() -> None:
    body = b'{"version": "https://jsonfeed.org/version/1", "items": [{"id": "1", "title": "x"}]}'
    parsed = parse_feed(body, {"Content-Type": "text/plain"}, "file:///tmp/feed", "local")
    assert [e.title for e in parsed.entries] == ["x"]


def test_each_thread_parses_with_its_own_lxml_parsers() -> None:
    """lxml supports its default parser or one parser per thread, not a parser shared by
    threads; a poll of a few feeds parses them in its fetch threads (a shared parser
    once aborted a poll with 'double free or corruption')."""
    import threading

    from aggregator import fastparse, html2md

    seen: dict[str, list[object]] = {"xml": [], "html": []}  # held: no id() reused
    lock = threading.Lock()

    def run() -> None:
        for _ in range(2):  # the same parser again within one thread
            with lock:
                seen["xml"].append(fastparse._parser())
                seen["html"].append(html2md._parser())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for kind, ids in seen.items():
        assert len(ids) == 6 and len({id(p) for p in ids}) == 3, kind


# -- which element is the body: case files in tests/cases/parse/ ---------------------------------
PARSE_CASES = sorted((Path(__file__).parent / "cases" / "parse").glob("*.xml"))


def _expected(case: Path, what: str) -> str:
    found = re.search(rf"^Expect-{what}: (.*?)\s*(?:-->)?$", case.read_text("utf-8"), re.M)
    assert found, f"{case.name}: no Expect-{what} line"
    return found.group(1)


@pytest.mark.parametrize("case", PARSE_CASES, ids=[c.stem for c in PARSE_CASES])
@pytest.mark.parametrize("path", ["fast", "feedparser"])
def test_the_richest_element_is_the_body(case: Path, path: str) -> None:
    """Beside a full post, a short plain-text element is the summary, never the body
    (SPEC §3: the body is the entry's content); both parse paths choose alike."""
    body = case.read_bytes()
    if path == "fast":
        assert parse_fast(body, "https://blog.example/feed") is not None  # the path is taken
    parsed = _parse_xml(body, {}, "https://blog.example/feed", "case", try_fast=path == "fast")
    [entry] = parsed.entries
    assert _expected(case, "body") in plain_text(entry.content_html)
    assert _expected(case, "summary") in plain_text(entry.summary_html)
    assert _expected(case, "summary") not in plain_text(entry.content_html)


def test_parse_cases_exist() -> None:
    assert len(PARSE_CASES) >= 6
