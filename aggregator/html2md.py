"""Sanitized HTML -> Markdown, on lxml: the conversion the store's bodies are made by.

The rules are markdownify's (whitespace, lists, tables, quotes, headings) with the store's
strictness added: text stays text (never raw HTML, an entity, emphasis or a block start),
URLs are safe link destinations, CJK emphasis keeps working, a <br> never leaves a stray
backslash. markdownify walked a BeautifulSoup tree in Python and took half of a poll
worker's time; this walks libxml2's tree once with no per-node searches, and a worker
prepares a 2 KB bench item in 0.66 ms instead of 1.23 ms. tests/test_html2md.py checks it
against markdownify (the oracle) on generated HTML and real feeds.

Input is what content.sanitize_html returns: a known set of tags, no comments, no scripts.
Anything else still converts (unknown tags keep their text), it just was not designed for.
"""

from __future__ import annotations

import functools
import html
import re
import threading
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import nh3
from lxml import etree

# Context flags handed down the tree (markdownify's parent_tags pseudo-tags).
_PRE = 1  # inside <pre>: whitespace kept as is
_NOFORMAT = 2  # inside pre/code/kbd/samp/tt: no escaping, no markup
_INLINE = 4  # inside a heading or a table cell: one line
_LI = 8  # inside a list item: a nested list hangs off it

_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Whitespace-only text next to (outside) or at the edges of (inside) these is not content.
_BLOCK_INSIDE = _HEADINGS | {"p", "blockquote", "article", "div", "section", "ol", "ul", "li",
                             "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "td",
                             "th"}
_BLOCK_OUTSIDE = _BLOCK_INSIDE | {"pre"}
_CODE_TAGS = frozenset({"code", "kbd", "samp", "tt"})

_NEWLINE_WHITESPACE = re.compile(r"[\t \r\n]*[\r\n][\t \r\n]*")
_WHITESPACE = re.compile(r"[\t ]+")
_ALL_WHITESPACE = re.compile(r"[\t \r\n]+")
_LINE_WHITESPACE = re.compile(r"[\t\r\n]")  # text without it, or "  ", needs no normalizing
_LINE_WITH_CONTENT = re.compile(r"^(.*)", re.MULTILINE)
_PRE_LEADING = re.compile(r"^[ \n]*\n")
_PRE_TRAILING = re.compile(r"[ \n]*$")
_BACKTICKS = re.compile(r"`+")
_CODE_NEWLINE = re.compile(r"\s*\n\s*")

# Text that CommonMark would read as markup: inline (code, links, strikethrough, table
# cells) anywhere, block starts (quote, list, heading, setext line) after a space or a
# line start, since a text node does not know where its line begins.
_MD_INLINE = re.compile(r"[`\[\]~|*_<]")
_MD_BLOCK_START = re.compile(r"(^|\s)(>|[-+=]+(?=\s|$)|#{1,6}(?=\s|$)|\d{1,9}[.)](?=\s|$))")
_ENTITY_LIKE = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
# What escape_text has to act on: one of these characters, or a digit then '.' or ')'.
# Two tests, not one regex with '|': re scans for a character set in C, but tries an
# alternation at every position (2.4 us for a typical text of 90 characters, 0.9 as two).
_ESCAPE_CHARS = re.compile(r"[\\`\[\]~|*_<&>\-+=#]")
_DIGIT_MARK = re.compile(r"\d[.)]")

# A <br> is written as this marker and placed by html_to_markdown afterwards: only a break
# with more of its block on the next line may become Markdown's trailing backslash. It is a
# control character str.strip() treats as space, so it vanishes at the edges of inline
# elements ('<b>x<br></b>' -> '**x**', not '**x\\**').
BR = "\x1f"


def _needs_escape(text: str) -> bool:
    return bool(_ESCAPE_CHARS.search(text)
                or (("." in text or ")" in text) and _DIGIT_MARK.search(text)))


def escape_text(text: str) -> str:
    """Text -> Markdown that shows exactly that text."""
    if not _needs_escape(text):  # most text: nothing to do
        return text
    text = text.replace("\\", "\\\\")  # first: the escapes below add backslashes
    text = _MD_INLINE.sub(r"\\\g<0>", text)
    text = _ENTITY_LIKE.sub("\\&", text)
    return _MD_BLOCK_START.sub(_escape_block_start, text)


