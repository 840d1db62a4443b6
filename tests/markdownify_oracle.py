"""The HTML -> Markdown conversion the store used before aggregator.html2md: markdownify
with the store's strict escaping, kept as an oracle for tests/test_html2md.py.

html2md must give the same Markdown for well-formed HTML, except where it was changed on
purpose (each such change has its own test there).
"""

from __future__ import annotations

import re
from typing import Any

from markdownify import MarkdownConverter

from aggregator.content import _place_breaks
from aggregator.html2md import (
    BR,
    _flanked,
    escape_label,
    escape_text,
    markdown_url,
)

_BLANK_LINES = re.compile(r"\n{3,}")


class _OracleMarkdown(MarkdownConverter):
    def escape(self, text: str, parent_tags: set[str] | None = None) -> str:
        return escape_text(text.replace(BR, "")) if text else text

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
        if "pre" not in parent_tags:
            text = re.sub(r"\s*\n\s*", " ", text)
        return super().convert_code(el, text, parent_tags)

    def convert_br(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return " " if "_inline" in parent_tags else BR + "\n"

    def convert_img(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if not el.get("src"):
            return ""
        el["src"] = markdown_url(el["src"])
        if el.get("alt"):
            el["alt"] = escape_label(el["alt"])
        return super().convert_img(el, text, parent_tags)


_CONVERTER = _OracleMarkdown(heading_style="atx", bullets="-", escape_misc=False,
                             escape_asterisks=False, escape_underscores=False,
                             newline_style="backslash", strip_document="strip")


def oracle_markdown(fragment: str) -> str:
    if not fragment or not fragment.strip():
        return ""
    markdown = _CONVERTER.convert(fragment)
    markdown = "\n".join(_place_breaks(markdown.split("\n")))
    return _BLANK_LINES.sub("\n\n", markdown).strip()
