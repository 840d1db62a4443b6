"""Fast paths taken for speed give exactly what the plain code they skip would give.

Each test states the plain version (what the code did before it was made fast, and what
stored dedupe keys were made with) and checks the fast one against it on generated input
full of the characters where the two could part: a difference here would be a changed key
(a duplicate in the store) or a changed link.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aggregator import content, dedupe, fastparse
from aggregator.content import absolute_url, is_web_url, plain_text, sanitize_html


def plain_absolute_url(url: str | None, base: str | None) -> str | None:
    if not url:
        return None
    url = url.strip()
    try:
        resolved = urljoin(base or "", url) if base else url
    except ValueError:
        return None
    return resolved if is_web_url(resolved) else None


# Characters urlsplit and urljoin treat specially, or strip, or validate.
URL_CHARS = st.sampled_from(list("aZ09-._~:/?#[]@!$&'()*+,;=%\\ \t\n\r\x00\x7f") + ["é", "中", "\u3000"])
URL_TAILS = st.text(URL_CHARS, max_size=12)
URLS = st.one_of(
    st.builds(lambda scheme, rest: scheme + rest,
              st.sampled_from(["http://", "https://", "HTTP://", "http:", "https:/", "ftp://",
                               "//", "/", "", " http://", "javascript:"]),
              URL_TAILS),
    URL_TAILS,
)
BASES = st.sampled_from([None, "", "https://e.example/x/y.html", "http://e.example",
                         "https://e.example/a;p?q#f", "file:///srv/a.xml", "http://[bad",
                         "not a url"])


@settings(max_examples=3000, deadline=None)
@given(URLS, BASES)
@example("http://a/b?", "http://e.example/")
@example("http://a/b#", "http://e.example/")
@example("http://a/b?#f", "http://e.example/")
@example("http://a/b;", "http://e.example/")
@example("http://a/b;p", "http://e.example/")
@example("http://[::1]/x", "http://e.example/")
@example("http:///x", "http://e.example/")
@example("http://a\tb/", "http://e.example/")
@example("https://e.example/a.png", "http://e.example/")
def test_absolute_url_is_what_urljoin_gives(url: str, base: str | None) -> None:
    assert absolute_url(url, base) == plain_absolute_url(url, base)


def plain_sanitize_html(fragment: str, base_url: str | None) -> str:
    r"""The cleaner chosen by looking for relative URLs in the input, attribute by attribute.

    With HTML's whitespace around '=' (ASCII only): the code before the fast path took
    `\s`, so `href=\xa0mailto:a` (a relative URL, to the URL standard and to nh3) was
    taken for an absolute one and dropped instead of resolved."""
    attribute = re.compile(r"href|src|cite", re.IGNORECASE)
    absolute = re.compile(r"""[ \t\n\r\f]*=[ \t\n\r\f]*["']?[a-zA-Z][a-zA-Z0-9+.-]*:""")
    fragment = content.scrub_surrogates(fragment)
    relative = any(not absolute.match(fragment, m.end()) for m in attribute.finditer(fragment))
    if not base_url or not relative or not is_web_url(base_url):
        return content._cleaner(None).clean(fragment)
    return content._cleaner(base_url).clean(fragment)


FRAGMENT_PARTS = st.sampled_from([
    "<a href=", "<A HREF=", "<img src=", "<blockquote cite=", "<q cite=", "<a title=", '"',
    "'", " ", "\t", "=", ">", "</a>", "http:", "https://o.example/x", "x.png", "/p", "//h/p",
    "#f", "?q", "mailto:a", "javascript:x", "1a:", "&amp;", "&#104;ttp:", "&nbsp;", "\n",
    "text", "href", "srcset=", "data:x", "\u00a0", "中文",
])
FRAGMENTS = st.lists(FRAGMENT_PARTS, max_size=14).map("".join)


@settings(max_examples=3000, deadline=None)
@given(FRAGMENTS, st.sampled_from([None, "", "https://e.example/a/b.html", "http://e.example",
                                   "file:///srv/a.xml", "http://[bad"]))
@example('<a href="x.png">a</a>', "https://e.example/a/")
@example('<img src=" /x.png">', "https://e.example/a/")
@example('<a title="href=x" href="https://o.example/">a</a>', "https://e.example/a/")
def test_sanitize_html_is_what_the_cleaner_for_its_urls_gives(fragment: str,
                                                               base: str | None) -> None:
    assert sanitize_html(fragment, base) == plain_sanitize_html(fragment, base)


WHITESPACE_TEXT = st.text(st.sampled_from(
    list("ab 中\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u3000\u200b\ufeff")),
    max_size=20)


@settings(max_examples=2000, deadline=None)
@given(WHITESPACE_TEXT)
def test_squash_is_the_regex_it_replaced(text: str) -> None:
    assert dedupe._squash(text) == re.sub(r"\s+", " ", text).strip()