def _escape_block_start(m: re.Match[str]) -> str:
    space, mark = m.group(1), m.group(2)
    if mark[0].isdigit():  # "1." or "1)": escaping the punctuation keeps it text
        return space + mark[:-1] + "\\" + mark[-1]
    return space + "\\" + mark


def escape_label(text: str) -> str:
    # '<' too: a label '<img onerror=...>' (a feed's title, an alt text) is raw HTML to a
    # Hugo site with goldmark's `unsafe = true`.
    return (text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
            .replace("<", "\\<"))


# A URL quote() would hand back unchanged: its always-safe characters and `safe` below.
_QUOTED_URL = re.compile(r"[A-Za-z0-9/:?#\[\]@!$&'*+,;=%~._-]*")


def markdown_url(url: str) -> str:
    """A URL safe as a Markdown link destination: no spaces, parentheses or backslashes."""
    url = url.strip()
    if _QUOTED_URL.fullmatch(url):  # nearly every URL: quote() is slow to change nothing
        return url
    target = quote(url, safe="/:?#[]@!$&'*+,;=%~-._")
    return target.replace("(", "%28").replace(")", "%29")


def _title_part(title: str | None) -> str:
    """' "title"' for a link or image; a backslash or blank line in it would end the link
    early and let the rest be read as Markdown (raw HTML included)."""
    if not title or not title.strip():
        return ""
    title = _ALL_WHITESPACE.sub(" ", title.strip()).replace("\\", "\\\\").replace('"', '\\"')
    return f' "{title}"'


# -- inline elements ------------------------------------------------------------------------
def _chomp(text: str) -> tuple[str, str, str]:
    """' x ' -> (' ', ' ', 'x'): markup hugs its text, the spaces stay outside it."""
    prefix = " " if text[:1] == " " else ""
    suffix = " " if text[-1:] == " " else ""
    return prefix, suffix, text.strip()


_EMPHASIS = re.compile(r"^(\s*)(\*\*|\*|~~)(.*)\2(\s*)$", re.DOTALL)


@functools.cache
def _wide_punctuation() -> str:  # built on first use: 10 ms, a tenth of `poll`'s imports
    return "".join(chr(c) for c in range(0x80, 0x10000)
                   if unicodedata.category(chr(c)).startswith("P"))


def _flanked(markup: str) -> str:
    """'**“大模型”**' -> '“**大模型**”'.

    CommonMark (and Hugo's goldmark) only opens '**' before punctuation when a space or
    punctuation precedes it, so '医院**“大模型”**上线' would show its asterisks. Chinese
    text has no spaces: move the (non-ASCII, so never an escape) edge punctuation outside.
    """
    m = _EMPHASIS.match(markup)
    if not m:
        return markup
    space_before, marker, inner, space_after = m.groups()
    punctuation = _wide_punctuation()
    rest = inner.lstrip(punctuation)
    core = rest.rstrip(punctuation)
    if core == inner:
        return markup
    lead, trail = inner[:len(inner) - len(rest)], rest[len(core):]
    wrapped = f"{marker}{core}{marker}" if core.strip() else core
    return f"{space_before}{lead}{wrapped}{trail}{space_after}"


@functools.cache
def _edge_characters() -> frozenset[str]:
    """Characters at the edge of an emphasis's text that make _flanked look closer."""
    return frozenset(_wide_punctuation()) | {"*", "~"}


def _flank(prefix: str, marker: str, text: str, suffix: str) -> str:
    """_flanked(prefix + marker + text + marker + suffix) without its regex when text
    (stripped, not empty) neither starts nor ends with wide punctuation or a marker's
    character: then there is nothing to move, and the markup is as built."""
    edge = _edge_characters()
    if text[0] not in edge and text[-1] not in edge:  # nearly always
        return f"{prefix}{marker}{text}{marker}{suffix}"
    return _flanked(f"{prefix}{marker}{text}{marker}{suffix}")


def _emphasis(marker: str) -> Callable[[Any, str, int], str]:
    def convert(el: Any, text: str, flags: int) -> str:
        if flags & _NOFORMAT:
            return text
        prefix, suffix, text = _chomp(text)
        if not text:
            return ""
        return _flank(prefix, marker, text, suffix)
    return convert


def _plain_inline(el: Any, text: str, flags: int) -> str:  # sub, sup: no Markdown for them
    if flags & _NOFORMAT:
        return text
    prefix, suffix, text = _chomp(text)
    return f"{prefix}{text}{suffix}" if text else ""


