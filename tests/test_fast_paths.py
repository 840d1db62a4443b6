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
