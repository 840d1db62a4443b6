"""Pure text transforms: sanitize HTML, HTML -> Markdown, Markdown -> HTML, plain text.

Untrusted HTML is sanitized twice on purpose: once before it becomes Markdown in
the store (so the store holds no raw HTML Hugo would drop), and again after the
Markdown is rendered for a published feed (a person may have edited the file).
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit

import nh3
from markdown_it import MarkdownIt
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


class _StoreMarkdown(MarkdownConverter):
    """markdownify, made strict: nothing in the text may read as raw HTML or an entity."""

    def escape(self, text: str, parent_tags: set[str] | None = None) -> str:
        text = super().escape(text, parent_tags)
        if not text:
            return text
        text = text.replace("<", "\\<")
        return _ENTITY_LIKE.sub("\\&", text)


@lru_cache(maxsize=1)
def _converter() -> _StoreMarkdown:
    return _StoreMarkdown(heading_style="atx", bullets="-", escape_misc=False,
                          newline_style="backslash", strip_document="strip")


def html_to_markdown(fragment: str) -> str:
    """Sanitized HTML -> Markdown that Hugo renders without loss (no raw HTML)."""
    if not fragment or not fragment.strip():
        return ""
    markdown = _converter().convert(fragment)
    markdown = "\n".join(line.rstrip() for line in markdown.splitlines())
    return _BLANK_LINES.sub("\n\n", markdown).strip()


def markdown_link(text: str, url: str) -> str:
    """[text](url) with the text's brackets escaped and the URL safe inside parentheses."""
    label = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    target = quote(url, safe="/:?#[]@!$&'*+,;=%~-._")
    target = target.replace("(", "%28").replace(")", "%29")
    return f"[{label}]({target})"


def markdown_image(alt: str, url: str) -> str:
    return "!" + markdown_link(alt, url)


@lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    # CommonMark with tables and strikethrough, raw HTML off: what Hugo's goldmark does
    # with its default `unsafe = false`.
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
        ["table", "strikethrough"])


def markdown_to_html(markdown: str, base_url: str | None = None) -> str:
    """Store Markdown -> sanitized HTML with absolute links, for published feeds."""
    if not markdown.strip():
        return ""
    return sanitize_html(_renderer().render(markdown), base_url).strip()