def _a(el: Any, text: str, flags: int) -> str:
    if flags & _NOFORMAT:
        return text
    prefix, suffix, text = _chomp(text)
    if not text:
        return ""
    href = el.get("href")
    if not href:
        return text
    href = markdown_url(href)
    title = el.get("title")
    if not title and text.replace(r"\_", "_") == href:
        return f"{prefix}<{href}>{suffix}"
    return f"{prefix}[{text}]({href}{_title_part(title)}){suffix}"


def _img(el: Any, text: str, flags: int) -> str:
    src = el.get("src")
    if not src:  # its data:/javascript: URL was sanitized away: no '![x]()'
        return ""
    alt = escape_label(el.get("alt") or "")
    if flags & _INLINE:
        return alt
    return f"![{alt}]({markdown_url(src)}{_title_part(el.get('title'))})"


def _code(el: Any, text: str, flags: int) -> str:
    if not flags & _PRE:  # inline: a newline would let '1. x' start a list
        text = _CODE_NEWLINE.sub(" ", text)
    if flags & _NOFORMAT:
        return text
    prefix, suffix, text = _chomp(text)
    if not text:
        return ""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    delimiter = "`" * (longest + 1)
    if longest:
        text = f" {text} "
    return f"{prefix}{delimiter}{text}{delimiter}{suffix}"


def _br(el: Any, text: str, flags: int) -> str:
    return " " if flags & _INLINE else BR + "\n"


def _q(el: Any, text: str, flags: int) -> str:
    return f'"{text}"'


# -- blocks ---------------------------------------------------------------------------------
def _p(el: Any, text: str, flags: int) -> str:
    text = text.strip(" \t\r\n")
    if flags & _INLINE:
        return f" {text} "
    return f"\n\n{text}\n\n" if text else ""


def _div(el: Any, text: str, flags: int) -> str:
    text = text.strip()
    if flags & _INLINE:
        return f" {text} "
    return f"\n\n{text}\n\n" if text else ""


def _heading(el: Any, text: str, flags: int) -> str:
    if flags & _INLINE:
        return text
    text = _ALL_WHITESPACE.sub(" ", text.strip())
    return f"\n\n{'#' * int(el.tag[1])} {text}\n\n"


def _blockquote(el: Any, text: str, flags: int) -> str:
    text = text.strip(" \t\r\n")
    if flags & _INLINE:
        return f" {text} "
    if not text:
        return "\n"
    text = _LINE_WITH_CONTENT.sub(lambda m: "> " + m.group(1) if m.group(1) else ">", text)
    return f"\n{text}\n\n"