BLOCK = re.compile(
    r"<(?:/?(?:p|div|br|li|ul|ol|h[1-6]|tr|td|th|blockquote|pre|table|section|article|"
    r"figure|figcaption|dd|dt|hr)\b)", re.IGNORECASE)


def plain_sanitized_text(clean: str) -> str:
    spaced = BLOCK.sub(r" \g<0>", clean)
    tag = re.compile(r'<[^>"]*(?:"[^"]*"[^>"]*)*>')
    return re.sub(r"\s+", " ", html.unescape(tag.sub("", spaced))).strip()


HTML_PARTS = st.sampled_from([
    "<p>", "</p>", "<br>", "<b>", "</b>", "<li>", "<td>", "<P>", "<pre>", "<hr>", "<h2>",
    "<a title=\"<p>\">", "</a>", "&amp;", "&lt;p&gt;", "&nbsp;", "中文", "text", " ", "\n",
    "\u3000", "<para>", "<tr>",
])


@settings(max_examples=2000, deadline=None)
@given(st.lists(HTML_PARTS, max_size=14).map("".join))
def test_sanitized_text_and_plain_text_keep_their_old_results(fragment: str) -> None:
    clean = sanitize_html(fragment)
    assert content.sanitized_text(clean) == plain_sanitized_text(clean)
    assert content.sanitized_text(clean) == plain_text(clean)


TWO = st.integers(0, 99).map("{:02d}".format)
RFC822_DATES = st.builds(
    "{}{} {} {} {}:{}:{} {}".format,
    st.sampled_from(["", "Mon, ", "Fri, ", "Sun, "]), st.integers(0, 40).map(str),
    st.sampled_from(["Jan", "Feb", "Jun", "Dec", "Foo"]), st.integers(1890, 3010).map(str),
    TWO, TWO, TWO,
    st.sampled_from(["+0000", "+0800", "-0530", "+2359", "-9999", "GMT", "UTC", "UT", "Z",
                     "EST", "+08:00"]))
W3DTF_DATES = st.builds(
    "{}-{}-{}T{}:{}:{}{}".format,
    st.integers(1890, 3010).map(str), TWO, TWO, TWO, TWO, TWO,
    st.sampled_from(["Z", "+08:00", "-05:30", "+23:59", "-99:99", "", "+0800", "z"]))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(RFC822_DATES, W3DTF_DATES))
@example("Fri, 14 Feb 2025 10:49:11 +0800")
@example("2025-02-14T10:49:11+08:00")
@example("Sat, 29 Feb 2025 10:49:11 GMT")
@example("1999-12-31T23:59:60Z")
def test_dates_read_directly_are_what_feedparser_reads(value: str) -> None:
    assert fastparse._date(value) == fastparse._feedparser_date(value)


def test_an_entry_with_nothing_to_scrub_is_the_same_entry() -> None:
    from aggregator.items import _scrubbed
    from aggregator.model import Entry

    clean = Entry("id", "https://e.example/", "标题", "<p>x</p>", "", None, None,
                  categories=("a", "医疗"))
    assert _scrubbed(clean) is clean
    dirty = Entry("id", "https://e.example/", "标\ud800题", "<p>x\x01</p>", "", None, None,
                  categories=("a\x02",))
    scrubbed = _scrubbed(dirty)
    assert (scrubbed.title, scrubbed.content_html, scrubbed.categories) == (
        "标\ufffd题", "<p>x</p>", ("a",))


MARKDOWN_TEXT = st.text(st.sampled_from(list("a  中1١.)。\t\n\r\\`[]~|*_<&>-+=#\x1f")), max_size=16)


@settings(max_examples=3000, deadline=None)
@given(MARKDOWN_TEXT)
def test_text_tests_are_the_regexes_they_replaced(text: str) -> None:
    from aggregator import html2md

    needs_escape = re.compile(r"[\\`\[\]~|*_<&>\-+=#]|\d[.)]")
    odd_whitespace = re.compile(r"[\t\r\n]|  ")
    assert html2md._needs_escape(text) is bool(needs_escape.search(text))
    assert html2md._odd_whitespace(text) is bool(odd_whitespace.search(text))
    assert html2md._plain(text) is not (needs_escape.search(text) or odd_whitespace.search(text)
                                        or html2md.BR in text)


@settings(max_examples=3000, deadline=None)
@given(st.text(st.sampled_from(list("aZ09/:?#[]@!$&'*+,;=%~._-()\\ \"<>^`{|}中é\t")), max_size=14))
def test_markdown_url_is_what_quote_gives(url: str) -> None:
    from urllib.parse import quote

    from aggregator.html2md import markdown_url

    plain = quote(url.strip(), safe="/:?#[]@!$&'*+,;=%~-._").replace("(", "%28").replace(")", "%29")
    assert markdown_url(url) == plain


EMPHASIS_TEXT = st.text(st.sampled_from(list("a中*~“”。，!\\ ")), min_size=1, max_size=10)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["", " "]), st.sampled_from(["**", "*", "~~"]), EMPHASIS_TEXT,
       st.sampled_from(["", " "]))
