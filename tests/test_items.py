"""items.build_item: one feed entry + its source -> the store Item (SPEC §3). Pure."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from aggregator.items import build_item, passes_filters, source_title
from aggregator.model import Entry, Item, ParsedFeed, Site, Source

SITE = Site("智能医疗资讯", "", "http://127.0.0.1:8000/", "zh-CN", "Asia/Shanghai")
SOURCE = Source(id="qq", url="https://e.example/rss", categories=("qq", "新闻"),
                tags=("医疗", "AI"))
FEED = ParsedFeed(title="腾讯新闻", link="https://e.example/", language="zh-cn", entries=())
NOW = datetime(2025, 2, 14, 2, 0, 0, tzinfo=UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")
THEME = {"sidebar": "right", "comments": False}


def entry(**fields: object) -> Entry:
    base = Entry(entry_id=None, link=None, title="", content_html="", summary_html="",
                 published=None, updated=None)
    return replace(base, **fields)


def build(e: Entry, source: Source = SOURCE, feed: ParsedFeed = FEED) -> Item | None:
    return build_item(e, source, feed, SITE, THEME, NOW)


def built(e: Entry, source: Source = SOURCE, feed: ParsedFeed = FEED) -> Item:
    item = build(e, source, feed)
    assert item is not None
    return item


def test_a_full_entry() -> None:
    item = built(entry(
        entry_id="guid-1", link="https://e.example/a/1", title="  三家医院接入大模型  ",
        content_html='<p>正文<script>x()</script></p><img src="/img/2.jpg">',
        summary_html="<p>摘要 <b>粗体</b></p>", author="记者",
        published=datetime(2025, 2, 13, 12, 0, tzinfo=UTC), categories=("ai", "人工智能"),
        thumbnail="/img/1.jpg", base_url="https://e.example/a/"))
    assert item == Item(
        title="三家医院接入大模型",
        date=datetime(2025, 2, 13, 20, 0, tzinfo=SHANGHAI),
        summary="摘要 粗体",
        categories=("qq", "新闻"),
        lang=("zh-CN",),
        tags=("医疗", "AI", "人工智能"),  # 'ai' is 'AI': first spelling kept
        thumbnail="https://e.example/img/1.jpg",
        author="记者",
        link="https://e.example/a/1",
        source="qq",
        guid="guid-1",
        extra=item.extra,
        body="![三家医院接入大模型](https://e.example/img/1.jpg)\n\n正文\n\n"
             "![](https://e.example/img/2.jpg)\n\n[腾讯新闻](https://e.example/a/1)\n",
    )
    assert dict(item.extra) == THEME


def test_entry_with_nothing_is_skipped() -> None:
    assert build(entry()) is None
    assert build(entry(title="   ", content_html="<p> </p><script>x</script>")) is None


@pytest.mark.parametrize(("fields", "title"), [
    ({"content_html": "<p>第一句话。第二句话。</p>"}, "第一句话。"),
    ({"content_html": "<p>First sentence. Second one.</p>"}, "First sentence."),
    ({"summary_html": "<p>Only a summary here</p>"}, "Only a summary here"),
    ({"link": "https://e.example/a/1"}, "https://e.example/a/1"),
    ({"entry_id": "urn:x:1"}, "urn:x:1"),
])
def test_title_derived_when_missing(fields: dict[str, object], title: str) -> None:
    assert built(entry(**fields)).title == title


def test_summary_is_plain_text_at_most_200_characters() -> None:
    long_html = "<p>" + "<b>医疗</b>人工智能，" * 100 + "</p>"
    item = built(entry(title="t", summary_html=long_html))
    assert len(item.summary) <= 200 and item.summary.endswith("...")
    assert "<" not in item.summary and "*" not in item.summary
    # Without a summary the text of the content is used.
    assert built(entry(title="t", content_html="<p>a &amp; <i>b</i></p>")).summary == "a & b"


def test_summary_of_hostile_html() -> None:
    item = built(entry(title="t", summary_html='<p onclick="x">hi</p><script>alert(1)</script>'))
    assert item.summary == "hi"


@pytest.mark.parametrize(("published", "updated", "expected"), [
    (None, None, NOW),  # missing: first seen
    (NOW + timedelta(days=30), None, NOW),  # far future: a publisher's mistake
    (NOW + timedelta(hours=12), None, NOW + timedelta(hours=12)),  # a little ahead: clocks
    (None, datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
    (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC),
     datetime(2025, 1, 1, tzinfo=UTC)),  # published wins over updated
    (datetime(2025, 1, 1, 12, 30, 15, 999, tzinfo=timezone(timedelta(hours=-5))), None,
     datetime(2025, 1, 2, 1, 30, 15, tzinfo=SHANGHAI)),
])
def test_date(published: datetime | None, updated: datetime | None, expected: datetime) -> None:
    item = built(entry(title="t", published=published, updated=updated))
    assert item.date == expected.replace(microsecond=0)
    assert item.date.tzinfo == SHANGHAI  # the site's zone, so the file shows local time
    assert item.date.microsecond == 0


def test_absurdly_old_dates_are_floored_at_the_epoch() -> None:
    item = built(entry(title="t", published=datetime(1500, 1, 1, tzinfo=UTC)))
    assert datetime(1970, 1, 1, tzinfo=UTC) < item.date < datetime(1970, 1, 3, tzinfo=UTC)
    assert item.date.tzinfo == SHANGHAI


@pytest.mark.parametrize(("thumbnail", "content", "body_start"), [
    ("https://e.example/t.jpg", "<p>x</p>", "![T](https://e.example/t.jpg)\n\nx\n\n"),
    ("https://e.example/t.jpg", '<p>x</p><img src="https://e.example/t.jpg">',
     "x\n\n![](https://e.example/t.jpg)\n\n"),  # already in the body: not twice
    ("https://e.example/图 1.jpg", '<img src="https://e.example/图 1.jpg">',
     "![](https://e.example/%E5%9B%BE%201.jpg)\n\n"),  # same image, encoded in the body
    ("/rel/t.jpg", "<p>x</p>", "![T](https://e.example/rel/t.jpg)\n\nx\n\n"),
    ("javascript:alert(1)", "<p>x</p>", "x\n\n"),  # not a web URL: no thumbnail
    (None, "", ""),
])
def test_thumbnail_prepended_once(thumbnail: str | None, content: str, body_start: str) -> None:
    item = built(entry(title="T", link="https://e.example/a", thumbnail=thumbnail,
                       content_html=content, base_url="https://e.example/"))
    assert item.body == body_start + "[腾讯新闻](https://e.example/a)\n"
    assert (item.thumbnail is None) == (thumbnail in (None, "javascript:alert(1)"))


@pytest.mark.parametrize(("source", "feed", "label"), [
    (SOURCE, FEED, "腾讯新闻"),  # the feed's title
    (replace(SOURCE, title="QQ 新闻"), FEED, "QQ 新闻"),  # feeds.yaml's title wins
    (SOURCE, replace(FEED, title=None), "qq"),  # else the id
    (SOURCE, replace(FEED, title="a [b] c"), "a \\[b\\] c"),
])
def test_last_body_line_links_the_original(source: Source, feed: ParsedFeed, label: str) -> None:
    item = built(entry(title="t", link="https://e.example/a?b=1&c=(2)",
                       content_html="<p>text</p>"), source, feed)
    assert item.body.splitlines()[-1] == f"[{label}](https://e.example/a?b=1&c=%282%29)"
    assert item.body.endswith(")\n")


def test_no_link_no_link_line() -> None:
    item = built(entry(entry_id="g", title="t", content_html="<p>text</p>"))
    assert item.body == "text\n"
    assert (item.link, item.guid) == (None, "g")


def test_guid_without_id_or_link_is_stable_and_per_source() -> None:
    e = entry(title="t", content_html="<p>text</p>")
    a, b = built(e).guid, built(e).guid
    assert a == b and a.startswith("urn:aggregator:")
    assert built(e, replace(SOURCE, id="other")).guid != a


def test_terms_and_language() -> None:
    item = built(entry(title="t", categories=("医疗", "Health", "health", "AI")))
    assert item.tags == ("医疗", "AI", "Health")
    assert item.categories == ("qq", "新闻")  # only the source's
    assert item.lang == ("zh-CN",)  # the feed's 'zh-cn', spelled as Hugo sites do
    assert built(entry(title="t"), replace(SOURCE, lang="en_us")).lang == ("en-US",)
    assert built(entry(title="t"), SOURCE, replace(FEED, language=None)).lang == ("zh-CN",)
    assert built(entry(title="t"), replace(SOURCE, categories=())).categories == ()


def test_hostile_content_is_sanitized_into_markdown() -> None:
    item = built(entry(title="t", content_html=(
        '<p onclick="x()">hi <a href="javascript:alert(1)">j</a></p><script>alert(2)</script>'
        "<p>&lt;script&gt;alert(3)&lt;/script&gt;</p>")))
    assert item.body == "hi j\n\n\\<script>alert(3)\\</script>\n"


@pytest.mark.parametrize("zero", [datetime(1, 1, 1, tzinfo=UTC),
                                  datetime(1, 1, 1, 8, 5, 43, tzinfo=timezone(timedelta(hours=8)))])
def test_a_year_1_zero_date_is_no_date(zero: datetime) -> None:
    """Hugo's and Go's zero date (0001-01-01) is a site that set none: dated when first seen,
    as an undated entry is, not 1970."""
    assert built(entry(title="t", published=zero)).date == NOW
    assert built(entry(title="t", updated=zero)).date == NOW


def test_a_title_with_markup_is_escaped_in_the_lead_image_alt() -> None:
    from aggregator.content import markdown_to_html

    item = built(entry(title="Die Rückkehr von <i> und <b> [1]", link="https://e.example/a",
                       thumbnail="https://e.example/t.jpg", content_html="<p>x</p>"))
    # Front matter holds no tag (issue 20: a Hugo theme may markdownify it with unsafe on),
    # so the title's "<i>" goes; what is left of it is the alt text, as plain text.
    assert item.title == "Die Rückkehr von und [1]"
    # No raw HTML in the Markdown (SPEC §3): Hugo's goldmark would drop '<i>' from the alt.
    assert not re.search(r"(?<!\\)<[ib]>", item.body), item.body
    html = markdown_to_html(item.body)
    assert 'alt="Die Rückkehr von und [1]"' in html
    assert "<i>" not in html and "<b>" not in html


@pytest.mark.parametrize(("fields", "title"), [
    ({"content_html": '<p><img src="/p/1.jpg" alt="Sunset &amp; sea"></p>'}, "Sunset & sea"),
    ({"content_html": '<img src="https://e.example/p/1.jpg">',
      "published": datetime(2025, 2, 13, 20, 0, tzinfo=UTC)}, "腾讯新闻 2025-02-14"),
    ({"thumbnail": "https://e.example/p/2.jpg"}, "腾讯新闻"),
])
def test_an_entry_of_only_an_image_is_stored(fields: dict[str, object], title: str) -> None:
    """SPEC §3: no id, link, title or text, only an image: stored, titled by its alt text,
    else by the source's title and the entry's date."""
    item = built(entry(base_url="https://e.example/", **fields))
    assert item.title == title
    assert "](https://e.example/p/" in item.body
    again = built(entry(base_url="https://e.example/", **fields))
    assert (again.title, again.guid) == (item.title, item.guid)  # stable: no now in them


def test_an_entry_of_only_an_unsafe_image_is_skipped() -> None:
    assert build(entry(content_html='<img src="javascript:alert(1)">')) is None
    assert build(entry(thumbnail="javascript:alert(1)")) is None


def test_lone_surrogates_from_json_feeds_do_not_crash() -> None:
    item = built(entry(entry_id="1", title="bad \ud800 title", link="https://e.example/a",
                       content_html="<p>x \udc00 y</p>", categories=("c\ud800",)))
    assert item.title == "bad \ufffd title"
    assert "\ufffd" in item.body and item.tags[-1] == "c\ufffd"
    item.body.encode("utf-8")


@pytest.mark.parametrize(("include", "exclude", "title", "summary", "kept"), [
    ((), (), "anything", "", True),
    (("DeepSeek|人工智能",), (), "DeepSeek 发布新模型", "", True),
    (("DeepSeek|人工智能",), (), "医院新闻", "使用人工智能辅助诊断", True),  # summary counts
    (("DeepSeek|人工智能",), (), "医院新闻", "无关内容", False),
    (("deepseek",), (), "DeepSeek", "", True),  # case-insensitive
    ((), ("广告",), "推广广告", "", False),
    ((), ("广告",), "新闻", "本文含广告", False),
    (("AI",), ("Opinion:",), "Opinion: AI is overrated", "", False),  # exclude wins
    (("a", "b"), (), "only b", "", True),  # any include
    ((r"\bAI\b",), (), "AI in clinics", "", True),
    ((r"\bAI\b",), (), "Said the chair", "", False),
])
def test_passes_filters(include: tuple[str, ...], exclude: tuple[str, ...], title: str,
                        summary: str, kept: bool) -> None:
    source = replace(SOURCE, include=include, exclude=exclude)
    assert passes_filters(source, title, summary) is kept


def test_source_title() -> None:
    assert source_title(SOURCE, FEED) == "腾讯新闻"
    assert source_title(SOURCE, None) == "qq"
    assert source_title(replace(SOURCE, title="T"), FEED) == "T"