def _pre(el: Any, text: str, flags: int) -> str:
    if not text:
        return ""
    text = _PRE_TRAILING.sub("", _PRE_LEADING.sub("", text))
    # A fence longer than any backtick run inside: '```' in the code must not close it
    # (what followed would be read as Markdown, raw HTML included).
    fence = "`" * max(3, max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    return f"\n\n{fence}\n{text}\n{fence}\n\n"


def _hr(el: Any, text: str, flags: int) -> str:
    return "\n\n---\n\n"


def _list(el: Any, text: str, flags: int) -> str:
    following = _next_content_sibling(el)
    before_paragraph = following is not None and following not in ("ul", "ol")
    if flags & _LI:  # a nested list: hangs off its item
        return "\n" + text.rstrip()
    return "\n\n" + text + ("\n" if before_paragraph else "")


def _li(el: Any, text: str, flags: int) -> str:
    text = text.strip()
    if not text:
        return "\n"
    parent = el.getparent()
    if parent is not None and parent.tag == "ol":
        start = parent.get("start")
        number = int(start) if start and start.isdecimal() else 1
        number += sum(1 for _ in el.itersiblings("li", preceding=True))
        bullet = f"{number}. "
    else:
        bullet = "- "
    if "\n" not in text:  # one line (text is stripped, not empty): no indenting to do
        return bullet + text + "\n"
    indent = " " * len(bullet)
    text = _LINE_WITH_CONTENT.sub(lambda m: indent + m.group(1) if m.group(1) else "", text)
    return bullet + text[len(bullet):] + "\n"


def _dd(el: Any, text: str, flags: int) -> str:
    text = text.strip()
    if flags & _INLINE:
        return f" {text} "
    if not text:
        return "\n"
    text = _LINE_WITH_CONTENT.sub(lambda m: "    " + m.group(1) if m.group(1) else "", text)
    return ":" + text[1:] + "\n"


def _dt(el: Any, text: str, flags: int) -> str:
    text = _ALL_WHITESPACE.sub(" ", text.strip())
    if flags & _INLINE:
        return f" {text} "
    return f"\n\n{text}\n" if text else "\n"


def _table(el: Any, text: str, flags: int) -> str:
    return "\n\n" + text.strip() + "\n\n"


def _caption(el: Any, text: str, flags: int) -> str:
    return text.strip() + "\n\n"


def _figcaption(el: Any, text: str, flags: int) -> str:
    return "\n\n" + text.strip() + "\n\n"


def _colspan(cell: Any) -> int:
    span = cell.get("colspan")
    return max(1, min(1000, int(span))) if span and span.isdecimal() else 1


def _cell(el: Any, text: str, flags: int) -> str:
    return " " + text.strip().replace("\n", " ") + " |" * _colspan(el)


def _tr(el: Any, text: str, flags: int) -> str:
    cells = [c for c in el if c.tag in ("td", "th")]
    parent = el.getparent()
    parent_tag = parent.tag if parent is not None else None
    first_row = el.getprevious() is None
    head_row = all(c.tag == "th" for c in cells) or (
        parent_tag == "thead" and sum(1 for _ in parent.iterchildren("tr")) == 1)
    head_missing = first_row and (
        parent_tag != "tbody"
        or not any(True for _ in parent.getparent().iterchildren("thead")))
    width = sum(_colspan(c) for c in cells)
    overline = underline = ""
    if head_row and first_row:
        underline = "| " + " | ".join(["---"] * width) + " |\n"
    elif head_missing or (first_row and (
            parent_tag == "table" or (parent_tag == "tbody" and parent.getprevious() is None))):
        overline = ("| " + " | ".join([""] * width) + " |\n"
                    + "| " + " | ".join(["---"] * width) + " |\n")
    return overline + "|" + text + "\n" + underline


_CONVERT: dict[str, Callable[[Any, str, int], str]] = {
    "a": _a, "img": _img, "br": _br, "q": _q,
    "b": _emphasis("**"), "strong": _emphasis("**"),
    "em": _emphasis("*"), "i": _emphasis("*"),
    "del": _emphasis("~~"), "s": _emphasis("~~"), "strike": _emphasis("~~"),
    "sub": _plain_inline, "sup": _plain_inline,
    "code": _code, "kbd": _code, "samp": _code, "tt": _code,
    "p": _p, "div": _div, "article": _div, "section": _div, "dl": _div,
    "blockquote": _blockquote, "pre": _pre, "hr": _hr,
    "ul": _list, "ol": _list, "li": _li, "dd": _dd, "dt": _dt,
    "table": _table, "caption": _caption, "figcaption": _figcaption,
    "td": _cell, "th": _cell, "tr": _tr,
    **{h: _heading for h in _HEADINGS},
}


# -- the walk -------------------------------------------------------------------------------
def _next_content_sibling(el: Any) -> str | None:
    """The tag of what follows el in its parent ('#text' for text), skipping blank text."""
    if el.tail and el.tail.strip():
        return "#text"
    for sibling in el.itersiblings():
        if isinstance(sibling.tag, str):
            return sibling.tag
        if sibling.tail and sibling.tail.strip():
            return "#text"
    return None


def _children(el: Any) -> list[Any]:
    """el's content in order: str for text, elements for elements; comments and processing
    instructions dropped (their neighbouring texts joined, as the reader sees them)."""
    text = el.text
    out: list[Any] = [text] if text else []
    for child in el:
        if child.tag.__class__ is str:  # not a comment's or PI's (a function)
            out.append(child)
        tail = child.tail
        if tail:
            if out and out[-1].__class__ is str:
                out[-1] += tail
            else:
                out.append(tail)
    return out


# Text with none of these needs neither its whitespace normalized nor anything escaped
# (unless it has "  ", or a digit then '.' or ')'): one search on nearly every text.
_SPECIAL_CHARS = re.compile(r"[\t\r\n\\`\[\]~|*_<&>\-+=#" + BR + "]")


def _plain(text: str) -> bool:
    return not (_SPECIAL_CHARS.search(text) or "  " in text
                or (("." in text or ")" in text) and _DIGIT_MARK.search(text)))


def _odd_whitespace(text: str) -> bool:
    return "  " in text or _LINE_WHITESPACE.search(text) is not None


def _convert_text(text: str, flags: int, strip_left: bool, strip_right: bool) -> str:
    if flags & (_PRE | _NOFORMAT) or not _plain(text):
        if not flags & _PRE and _odd_whitespace(text):
            text = _WHITESPACE.sub(" ", _NEWLINE_WHITESPACE.sub("\n", text))
        if not flags & _NOFORMAT:
            text = escape_text(text.replace(BR, ""))
    if strip_left:
        text = text.lstrip(" \t\r\n")
    if strip_right:
        text = text.rstrip()
    return text


# The flags an element hands its children.
_CHILD_FLAGS = {**dict.fromkeys(_HEADINGS, _INLINE), "td": _INLINE, "th": _INLINE,
                "pre": _PRE | _NOFORMAT, **dict.fromkeys(_CODE_TAGS, _NOFORMAT), "li": _LI}


def _convert(el: Any, tag: str, flags: int, depth: int = 0) -> str:
    if depth > MAX_DEPTH:
        raise _TooDeep
    inside = tag in _BLOCK_INSIDE
    children = _children(el)
    last = len(children) - 1
    child_flags = flags | _CHILD_FLAGS.get(tag, 0)

    parts: list[str] = []
    for i, child in enumerate(children):
        if child.__class__ is str:
            block_before = i > 0 and children[i - 1].tag in _BLOCK_OUTSIDE
            block_after = i < last and children[i + 1].tag in _BLOCK_OUTSIDE
            if not child.strip() and (
                    (inside and (i == 0 or i == last)) or block_before or block_after):
                continue
            part = _convert_text(child, child_flags, block_before or (inside and i == 0),
                                 block_after or (inside and i == last))
        else:
            part = _convert(child, child.tag, child_flags, depth + 1)
        if part:
            parts.append(part)

    if flags & _PRE or tag == "pre":
        text = "".join(parts)
    else:  # where two blocks meet, their newlines overlap (at most one blank line)
        pieces = [""]
        for part in parts:
            if part[0] != "\n" and part[-1] != "\n":  # most parts: inline text
                pieces += ("", part, "")
                continue
            # part = leading newlines + content + trailing newlines (str methods: a regex
            # splitting it so was a tenth of the conversion)
            content = part.strip("\n")
            rest = part.lstrip("\n")
            leading, trailing = part[:len(part) - len(rest)], rest[len(content):]
            if pieces[-1] and leading:
                previous = pieces.pop()
                leading = "\n" * min(2, max(len(previous), len(leading)))
            pieces += (leading, content, trailing)
        text = "".join(pieces)

    convert = _CONVERT.get(tag)
    return convert(el, text, flags) if convert else text


_PARSERS = threading.local()


def _parser() -> etree.HTMLParser:
    """This thread's parser (lxml does not support one parser shared by threads); plain
    lxml elements, not lxml.html's, whose class lookup costs a call per node."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = etree.HTMLParser(remove_comments=True, remove_pis=True,
                                                    default_doctype=False)
    return parser

MAX_DEPTH = 200
# ASCII case spelt out rather than re.IGNORECASE: re then looks for "</" in C.
_DOCUMENT_END = re.compile(r"</(?:[bB][oO][dD][yY]|[hH][tT][mM][lL])\b[^>]*>")


def convert(fragment: str) -> str:
    """HTML fragment -> Markdown with BR markers (content.html_to_markdown places them)."""
    # A stray </body> or </html> would end the wrapper early and lose what follows it.
    fragment = _DOCUMENT_END.sub("", fragment)
    try:
        document = etree.fromstring(f"<html><body>{fragment}</body></html>", _parser())
        # iterchildren, not find(): ElementPath costs more than a short fragment's walk.
        body = next(document.iterchildren("body"), None) if document is not None else None
        if body is None:  # nothing parseable: no text to keep
            return ""
        return _convert(body, "[document]", 0).strip("\n")
    except (etree.ParserError, ValueError):
        return ""
    except _TooDeep:
        # Nested past any real page (hostile or broken; libxml2 even drops what lies
        # deeper than ~2,000 levels): keep the text, not the structure.
        text = html.unescape(nh3.clean(fragment, tags=set()))
        return escape_text(_ALL_WHITESPACE.sub(" ", text).strip())


class _TooDeep(Exception):
    pass
