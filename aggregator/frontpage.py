"""Pure: the front page (index.html) and feeds.opml of the output directory.

No JavaScript and no external assets: the page is readable in any browser, on a
phone, and offline; it carries <link rel="alternate"> so readers autodiscover.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, select_autoescape

from aggregator import __version__
from aggregator.content import is_web_url
from aggregator.model import Config, FeedSpec
from aggregator.slug import url_segment

if TYPE_CHECKING:
    from aggregator.publish import Entry

LATEST = 30
LABELS = {
    "zh": {"subscribe": "订阅", "latest": "最新文章", "empty": "还没有文章：先运行 aggregator poll。",
           "all": "全部", "tag": "标签", "category": "分类", "source": "来源", "colon": "：",
           "subscribe_all": "订阅全部 %(count)d 篇",
           "footer": "共 %(count)d 篇文章，%(feeds)d 个订阅源"},
    "en": {"subscribe": "Subscribe", "latest": "Latest", "empty": "No items yet: run aggregator poll.",
           "all": "All items", "tag": "Tags", "category": "Categories", "source": "Sources",
           "colon": ": ",
           "subscribe_all": "Subscribe to all %(count)d items",
           "footer": "%(count)d items in %(feeds)d feeds"},
}


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=PackageLoader("aggregator", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), keep_trailing_newline=True)


def _links(spec: FeedSpec) -> dict[str, str]:
    """Relative links, so the page works wherever the output directory is served."""
    folder = "" if spec.kind == "all" else (
        spec.directory.split("/")[0] + "/" + url_segment(spec.slug) + "/")
    return {"rss": folder + "index.xml", "atom": folder + "atom.xml", "json": folder + "feed.json"}


def _feed_name(site_title: str, spec: FeedSpec) -> str:
    """What the page calls a feed: the term, or for a source its title without the site's."""
    if spec.kind != "source":
        return spec.term
    prefix = f"{site_title} · "
    return spec.title[len(prefix):] if spec.title.startswith(prefix) else spec.title


def render_index_html(config: Config, counts: Mapping[FeedSpec, int], latest: Sequence[Entry],
                      tag_slugs: Mapping[str, str]) -> bytes:
    """counts: every published feed and its items; latest: the newest items; tag_slugs:
    the folder of every tag (publish's, not term_slug alone)."""
    site = config.site
    t = LABELS["zh" if site.language.lower().startswith("zh") else "en"]
    all_spec = next(s for s in counts if s.kind == "all")
    groups = []
    for kind in ("category", "source", "tag"):
        specs = sorted((s for s in counts if s.kind == kind),
                       key=lambda s: (-counts.get(s, 0), s.term.casefold(), s.slug))
        groups.append({"id": kind, "title": t[kind], "feeds": [
            {"name": _feed_name(site.title, s), "count": counts.get(s, 0), **_links(s)}
            for s in specs]})
    # An item names its source as the source's feed does (the configured title, else
    # the feed's own), and links to that feed only when one was published.
    source_feeds = {s.term: s for s in counts if s.kind == "source"}
    site_lang = site.language.casefold()
    items = []
    for e in sorted(latest, key=lambda e: e.sort_key)[:LATEST]:
        item = e.item
        source = item.source
        spec = source_feeds.get(source) if source else None
        lang = item.lang[0] if item.lang else ""
        items.append({
            "title": item.title,
            "link": item.link if is_web_url(item.link) else None,
            # Marked only where it differs from the page's, so the browser picks fitting
            # fonts (Chinese glyphs in an English page, and the reverse).
            "lang": lang if lang and lang.casefold() != site_lang else "",
            "date_iso": item.date.isoformat(),
            "date_text": item.date.strftime("%Y-%m-%d %H:%M"),
            "source": (_feed_name(site.title, spec) if spec else source) if source else None,
            "source_feed": _links(spec)["rss"] if spec else "",
            "author": item.author,
            "summary": item.summary,
            "tags": [{"name": tag, "href": f"tags/{url_segment(tag_slugs[tag])}/index.xml"}
                     for tag in item.tags[:8] if tag in tag_slugs],
        })
    html = _env().get_template("index.html.j2").render(
        site=site, t=t, all_feed=_links(all_spec), all_count=counts[all_spec],
        groups=groups, latest=items, item_count=counts[all_spec], feed_count=len(counts),
        generator=f"aggregator {__version__}")
    return html.encode("utf-8")


def render_opml(config: Config, feeds: Iterable[FeedSpec]) -> bytes:
    """OPML 2.0 of every published feed, grouped like the front page."""
    site = config.site
    t = LABELS["zh" if site.language.lower().startswith("zh") else "en"]
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = site.title
    ET.SubElement(head, "docs").text = "http://opml.org/spec2.opml"
    body = ET.SubElement(root, "body")
    base = site.base_url

    def outline(parent: ET.Element, spec: FeedSpec, text: str) -> None:
        links = _links(spec)
        ET.SubElement(parent, "outline", type="rss", text=text, title=spec.title,
                      xmlUrl=base + links["rss"], htmlUrl=base)

    feeds = list(feeds)
    all_spec = next(s for s in feeds if s.kind == "all")
    outline(body, all_spec, t["all"])
    for kind in ("category", "source", "tag"):
        specs = sorted((s for s in feeds if s.kind == kind), key=lambda s: (s.term, s.slug))
        if not specs:
            continue
        folder = ET.SubElement(body, "outline", text=t[kind], title=t[kind])
        for spec in specs:
            outline(folder, spec, _feed_name(site.title, spec))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
