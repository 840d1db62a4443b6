"""Text transforms: sanitize, HTML -> Markdown (no raw HTML, nothing lost), plain text.

Golden cases live in tests/cases/html/: NAME.html (its first line, an HTML comment, says
what it checks) beside NAME.md, the Markdown expected from it. Refresh one by hand.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from aggregator.content import (
    ALLOWED_TAGS,
    absolute_url,
    first_image,
    html_to_markdown,
    is_web_url,
    markdown_image,
    markdown_link,
    markdown_to_html,
    plain_text,
    sanitize_html,
    scrub_surrogates,
    shorten,
    title_from_text,
)

CASES = Path(__file__).parent / "cases" / "html"
BASE = "https://e.example/news/x.html"
# Hugo's goldmark with `unsafe = true` would pass raw HTML through; rendering the store's
# Markdown with raw HTML on and off must give the same page, i.e. there is none.
_RAW_ON = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_RAW_OFF = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
DANGEROUS_TAGS = {"script", "style", "iframe", "object", "embed", "svg", "math", "form",
                  "frame", "frameset", "applet", "base", "meta", "link"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def tags_of(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def assert_safe(html: str) -> None:
    """No dangerous element, no event attribute, only http(s)/mailto URLs: parsed, not grepped
    (the text '&lt;img onerror=x&gt;' is harmless and must stay)."""
    for tag, attrs in tags_of(html):
        assert tag in ALLOWED_TAGS and tag not in DANGEROUS_TAGS, html
        for name, value in attrs:
            assert not name.startswith("on"), html
            if name in ("href", "src", "cite"):
                assert value and re.match(r"(https?|mailto):", value), html


def assert_no_raw_html(markdown: str) -> None:
    assert _RAW_ON.render(markdown) == _RAW_OFF.render(markdown), markdown


# -- golden cases -------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES.glob("*.html")), ids=lambda p: p.stem)
def test_html_case(case: Path) -> None:
    expected = case.with_suffix(".md").read_text(encoding="utf-8")
    markdown = html_to_markdown(sanitize_html(case.read_text(encoding="utf-8"), BASE))
    assert markdown + "\n" == expected
    assert_no_raw_html(markdown)
    rendered = markdown_to_html(markdown, BASE)
    assert_safe(rendered)
    # Nothing lost, nothing added: the visible text of the page is the input's.
    clean = sanitize_html(case.read_text(encoding="utf-8"), BASE)
    assert re.sub(r"\s", "", plain_text(rendered)) == re.sub(r"\s", "", plain_text(clean))


def test_cases_exist() -> None:
    assert len(list(CASES.glob("*.html"))) >= 5
    for case in CASES.glob("*.html"):
        assert case.read_text(encoding="utf-8").startswith("<!-- "), case
        assert case.with_suffix(".md").is_file(), case


# -- sanitize_html --------------------------------------------------------------------------
@pytest.mark.parametrize(("fragment", "expected"), [
    ('<p onclick="x()">hi<script>alert(1)</script></p>', "<p>hi</p>"),
    ("<style>p{}</style><p>x</p>", "<p>x</p>"),
    ('<iframe src="https://e.example/"></iframe>ok', "ok"),
    ("<object data=x></object><embed src=x>ok", "ok"),
    ('<svg onload="alert(1)"><circle/></svg>ok', "ok"),
    ('<img src="https://e.example/i.png" onerror="alert(1)">', '<img src="https://e.example/i.png">'),
    ('<a href="javascript:alert(1)">j</a>', '<a rel="noopener noreferrer">j</a>'),
    ('<a href=" JaVaScRiPt:alert(1)">j</a>', '<a rel="noopener noreferrer">j</a>'),
    ('<a href="java&#x09;script:alert(1)">j</a>', '<a rel="noopener noreferrer">j</a>'),
    ('<a href="vbscript:x">j</a>', '<a rel="noopener noreferrer">j</a>'),
    ('<img src="data:image/png;base64,AAAA">', "<img>"),
    ('<a href="data:text/html,<script>x</script>">d</a>', '<a rel="noopener noreferrer">d</a>'),
    ('<p style="color:red" class="c" id="i">x</p>', "<p>x</p>"),
    ("<!-- comment --><p>x</p>", "<p>x</p>"),
    ('<a href="mailto:a@e.example">m</a>', '<a href="mailto:a@e.example" rel="noopener noreferrer">m</a>'),
    ("", ""),
])
def test_sanitize_removes_dangerous_things(fragment: str, expected: str) -> None:
    assert sanitize_html(fragment, BASE) == expected


@pytest.mark.parametrize(("base", "href", "src"), [
    ("https://e.example/news/x.html", "https://e.example/a/2.html",
     "https://e.example/news/img/1.jpg"),
    ("http://e.example/", "http://e.example/a/2.html", "http://e.example/img/1.jpg"),
])
def test_sanitize_makes_relative_urls_absolute_against_a_web_base(base: str, href: str,
                                                                  src: str) -> None:
    out = sanitize_html('<a href="/a/2.html">a</a><img src="img/1.jpg">', base)
    assert tags_of(out) == [("a", [("href", href), ("rel", "noopener noreferrer")]),
                            ("img", [("src", src)])]


@pytest.mark.parametrize("base", ["file:///srv/feeds/a.xml", None, "", "not a url",
                                  "http://[broken"])
def test_sanitize_drops_relative_urls_without_a_web_base(base: str | None) -> None:
    out = sanitize_html('<a href="/a/2.html">a</a><img src="img/1.jpg">'
                        '<a href="https://abs.example/x">abs</a>', base)
    assert out == ('<a rel="noopener noreferrer">a</a><img>'
                   '<a href="https://abs.example/x" rel="noopener noreferrer">abs</a>')
    assert "file:" not in out and "/srv/" not in out


def test_sanitize_survives_lone_surrogates() -> None:
    assert sanitize_html("<p>a\ud800b</p>") == "<p>a\ufffdb</p>"
    assert plain_text("a\udc00b") == "a\ufffdb"
    assert scrub_surrogates("ok \U0001f600") == "ok \U0001f600"


# -- html_to_markdown ---------------------------------------------------------------------
HOSTILE = [
    "<p>a &lt;b&gt; c</p>",
    "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>",
    "<p>&amp;lt;script&amp;gt;</p>",
    "<p>&#60;img src=x onerror=alert(1)&#62;</p>",
    "<p>&lt;!-- x --&gt; &lt;?php ?&gt; &lt;![CDATA[ x ]]&gt;</p>",
    "<p>&lt;http://e.example/&gt; &lt;a@e.example&gt;</p>",
    "<p>a\n&lt;div&gt;\nb</p>",
    "<blockquote>&lt;b&gt;</blockquote><ul><li>&lt;x&gt;</li></ul>",
    "<table><tr><td>&lt;td&gt;</td></tr></table>",
    "<pre><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></pre>",
    "<p><code>a &lt;i&gt; b</code></p>",
    '<a href="https://e.example/">&lt;img src=x&gt;</a>',
    '<img alt="&lt;b&gt;" src="https://e.example/i.png">',
    "<p>[a](javascript:alert(1))</p>",
    "<p>&amp;copy; &amp;#60;</p>",
]


@pytest.mark.parametrize("fragment", HOSTILE)
def test_markdown_has_no_raw_html_and_escaped_markup_stays_text(fragment: str) -> None:
    clean = sanitize_html(fragment, BASE)
    markdown = html_to_markdown(clean)
    assert_no_raw_html(markdown)
    rendered = markdown_to_html(markdown, BASE)
    assert_safe(rendered)
    assert {t for t, _ in tags_of(rendered)} <= {"p", "a", "img", "blockquote", "ul", "li",
                                                  "table", "thead", "tbody", "tr", "th", "td",
                                                  "pre", "code"}
    # The visible text is what it was: '<script>' is still there, as text.
    assert plain_text(rendered).replace(" ", "") == plain_text(clean).replace(" ", "")


def test_escaped_script_is_text_not_a_tag() -> None:
    markdown = html_to_markdown("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>")
    assert markdown == "\\<script>alert(1)\\</script>"
    assert _RAW_ON.render(markdown) == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"


@pytest.mark.parametrize(("fragment", "markdown"), [
    ("<p>x</p>", "x"),
    ("", ""),
    ("   ", ""),
    ("<h1>T</h1><h3>S</h3>", "# T\n\n### S"),
    ("<ul><li>a</li><li>b</li></ul>", "- a\n- b"),
    ('<ol start="3"><li>a</li><li>b</li></ol>', "3. a\n4. b"),
    ("<table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></table>",
     "| A | B |\n| --- | --- |\n| 1 | 2 |"),
    ('<p><img src="https://e.example/i.png" alt="pic"></p>', "![pic](https://e.example/i.png)"),
    ('<a href="https://e.example/x">link</a>', "[link](https://e.example/x)"),
    ('<a href="https://e.example/a b">x</a>', "[x](https://e.example/a%20b)"),
    ('<img src="https://e.example/(1).png">', "![](https://e.example/%281%29.png)"),
    ("<img alt='no source'>", ""),
    ("<p>a<br>b</p>", "a\\\nb"),
    ("<p>a<br></p>", "a"),
    ("<p><b>x<br></b>y</p>", "**x**y"),
    ("<p><code>a\n1. b</code></p>", "`a 1. b`"),
    ("<p>x</p>\n\n\n\n<p>y</p>", "x\n\ny"),
    ("<del>gone</del>", "~~gone~~"),
    ("<p>医院<b>“大模型”</b>上线</p>", "医院“**大模型**”上线"),
    ("<p>a<i>“”</i>b</p>", "a“”b"),
    ('<p><b>"quoted"</b> ascii</p>', '**"quoted"** ascii'),
])
def test_html_to_markdown(fragment: str, markdown: str) -> None:
    assert html_to_markdown(fragment) == markdown


@pytest.mark.parametrize("text", [
    "# hash", "- dash", "+ plus", "1. one", "2) two", "> quote", "a | b", "`tick`", "[x](y)",
    "![x](y)", "*star*", "_under_", "~~strike~~", "C:\\path\\*", "back\\", "===", "---",
    "&copy;", "&#169;", "a<b", "100%", "中文，“引号”。",
])
def test_markdown_looking_text_renders_as_the_same_text(text: str) -> None:
    from html import escape
    markdown = html_to_markdown(f"<p>{escape(text, quote=False)}</p>")
    assert_no_raw_html(markdown)
    assert plain_text(markdown_to_html(markdown)) == text


# -- markdown_to_html (what publish shows of a store file, maybe edited by hand) ----------
def test_markdown_to_html_drops_raw_html_and_bad_links() -> None:
    markdown = ('<script>alert(1)</script>\n\n[x](javascript:alert(1)) <b onclick="y">b</b>\n\n'
                '![i](/rel.png)')
    html = markdown_to_html(markdown, "https://e.example/")
    assert_safe(html)  # raw HTML is shown as text or left out; never a live tag
    assert "<script" not in html and "<b" not in html
    assert '<img src="https://e.example/rel.png" alt="i">' in html
    assert markdown_to_html("   ") == ""


# -- plain_text, shorten, title_from_text -----------------------------------------------------
@pytest.mark.parametrize(("fragment", "text"), [
    ("<p>Hello</p><p>world &amp; <b>x</b></p>", "Hello world & x"),
    ("<script>bad()</script><style>p{}</style>ok", "ok"),
    ("a<br>b<li>c</li><td>d</td>", "a b c d"),
    ("a &lt;b&gt; c", "a <b> c"),
    ("  纯文本\n\n  no tags ", "纯文本 no tags"),
    ("&nbsp;x&nbsp;", "x"),
    ("", ""),
])
def test_plain_text(fragment: str, text: str) -> None:
    assert plain_text(fragment) == text


@pytest.mark.parametrize(("text", "expected"), [
    ("short", "short"),
    ("x" * 200, "x" * 200),
    ("x" * 201, "x" * 197 + "..."),
    ("word " * 60, ("word " * 39).strip() + "..."),  # ends at a word
    ("中文" * 150, ("中文" * 150)[:197] + "..."),  # CJK has no spaces: cut anywhere
    ("中文，" * 100, ("中文，" * 100)[:197].rstrip("，") + "..."),  # no dangling comma
    ("  padded  ", "padded"),
])
def test_shorten(text: str, expected: str) -> None:
    out = shorten(text)
    assert out == expected
    assert len(out) <= 200


@pytest.mark.parametrize("text", ["a" * 1000, "中" * 1000, "😀" * 300, "word " * 300,
                                  "a " * 300, ". " * 300])
def test_shorten_never_exceeds_the_limit(text: str) -> None:
    out = shorten(text)
    assert len(out) <= 200 and out.endswith("...")


@pytest.mark.parametrize(("text", "title"), [
    ("第一句话。第二句话。", "第一句话。"),
    ("First sentence. Second one.", "First sentence."),
    ("Really? Yes.", "Really?"),
    ("line one\nline two", "line one"),
    ("no stop " * 30, ("no stop " * 30)[:74].strip() + "..."),  # at a word end
    ("", ""),
])
def test_title_from_text(text: str, title: str) -> None:
    assert title_from_text(text) == title
    assert len(title_from_text(text)) <= 80


# -- links and URLs ---------------------------------------------------------------------
@pytest.mark.parametrize(("text", "url", "markdown"), [
    ("腾讯新闻", "https://e.example/a/1", "[腾讯新闻](https://e.example/a/1)"),
    ("a [b] c\\", "https://e.example/a", "[a \\[b\\] c\\\\](https://e.example/a)"),
    ("x", "https://e.example/a b(1)", "[x](https://e.example/a%20b%281%29)"),
    ("x", "https://e.example/新闻?q=1&r=2#f", "[x](https://e.example/%E6%96%B0%E9%97%BB?q=1&r=2#f)"),
])
def test_markdown_link(text: str, url: str, markdown: str) -> None:
    assert markdown_link(text, url) == markdown
    rendered = markdown_to_html(markdown)
    assert [t for t, _ in tags_of(rendered)] == ["p", "a"]
    assert plain_text(rendered) == text


def test_markdown_image() -> None:
    assert markdown_image("图片", "https://e.example/1.jpg") == "![图片](https://e.example/1.jpg)"


@pytest.mark.parametrize(("url", "base", "expected"), [
    ("/a.png", "https://e.example/x/", "https://e.example/a.png"),
    ("a.png", "https://e.example/x/", "https://e.example/x/a.png"),
    ("https://o.example/a.png", None, "https://o.example/a.png"),
    ("/a.png", None, None),
    ("/a.png", "file:///srv/", None),
    ("javascript:alert(1)", "https://e.example/", None),
    ("http://[bad", "https://e.example/", None),
    ("/a.png", "http://[bad", None),
    (None, "https://e.example/", None),
    ("", "https://e.example/", None),
])
def test_absolute_url(url: str | None, base: str | None, expected: str | None) -> None:
    assert absolute_url(url, base) == expected


@pytest.mark.parametrize(("url", "ok"), [
    ("https://e.example/", True), ("http://e.example", True), ("ftp://e.example/", False),
    ("file:///x", False), ("//e.example/x", False), ("http://[bad", False), (None, False),
    ("", False), ("http://", False),
])
def test_is_web_url(url: str | None, ok: bool) -> None:
    assert is_web_url(url) is ok


@pytest.mark.parametrize(("fragment", "src"), [
    ('<p><img class="x" src="https://e.example/1.jpg"><img src="2.jpg"></p>',
     "https://e.example/1.jpg"),
    ("<IMG SRC='/a.png?x=1&amp;y=2'>", "/a.png?x=1&y=2"),
    ("<p>no image</p>", None),
    ("", None),
])
def test_first_image(fragment: str, src: str | None) -> None:
    assert first_image(fragment) == src
