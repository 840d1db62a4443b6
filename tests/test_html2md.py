"""aggregator.html2md: the lxml converter gives the Markdown markdownify gave (the oracle in
tests/markdownify_oracle.py) on well-formed HTML and real feeds, and differs only where it
was changed on purpose, each change tested below."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from aggregator.content import html_to_markdown, markdown_to_html, plain_text, sanitize_html
from aggregator.errors import AggregatorError
from aggregator.parse import parse_feed

from .helpers import shared_dir
from .markdownify_oracle import oracle_markdown

BASE = "https://e.example/news/"
_RAW_ON = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_RAW_OFF = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def assert_no_raw_html(markdown: str) -> None:
    assert _RAW_ON.render(markdown) == _RAW_OFF.render(markdown), markdown


# -- same as the oracle ---------------------------------------------------------------------
# Text full of what Markdown would read as markup, Chinese punctuation and entities.
TEXT = st.lists(st.sampled_from(
    [*"ab 中文“”。，\n\t*_`[]#-+=|~!.)1\\", "&amp;", "&lt;", "&gt;", "&copy;", "&#60;"]),
    max_size=12).map("".join)
INLINE_TAGS = ["b", "strong", "em", "i", "span", "del", "s", "sub", "sup", "q", "code", "mark",
               "small", "abbr"]
HREFS = ["https://e.example/a_b", "https://e.example/x y", "/rel", "https://e.example/(1)"]


@st.composite
def inline(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 6 if depth < 4 else 2))
    if kind <= 1:
        return draw(TEXT)
    if kind == 2:
        return draw(st.sampled_from(["<br>", '<img src="https://e.example/i.png" alt="a*b">',
                                     '<img alt="no src">', '<img src="p.png" title="t">']))
    kids = "".join(draw(st.lists(inline(depth + 1), max_size=4)))
    if kind <= 5:
        tag = draw(st.sampled_from(INLINE_TAGS))
        return f"<{tag}>{kids}</{tag}>"
    return f'<a href="{draw(st.sampled_from(HREFS))}">{kids}</a>'


@st.composite
def block(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 5 if depth < 3 else 1))
    if kind == 0:
        return draw(inline(depth))
    if kind == 1:
        tag = draw(st.sampled_from(["p", "h1", "h3", "h6", "pre", "dt", "dd", "figcaption"]))
        return f"<{tag}>{''.join(draw(st.lists(inline(depth + 1), max_size=4)))}</{tag}>"
    if kind == 2:
        return "<hr>"
    if kind == 3:
        tag = draw(st.sampled_from(["ul", "ol", '<ol start="7"']))
        items = draw(st.lists(st.lists(block(depth + 1), max_size=3).map("".join),
                              min_size=1, max_size=3))
        name = tag.split()[0].lstrip("<")
        return f"<{tag.lstrip('<')}>" + "".join(f"<li>{i}</li>" for i in items) + f"</{name}>"
    if kind == 4:
        rows = draw(st.lists(st.lists(inline(3), min_size=1, max_size=3), min_size=1,
                             max_size=3))
        head = draw(st.booleans())
        out = "<table>"
        for r, cells in enumerate(rows):
            cell = "th" if head and r == 0 else "td"
            out += "<tr>" + "".join(f"<{cell}>{x}</{cell}>" for x in cells) + "</tr>"
        return out + "</table>"
    tag = draw(st.sampled_from(["div", "blockquote", "section", "article", "figure", "dl"]))
    return f"<{tag}>{''.join(draw(st.lists(block(depth + 1), max_size=4)))}</{tag}>"


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(block(), max_size=5).map("".join))
def test_same_markdown_as_the_oracle_on_well_formed_html(fragment: str) -> None:
    clean = sanitize_html(fragment, BASE)
    # A code block holding a fence gets a longer one here, on purpose (markdownify's
    # ends the block early): test_a_code_block_holding_a_fence_gets_a_longer_fence.
    assume("```" not in clean)
    assert html_to_markdown(clean) == oracle_markdown(clean), clean


def _corpus_fragments() -> list[str]:
    fragments: dict[str, None] = {}
    for path in sorted((shared_dir() / "corpus").rglob("*")):
        if not path.is_file() or path.suffix == ".md":
            continue
        try:
            parsed = parse_feed(path.read_bytes(), {}, "http://127.0.0.1/feed", "corpus")
        except AggregatorError:
            continue
        for entry in parsed.entries:
            for fragment in (entry.content_html, entry.summary_html):
                if fragment:
                    fragments[sanitize_html(fragment, BASE)] = None
    return list(fragments)


def test_same_markdown_as_the_oracle_on_every_corpus_entry() -> None:
    fragments = _corpus_fragments()
    assert len(fragments) > 100  # the corpus is there and its entries have HTML
    differ = [f for f in fragments if html_to_markdown(f) != oracle_markdown(f)]
    assert differ == []


CASES = sorted((Path(__file__).parent / "cases" / "html").glob("*.html"))


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_same_markdown_as_the_oracle_on_the_golden_cases(case: Path) -> None:
    clean = sanitize_html(case.read_text(encoding="utf-8"), BASE)
    assert html_to_markdown(clean) == oracle_markdown(clean)


# -- changed on purpose -------------------------------------------------------------------
def test_a_code_block_holding_a_fence_gets_a_longer_fence() -> None:
    # markdownify's '```' fence was closed by the code's own '```', and what followed in
    # the code became Markdown: raw HTML in the store.
    fragment = "<pre>```\n&lt;script&gt;alert(1)&lt;/script&gt;\n```</pre><p>after</p>"
    markdown = html_to_markdown(sanitize_html(fragment))
    assert markdown == "````\n```\n<script>alert(1)</script>\n```\n````\n\nafter"
    assert oracle_markdown(sanitize_html(fragment)) != markdown
    assert_no_raw_html(markdown)
    assert "<script>alert(1)</script>" in plain_text(markdown_to_html(markdown))


@pytest.mark.parametrize(("title", "shown"), [
    ("a\n\nb &lt;img src=x onerror=alert(1)&gt;", 'a b <img src=x onerror=alert(1)>'),
    ("ends in a backslash\\", "ends in a backslash\\"),
    ("say &quot;hi&quot;", 'say "hi"'),
])
def test_a_link_title_cannot_end_the_link_early(title: str, shown: str) -> None:
    # A blank line or a trailing backslash in a title ended markdownify's link early.
    markdown = html_to_markdown(sanitize_html(f'<a href="https://e.example/" title="{title}">x</a>'))
    assert_no_raw_html(markdown)
    rendered = _RAW_OFF.render(markdown)
    assert '<a href="https://e.example/" title="' in rendered
    assert html.unescape(rendered.split('title="')[1].split('">')[0]) == shown


def test_strike_is_strikethrough() -> None:
    assert html_to_markdown("<p><strike>old</strike> new</p>") == "~~old~~ new"


def test_keyboard_input_stays_on_one_line_like_code() -> None:
    assert html_to_markdown("<p><kbd>Ctrl\n1. x</kbd></p>") == "`Ctrl 1. x`"


def test_a_nested_table_counts_only_its_own_cells() -> None:
    markdown = html_to_markdown(
        "<table><tr><td>a</td><td><table><tr><td>b</td></tr></table></td></tr></table>")
    assert markdown.splitlines()[0] == "|  |  |"  # two cells, not three


def test_an_autolink_keeps_the_spaces_around_it() -> None:
    markdown = html_to_markdown('<p>see<a href="https://e.example/"> https://e.example/ </a>now</p>')
    assert markdown == "see <https://e.example/> now"  # markdownify: 'see<https://...>now'


@pytest.mark.parametrize("fragment", [
    "<div>" * 5000 + "deep &lt;b&gt; *x*" + "</div>" * 5000,
    "<ul><li>" * 3000 + "deep &lt;b&gt; *x*" + "</li></ul>" * 3000,
    "<b>" * 300 + "deep &lt;b&gt; *x*" + "</b>" * 300,
])
def test_html_nested_past_any_real_page_keeps_its_text(fragment: str) -> None:
    # libxml2 keeps nothing deeper than ~2,000 levels, and Python's recursion ends at 1,000.
    markdown = html_to_markdown(sanitize_html(fragment))
    assert markdown == "deep \\<b> \\*x\\*"
    assert plain_text(markdown_to_html(markdown)) == "deep <b> *x*"


@pytest.mark.parametrize("fragment", ["<!-- only a comment -->", "<br>", "<p> </p>", "<hr>",
                                      "<?php x ?>", "<img>"])
def test_fragments_without_text(fragment: str) -> None:
    assert html_to_markdown(fragment) in ("", "---")


@pytest.mark.parametrize(("fragment", "markdown"), [
    ("a</body>b", "ab"),
    ("a</HTML >b", "ab"),
    ("<p>a</p></body></html><p>b</p>", "a\n\nb"),
    ("</div>after", "after"),
])
def test_stray_document_end_tags_keep_what_follows(fragment: str, markdown: str) -> None:
    assert html_to_markdown(fragment) == markdown
