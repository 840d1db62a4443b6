"""Pure text transforms: sanitize HTML, HTML -> Markdown, Markdown -> HTML, plain text.

Untrusted HTML is sanitized twice on purpose: once before it becomes Markdown in
the store (so the store holds no raw HTML Hugo would drop), and again after the
Markdown is rendered for a published feed (a person may have edited the file).
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Any
from urllib.parse import urljoin, urlsplit

import cmarkgfm
import nh3

from aggregator import html2md
from aggregator.html2md import escape_label as _escape_label
from aggregator.html2md import markdown_url

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
_BLOCK_NAMES = (r"(?:p|div|br|li|ul|ol|h[1-6]|tr|td|th|blockquote|pre|table|section|article|"
                r"figure|figcaption|dd|dt|hr)\b")
# The start of a block tag in nh3's output (lower-case names): a space goes before it, so
# that blocks' texts do not run together. The '<' matched and written back as " <": a plain
# replacement, which re does in C (a template such as r" \g<0>" costs a Python call per
# match), and a literal first character, which re finds fast.
_BLOCK_TAG_START = re.compile(rf"<(?=/?{_BLOCK_NAMES})")
# The same, any case (plain_text reads HTML that nh3 has not written).
_BEFORE_BLOCK_TAG = re.compile(rf"(?=</?{_BLOCK_NAMES})", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n{3,}")


_SURROGATE = re.compile("[\ud800-\udfff]")


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SCRUBBED = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def scrub_surrogates(text: str) -> str:
    """Lone surrogates (a JSON feed's "\\ud800") -> U+FFFD; control characters XML cannot
    hold dropped.

    Surrogates cannot be encoded as UTF-8, so nh3 and the store's file writes would fail
    on them; control characters would make the feeds Hugo builds from the store invalid XML.
    """
    if not _SCRUBBED.search(text):  # nearly always: nothing to replace
        return text
    return _XML_ILLEGAL.sub("", _SURROGATE.sub("\ufffd", text))


# Characters that reorder or hide text (title spoofing: "\u202egnp.exe" shows as
# "exe.png"): bidi embeddings, overrides and isolates, the LRM/RLM/ALM marks, zero-width
# space, word joiner and invisible operators, BOM, Mongolian vowel separator. Not ZWJ and
# ZWNJ: emoji sequences (a health worker is man + ZWJ + staff of Aesculapius) and Persian
# and Indic spelling need them inside a word; at a word's edge they only hide, and go.
_INVISIBLE = re.compile("[\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064"
                        "\u2066-\u2069\ufeff]")
_LONE_JOINER = re.compile("(?<![^\\s\u200c\u200d])[\u200c\u200d]+|[\u200c\u200d]+"
                          "(?![^\\s\u200c\u200d])")
# A complete HTML tag, comment or declaration in plain text: Hugo's markdownify (and a
# front-matter summary, which Hugo renders as Markdown) passes it on as raw HTML when
# the site sets goldmark's `unsafe = true`. A '<' that opens no tag ('a < b') stays.
_TAG_IN_TEXT = re.compile(r"<[A-Za-z/!?][^<>]*>")


def strip_invisible(text: str) -> str:
    """text without the bidi controls and invisible characters that spoof a title."""
    if text.isascii():  # nearly always: nothing to strip
        return text
    return _LONE_JOINER.sub("", _INVISIBLE.sub("", text))


def front_matter_text(text: str) -> str:
    """A feed's string as front matter holds it: plain text no Hugo setting or template
    (`markdownify`, `unsafe = true`) can turn into markup. Tags are dropped, a Markdown
    inline link's '](' gets a space (a title '[x](javascript:...)' is no link then), and
    invisible characters go; whitespace collapsed."""
    text = strip_invisible(text)
    if "<" in text:
        text = _TAG_IN_TEXT.sub("", text)
    if "](" in text:
        text = text.replace("](", "] (")
    return " ".join(text.split())


def is_web_url(url: str | None) -> bool:
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[bad": a hostile feed's link must not crash the poll
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


# An absolute http(s) URL that urljoin and urlsplit hand back exactly as given: printable
# ASCII, a host, and nothing their round trip drops or rewrites (an empty '?', '#' or ';',
# brackets they validate, characters they strip). Nearly every link in a feed is one, and
# urljoin, pure Python, was a tenth of parsing a feed.
_PLAIN_WEB_URL = re.compile(r'https?://[!"$-.0-:<->@-Z^-~][!-:<-Z^-~]*')


def _plain_web_url(url: str) -> bool:
    return (_PLAIN_WEB_URL.fullmatch(url) is not None and not url.endswith(("?", "#"))
            and "?#" not in url)


def _readable_base(base: str | None) -> bool:
    """A base urljoin reads without raising (it validates brackets and non-ASCII hosts)."""
    return not base or (base.isascii() and "[" not in base and "]" not in base)


def absolute_url(url: str | None, base: str | None) -> str | None:
    """Resolve url against base; None unless the result is an http(s) URL."""
    if not url:
        return None
    url = url.strip()
    if _plain_web_url(url) and _readable_base(base):  # what urljoin would return: a web URL
        return url
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
    if not base_url or not is_web_url(base_url):
        return _cleaner(None).clean(fragment)
    # Each item's base is its own link, and building a cleaner for it costs twice a clean;
    # nearly every feed's URLs are absolute, though. So clean once keeping relative URLs
    # as they are: with none left in the output, the base would have changed nothing.
    kept = _keeping_cleaner().clean(fragment)
    if not _has_relative_url(kept):
        return kept
    return _cleaner(base_url).clean(fragment)


_URL_ATTRIBUTES = ('href="', 'src="', 'cite="')
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")


def _has_relative_url(clean: str) -> bool:
    """Whether nh3's output (lower-case names, values double-quoted, as html5ever writes
    them) has a URL attribute whose value does not start with a scheme. Text spelling one
    counts too, which only costs a second clean. str.find, not a regex: re scans a 2 KB
    fragment for three words five times slower."""
    for attribute in _URL_ATTRIBUTES:
        at = clean.find(attribute)
        while at != -1:
            at += len(attribute)
            if not _SCHEME.match(clean, at):
                return True
            at = clean.find(attribute, at)
    return False


def _cleaner_settings() -> dict[str, Any]:
    return {
        "tags": set(ALLOWED_TAGS), "clean_content_tags": set(DROP_WITH_CONTENT),
        "attributes": {k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        "url_schemes": set(SAFE_SCHEMES), "link_rel": "noopener noreferrer",
        "strip_comments": True}


@lru_cache(maxsize=1)
def _keeping_cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(**_cleaner_settings(), url_relative="pass_through")


@lru_cache(maxsize=16)  # each ~15 KB; an item's base is mostly its own link anyway
def _cleaner(base_url: str | None) -> nh3.Cleaner:
    """nh3's sanitizer built once per base URL (nh3.clean builds it on every call: a
    third of its cost)."""
    settings = _cleaner_settings()
    if base_url is not None:
        try:
            return nh3.Cleaner(**settings, url_relative=("rewrite_with_base", base_url))
        except (ValueError, TypeError):  # an unusable base URL: drop relative URLs instead
            pass
    return nh3.Cleaner(**settings, url_relative="deny")


@lru_cache(maxsize=1)
def _text_cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(tags=set(), clean_content_tags=set(DROP_WITH_CONTENT))


# A tag of nh3's output: attribute values always double-quoted, a '>' inside them allowed.
_SANITIZED_TAG = re.compile(r'<[^>"]*(?:"[^"]*"[^>"]*)*>')


def sanitized_text(clean: str) -> str:
    """plain_text of what sanitize_html returned, without a second nh3 pass: its output
    has no comments, scripts or unquoted attributes, so dropping the tags is enough."""
    # " ".join(split()) collapses whitespace as re.sub(r"\s+", " ").strip() does (both go
    # by str.isspace()), several times faster.
    if "<" not in clean and "&" not in clean:
        return " ".join(clean.split())
    text = _SANITIZED_TAG.sub("", _BLOCK_TAG_START.sub(" <", clean))
    return " ".join((html.unescape(text) if "&" in text else text).split())


def plain_text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed, entities decoded."""
    if not fragment:
        return ""
    fragment = scrub_surrogates(fragment)
    if "<" in fragment or "&" in fragment:
        spaced = _BEFORE_BLOCK_TAG.sub(" ", fragment)
        text = _text_cleaner().clean(spaced)
        text = html.unescape(text)
    else:
        text = fragment
    return " ".join(text.split())


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


