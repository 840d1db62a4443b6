"""Pure text transforms: sanitize HTML, HTML -> Markdown, Markdown -> HTML, plain text.

Untrusted HTML is sanitized twice on purpose: once before it becomes Markdown in
the store (so the store holds no raw HTML Hugo would drop), and again after the
Markdown is rendered for a published feed (a person may have edited the file).
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import cmarkgfm
import nh3
from markdownify import MarkdownConverter

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
# Tags whose content is never text a reader should see.
DROP_WITH_CONTENT = frozenset(
    {"script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math",
     "form", "button", "select", "textarea", "frame", "frameset", "applet", "head", "title"}
)
ALLOWED_TAGS = frozenset(nh3.ALLOWED_TAGS - {"area", "map", "nav", "header", "footer"})
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "hreflang"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "ol": {"start"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "abbr": {"title"},
    "time": {"datetime"},
}
_BLOCK_TAG = re.compile(
    r"<(?:/?(?:p|div|br|li|ul|ol|h[1-6]|tr|td|th|blockquote|pre|table|section|article|"
    r"figure|figcaption|dd|dt|hr)\b)", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_ENTITY_LIKE = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
_BLANK_LINES = re.compile(r"\n{3,}")


_SURROGATE = re.compile("[\ud800-\udfff]")


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def scrub_surrogates(text: str) -> str:
    """Lone surrogates (a JSON feed's "\\ud800") -> U+FFFD; control characters XML cannot
    hold dropped.

    Surrogates cannot be encoded as UTF-8, so nh3 and the store's file writes would fail
    on them; control characters would make the feeds Hugo builds from the store invalid XML.
    """
    return _XML_ILLEGAL.sub("", _SURROGATE.sub("\ufffd", text))


def is_web_url(url: str | None) -> bool:
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[bad": a hostile feed's link must not crash the poll
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def absolute_url(url: str | None, base: str | None) -> str | None:
    """Resolve url against base; None unless the result is an http(s) URL."""
    if not url:
        return None
    url = url.strip()
    try:
        resolved = urljoin(base or "", url) if base else url
    except ValueError:
        return None
    return resolved if is_web_url(resolved) else None


def sanitize_html(fragment: str, base_url: str | None = None) -> str:
    """Allow-list sanitizing; relative URLs become absolute against base_url (if http)."""
    if not fragment:
        return ""
    fragment = scrub_surrogates(fragment)
    relative: object = ("rewrite_with_base", base_url) if is_web_url(base_url) else "deny"
    try:
        return nh3.clean(
            fragment,
            tags=set(ALLOWED_TAGS),
            clean_content_tags=set(DROP_WITH_CONTENT),
            attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
            url_schemes=set(SAFE_SCHEMES),
            link_rel="noopener noreferrer",
            url_relative=relative,
            strip_comments=True,
        )
    except (ValueError, TypeError):  # an unusable base URL: drop relative URLs instead
        return nh3.clean(fragment, tags=set(ALLOWED_TAGS),
                         clean_content_tags=set(DROP_WITH_CONTENT),
                         attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
                         url_schemes=set(SAFE_SCHEMES), url_relative="deny")


def plain_text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed, entities decoded."""
    if not fragment:
        return ""
    fragment = scrub_surrogates(fragment)
    if "<" in fragment or "&" in fragment:
        spaced = _BLOCK_TAG.sub(lambda m: " " + m.group(0), fragment)
        text = nh3.clean(spaced, tags=set(), clean_content_tags=set(DROP_WITH_CONTENT))
        text = html.unescape(text)
    else:
        text = fragment
    return _SPACES.sub(" ", text).strip()


def shorten(text: str, limit: int = 200, ellipsis: str = "...") -> str:
    """At most `limit` characters; a cut text ends with `ellipsis`, at a word end if near."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ellipsis)]
    space = cut.rfind(" ")
    if space >= len(cut) - 30 and space > 0:  # Latin text: end at a word; CJK has no spaces
        cut = cut[:space]
    return cut.rstrip(" ,.;:，。；：、") + ellipsis


def title_from_text(text: str, limit: int = 80) -> str:
    """A title for an entry that has none: its first sentence, shortened."""
    text = text.strip()
    for stop in ("。", "！", "？", ". ", "! ", "? ", "\n"):
        end = text.find(stop)
        if 0 < end < limit:
            return text[: end + len(stop)].strip()
    return shorten(text, limit)


def first_image(fragment: str) -> str | None:
    match = re.search(r"<img\b[^>]*?\bsrc\s*=\s*[\"']?([^\"'\s>]+)", fragment or "", re.I)
    return html.unescape(match.group(1)) if match else None


# Text that CommonMark would read as markup: inline (code, links, strikethrough, table
# cells) anywhere, block starts (quote, list, heading, setext line) after a space or a
# line start, since a text node does not know where its line begins.
_MD_INLINE = re.compile(r"[`\[\]~|]")
_MD_BLOCK_START = re.compile(r"(^|\s)(>|[-+=]+(?=\s|$)|#{1,6}(?=\s|$)|\d{1,9}[.)](?=\s|$))")


class _StoreMarkdown(MarkdownConverter):
    """markdownify, made strict: text stays text, never raw HTML, an entity or markup."""

    def escape(self, text: str, parent_tags: set[str] | None = None) -> str:
        if not text:
            return text
        text = text.replace(_BR, "").replace("\\", "\\\\")  # first: escapes add backslashes
        text = super().escape(text, parent_tags)  # * and _
        text = _MD_INLINE.sub(lambda m: "\\" + m.group(0), text)
        text = text.replace("<", "\\<")
        text = _ENTITY_LIKE.sub("\\&", text)
        return _MD_BLOCK_START.sub(_escape_block_start, text)

    # markdownify writes URLs as they are: a space or ')' in one would break the link.
    def convert_a(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if el.get("href") and "_noformat" not in parent_tags:
            el["href"] = markdown_url(el["href"])
        return super().convert_a(el, text, parent_tags)

    def convert_b(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return _flanked(super().convert_b(el, text, parent_tags))

    def convert_em(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return _flanked(super().convert_em(el, text, parent_tags))

    def convert_del(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return _flanked(super().convert_del(el, text, parent_tags))

    convert_strong = convert_b
    convert_i = convert_em
    convert_s = convert_del

    def convert_code(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if "pre" not in parent_tags:  # inline: a newline would let '1. x' start a list
            text = re.sub(r"\s*\n\s*", " ", text)
        return super().convert_code(el, text, parent_tags)

    def convert_br(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if "_inline" in parent_tags:  # headings, table cells: one line
            return " "
        return _BR + "\n"

    def convert_img(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if not el.get("src"):  # its data:/javascript: URL was sanitized away: no '![x]()'
            return ""
        el["src"] = markdown_url(el["src"])
        if el.get("alt"):
            el["alt"] = _escape_label(el["alt"])
        return super().convert_img(el, text, parent_tags)


_EMPHASIS = re.compile(r"^(\s*)(\*\*|\*|~~)(.*)\2(\s*)$", re.DOTALL)


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
    rest = inner.lstrip(_WIDE_PUNCTUATION)
    core = rest.rstrip(_WIDE_PUNCTUATION)
    if core == inner:
        return markup
    lead, trail = inner[:len(inner) - len(rest)], rest[len(core):]
    wrapped = f"{marker}{core}{marker}" if core.strip() else core
    return f"{space_before}{lead}{wrapped}{trail}{space_after}"


_WIDE_PUNCTUATION = "".join(chr(c) for c in range(0x80, 0x10000)
                            if unicodedata.category(chr(c)).startswith("P"))


def _escape_block_start(m: re.Match[str]) -> str:
    space, mark = m.group(1), m.group(2)
    if mark[0].isdigit():  # "1." or "1)": escaping the punctuation keeps it text
        return space + mark[:-1] + "\\" + mark[-1]
    return space + "\\" + mark


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def markdown_url(url: str) -> str:
    """A URL safe as a Markdown link destination: no spaces, parentheses or backslashes."""
    target = quote(url.strip(), safe="/:?#[]@!$&'*+,;=%~-._")
    return target.replace("(", "%28").replace(")", "%29")


@lru_cache(maxsize=1)
def _converter() -> _StoreMarkdown:
    return _StoreMarkdown(heading_style="atx", bullets="-", escape_misc=False,
                          newline_style="backslash", strip_document="strip")


def html_to_markdown(fragment: str) -> str:
    """Sanitized HTML -> Markdown that Hugo renders without loss (no raw HTML)."""
    if not fragment or not fragment.strip():
        return ""
    markdown = _converter().convert(fragment)
    markdown = "\n".join(_place_breaks(markdown.split("\n")))
    return _BLANK_LINES.sub("\n\n", markdown).strip()


# A <br> is written as a marker first and placed afterwards: only a break with more of its
# block on the next line may become Markdown's trailing backslash. At the end of a block
# ('text<br></p>', common in feeds) that backslash would show as a literal '\\'. The marker
# is a control character str.strip() treats as space, so markdownify drops it at the edges
# of inline elements ('<b>x<br></b>' -> '**x**', not '**x\\**'); escape() removes it from text.
_BR = "\x1f"
_NEW_BLOCK = re.compile(r"[ \t]*(?:$|[-+*>|#]|\d{1,9}[.)]|```)")


def _place_breaks(lines: list[str]) -> list[str]:
    out = []
    fenced = False  # in a code block a break is just its newline
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        line = line.rstrip()  # a marker at the end too
        if not fenced and lines[i].rstrip(" \t").endswith(_BR):
            following = lines[i + 1].replace(_BR, "") if i + 1 < len(lines) else ""
            if line and not _NEW_BLOCK.match(following):
                line += "\\"
        out.append(line.replace(_BR, ""))
    return out


def markdown_link(text: str, url: str) -> str:
    """[text](url) with the text's brackets escaped and the URL safe inside parentheses."""
    return f"[{_escape_label(text)}]({markdown_url(url)})"


def markdown_image(alt: str, url: str) -> str:
    return "!" + markdown_link(alt, url)


def markdown_to_html(markdown: str, base_url: str | None = None) -> str:
    """Store Markdown -> sanitized HTML with absolute links, for published feeds."""
    if not markdown.strip():
        return ""
    # cmark-gfm is CommonMark like Hugo's goldmark, and without CMARK_OPT_UNSAFE it omits
    # raw HTML the way goldmark's default does; nh3 then sanitizes what is left.
    rendered = cmarkgfm.markdown_to_html_with_extensions(
        markdown, options=0, extensions=["table", "strikethrough"])
    return sanitize_html(rendered, base_url).strip()