@example("", "*", "**“x”**", "")
@example("", "**", "“大模型”", "")
def test_emphasis_from_its_parts_is_what_the_markup_regex_gives(prefix: str, marker: str,
                                                                 text: str, suffix: str) -> None:
    from aggregator.html2md import _flank, _flanked

    text = text.strip()
    if text:
        assert _flank(prefix, marker, text, suffix) == _flanked(
            f"{prefix}{marker}{text}{marker}{suffix}")


# Bodies of every shape the choice of the richest element looks at: plain or HTML, short
# or long, a teaser of the other (a prefix cut with an ellipsis), with an image or not.
_POST = " ".join(f"Sentence {i} of the post." for i in range(30))
BODY_PARTS = st.sampled_from([
    "", "A teaser.", "Sentence 0 of the post. Sentence 1 of the post…", "<p>A teaser.</p>",
    f"<p>{_POST}</p>", _POST, f"<p>{_POST[:300]}</p>", '<p><img src="https://e.example/i.png"></p>',
    '<img src="https://e.example/i.png" alt="a"><p>Caption.</p>', "<p>Sentence 0 of the post.</p>",
    "中文摘要。", f"<p>{'医疗新闻正文。' * 40}</p>",
])


def _rss_with(content: str, description: str) -> bytes:
    item = "<title>t</title><link>https://e.example/a</link>"
    if description:
        item += f"<description>{html.escape(description)}</description>"
    if content:
        item += f"<content:encoded>{html.escape(content)}</content:encoded>"
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0" '
            f'xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel><title>c</title>'
            f"<link>https://e.example/</link><description>d</description><item>{item}</item>"
            f"</channel></rss>").encode()


def _atom_with(content: str, content_type: str, summary: str, summary_type: str) -> bytes:
    entry = '<id>tag:e,1</id><title>t</title><link href="https://e.example/a"/>'
    if summary:
        entry += f'<summary type="{summary_type}">{html.escape(summary)}</summary>'
    if content:
        entry += f'<content type="{content_type}">{html.escape(content)}</content>'
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            '<title>c</title><id>tag:e,0</id><updated>2025-01-01T00:00:00Z</updated>'
            f"<entry>{entry}</entry></feed>").encode()


def _both_paths(body: bytes) -> tuple[object, object]:
    from aggregator.parse import _parse_xml

    assert fastparse.parse_fast(body, "https://e.example/f") is not None
    fast = _parse_xml(body, {}, "https://e.example/f", "s", try_fast=True).entries[0]
    slow = _parse_xml(body, {}, "https://e.example/f", "s", try_fast=False).entries[0]
    return fast, slow


@settings(max_examples=300, deadline=None)
@given(BODY_PARTS, BODY_PARTS)
@example(_POST[:60], f"<p>{_POST}</p>")
def test_both_parse_paths_take_the_same_body_of_an_rss_item(content: str, description: str) -> None:
    fast, slow = _both_paths(_rss_with(content, description))
    assert plain_text(fast.content_html) == plain_text(slow.content_html)
    assert plain_text(fast.summary_html) == plain_text(slow.summary_html)
    assert fast.thumbnail == slow.thumbnail


@settings(max_examples=300, deadline=None)
@given(BODY_PARTS, st.sampled_from(["text", "html"]), BODY_PARTS, st.sampled_from(["text", "html"]))
@example("A teaser.", "text", f"<p>{_POST}</p>", "html")
def test_both_parse_paths_take_the_same_body_of_an_atom_entry(content: str, content_type: str,
                                                              summary: str,
                                                              summary_type: str) -> None:
    fast, slow = _both_paths(_atom_with(content, content_type, summary, summary_type))
    assert plain_text(fast.content_html) == plain_text(slow.content_html)
    assert plain_text(fast.summary_html) == plain_text(slow.summary_html)
    assert fast.thumbnail == slow.thumbnail


@pytest.mark.parametrize(("content", "summary", "body"), [
    ("A teaser.", f"<p>{_POST}</p>", "summary"),  # 79 characters beside 3,596
    (f"<p>{_POST}</p>", "A teaser.", "content"),  # the usual shape
    ("Sentence 0 of the post. Sentence 1 of the post…", f"<p>{_POST[:100]}</p>", "summary"),
    ('<img src="https://e.example/i.png"><p>Caption.</p>', f"<p>{_POST}</p>", "content"),
    (f"<p>{_POST[:200]}</p>", f"<p>{_POST[:300]}</p>", "summary"),  # a prefix of it
    ("<p>Other words entirely, not a teaser.</p>", "<p>" + "x " * 30 + "</p>", "content"),
    ("", "<p>only a summary</p>", "summary"),
    ("<p>only a content</p>", "", "content"),
])
def test_richest_body(content: str, summary: str, body: str) -> None:
    chosen, other = fastparse.richest_body(content, summary)
    assert (chosen, other) == ((content, summary) if body == "content" else
                               (summary, content if summary else ""))