def html_to_markdown(fragment: str) -> str:
    """Sanitized HTML -> Markdown that Hugo renders without loss (no raw HTML)."""
    if not fragment or not fragment.strip():
        return ""
    markdown = html2md.convert(fragment)
    if _BR in markdown:
        markdown = "\n".join(_place_breaks(markdown.split("\n")))
    else:  # no break to place: what _place_breaks does to each line is line.rstrip()
        markdown = "\n".join([line.rstrip() for line in markdown.split("\n")])
    if "\n\n\n" in markdown:  # `in` is memchr; re scans for a repeat char by char
        markdown = _BLANK_LINES.sub("\n\n", markdown)
    return markdown.strip()


# A <br> is written as a marker first and placed afterwards: only a break with more of its
# block on the next line may become Markdown's trailing backslash. At the end of a block
# ('text<br></p>', common in feeds) that backslash would show as a literal '\\'. The marker
# is a control character str.strip() treats as space, so the converter drops it at the edges
# of inline elements ('<b>x<br></b>' -> '**x**', not '**x\\**') and removes it from text.
_BR = html2md.BR
_FENCE = re.compile(r"[ \t]*(`{3,})")
_NEW_BLOCK = re.compile(r"[ \t]*(?:$|[-+*>|#]|\d{1,9}[.)]|```)")


def _place_breaks(lines: list[str]) -> list[str]:
    out = []
    fence = ""  # in a code block a break is just its newline
    for i, line in enumerate(lines):
        opening = _FENCE.match(line)
        if opening and not fence:
            fence = opening.group(1)
        elif opening and opening.group(1).startswith(fence) and not line.strip("` \t"):
            fence = ""  # closed by a bare fence at least as long as the opening one
        fenced = bool(fence) or opening is not None
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
