"""Hostile sources over the loopback feed_server (SPEC §6), end to end: `poll` then
`publish` as real processes, then the store and the output are looked at as files.

Already covered in test_fetch.py (not repeated here): a fast drip (20 bytes a second),
bodies over max_bytes with and without Content-Length, gzip bombs, redirect loops, a
redirect to file:, an HTML page (with the autodiscovered feed URL in the error), an
empty 200. Here: one byte a second (with and without Content-Length), redirects to
other schemes, a wrong Content-Type, invalid UTF-8, entity expansion and external
entities (on lxml's fast path and on feedparser's), dates far off or missing, 10,000
items, one 5 MB item, titles of whitespace or markup only, and tag names that attack
paths polled from real feeds and published.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest
from lxml import etree

from aggregator.config import load_config
from aggregator.fastparse import parse_fast
from aggregator.items import hugo_safe_term
from aggregator.parse import parse_feed
from aggregator.store import is_safe_relative
from aggregator.workspace import Workspace
from tests.feed_server import FeedServer
from tests.helpers import (
    assert_clean_exit,
    by_id,
    news_item,
    poll_json,
    read_store,
    rss_feed,
    run_cli,
    store_files,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

RSS_HEAD = ('<?xml version="1.0" encoding="utf-8"?>\n{doctype}'
            '<rss version="2.0"><channel><title>Hostile</title>'
            "<link>https://example.org/</link><description>{channel}</description>\n")
RSS_TAIL = "</channel></rss>\n"


def rss_document(items: Iterable[str], *, doctype: str = "", channel: str = "test") -> bytes:
    return (RSS_HEAD.format(doctype=doctype, channel=channel) + "".join(items)
            + RSS_TAIL).encode("utf-8")


def rss_item(n: int, *, title: str | None = None, description: str | None = None,
             extra: str = "") -> str:
    title = f"Item {n}" if title is None else title
    description = f"&lt;p&gt;Body of item {n}.&lt;/p&gt;" if description is None else description
    return (f"<item><title>{title}</title><link>https://example.org/h/{n}</link>"
            f"<guid>h-{n}</guid><description>{description}</description>{extra}</item>\n")


def publish(config: Path) -> Path:
    """`aggregator publish`, exit 0, no traceback; the output directory."""
    result = run_cli("publish", config=config)
    assert_clean_exit(result, 0)
    return config.parent / "public"


def output_problems(output: Path) -> list[str]:
    """What is wrong with a published directory: XML that lxml refuses or feedparser
    complains about, JSON that does not load or is not a JSON Feed 1.1 document."""
    problems = []
    for path in sorted(output.rglob("*")):
        rel = path.relative_to(output).as_posix()
        if not path.is_file() or rel.startswith(".aggregator-tmp"):
            continue
        data = path.read_bytes()
        if path.suffix == ".xml":
            try:
                etree.fromstring(data)
            except etree.XMLSyntaxError as e:
                problems.append(f"{rel}: lxml: {e}")
                continue
            parsed = feedparser.parse(data)
            if parsed.bozo:
                problems.append(f"{rel}: feedparser: {parsed.bozo_exception}")
        elif path.suffix == ".json":
            try:
                doc = json.loads(data.decode("utf-8"))
            except ValueError as e:
                problems.append(f"{rel}: json: {e}")
                continue
            if doc.get("version") != "https://jsonfeed.org/version/1.1" or not isinstance(
                    doc.get("items"), list):
                problems.append(f"{rel}: not a JSON Feed 1.1 document")
    return problems


def feed_titles(output: Path, folder: str = "") -> dict[str, list[str]]:
    """The item titles of one published feed, per format."""
    base = output / folder
    rss = [i.title for i in feedparser.parse((base / "index.xml").read_bytes()).entries]
    atom = [e.title for e in feedparser.parse((base / "atom.xml").read_bytes()).entries]
    doc = json.loads((base / "feed.json").read_text(encoding="utf-8"))
    return {"rss": rss, "atom": atom, "json": [i["title"] for i in doc["items"]]}


def files_holding(root: Path, marker: bytes) -> list[str]:
    """Every file under root (derived data included) whose bytes contain marker."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and marker in p.read_bytes())


# -- a drip of one byte a second -----------------------------------------------------------
@pytest.mark.parametrize("framed", [True, False], ids=["content-length", "close-framed"])
def test_one_byte_a_second_times_out_and_stores_nothing(feed_server: FeedServer,
                                                        tmp_path: Path, framed: bool) -> None:
    """The deadline bounds the whole fetch, and a body cut at it is an error, never a
    short feed whose first items get stored."""
    feed_server.route("/drip.xml", body=rss_feed([news_item(1), news_item(2)]), drip=1.0,
                      content_length=framed)
    feed_server.route("/good.xml", body=rss_feed([news_item(3)]))
    config = write_config(tmp_path, [{"id": "drip", "url": feed_server.url("/drip.xml"),
                                      "timeout": 2.5},  # the cut lands between two bytes
                                     {"id": "good", "url": feed_server.url("/good.xml")}])
    started = time.monotonic()
    summary = poll_json(config, timeout=60)
    assert time.monotonic() - started < 20
    drip = by_id(summary)["drip"]
    assert drip["status"] == "error" and "timed out" in drip["error"], drip
    assert by_id(summary)["good"]["new"] == 1
    assert not (tmp_path / "store" / "drip").exists()


# -- redirects to other schemes --------------------------------------------------------------
@pytest.mark.parametrize("location", [
    "ftp://127.0.0.1/feed.xml", "gopher://127.0.0.1:70/1", "data:application/rss+xml,<rss/>",
    "javascript:alert(1)", "FILE:///etc/passwd", "file://localhost/etc/hostname",
])
def test_redirect_to_a_non_http_scheme_is_refused(feed_server: FeedServer, tmp_path: Path,
                                                   location: str) -> None:
    feed_server.route("/away", status=301, location=location)
    feed_server.route("/good.xml", body=rss_feed([news_item(1)]))
    config = write_config(tmp_path, [{"id": "away", "url": feed_server.url("/away")},
                                     {"id": "good", "url": feed_server.url("/good.xml")}])
    summary = poll_json(config, timeout=60)
    away = by_id(summary)["away"]
    assert away["status"] == "error", away
    assert "not http" in away["error"], away["error"]
    assert by_id(summary)["good"]["new"] == 1
    assert not (tmp_path / "store" / "away").exists()
    # the 301 to it is not remembered as the feed's new home: the next poll asks again
    poll_json(config, "away", force=True, timeout=60)
    assert len(feed_server.requests_for("/away")) == 2


# -- wrong Content-Type -------------------------------------------------------------------------
JSON_FEED = json.dumps({
    "version": "https://jsonfeed.org/version/1.1", "title": "JSON",
    "items": [{"id": "j1", "url": "https://example.org/j/1", "title": "JSON item",
               "content_text": "Text of the JSON item."}]}).encode()
ATOM_FEED = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom</title><id>urn:x:atom</id>
<updated>2025-02-01T08:00:00Z</updated>
<entry><title>Atom item</title><id>urn:x:a1</id><link href="https://example.org/a/1"/>
<updated>2025-02-01T08:00:00Z</updated><content type="html">&lt;p&gt;Atom body&lt;/p&gt;</content>
</entry></feed>
"""
WRONG_TYPES = {
    # served as: (body, Content-Type)
    "rss-as-json": (rss_feed([news_item(1)]), "application/json"),
    "rss-as-feed-json": (rss_feed([news_item(2)]), "application/feed+json; charset=utf-8"),
    "rss-as-html": (rss_feed([news_item(3)]), "text/html; charset=utf-8"),
    "rss-as-png": (rss_feed([news_item(4)]), "image/png"),
    "atom-as-octet-stream": (ATOM_FEED, "application/octet-stream"),
    "atom-as-text-plain-latin1": (ATOM_FEED.replace(b"/a/1", b"/a/2").replace(b":a1", b":a2"),
                                  "text/plain; charset=iso-8859-1"),
    "json-as-rss": (JSON_FEED, "application/rss+xml"),
    "json-as-html": (b"\n  " + JSON_FEED.replace(b"j/1", b"j/2").replace(b'"j1"', b'"j2"'),
                     "text/html"),
    "no-content-type": (rss_feed([news_item(5)]), ""),
}


def test_a_feed_served_with_a_wrong_content_type_is_read(feed_server: FeedServer,
                                                         tmp_path: Path) -> None:
    sources = []
    for name, (body, content_type) in WRONG_TYPES.items():
        feed_server.route(f"/{name}", body=body, content_type=content_type)
        sources.append({"id": name, "url": feed_server.url(f"/{name}")})
    config = write_config(tmp_path, sources)
    summary = poll_json(config)
    for name in WRONG_TYPES:
        report = by_id(summary)[name]
        assert (report["status"], report["new"]) == ("ok", 1), (name, report)
    assert summary["exit_code"] == 0
    titles = sorted(i.title for i in read_store(tmp_path / "store").values())
    assert "JSON item" in titles and "Atom item" in titles
    assert output_problems(publish(config)) == []


# -- invalid UTF-8 ----------------------------------------------------------------------------------
def test_invalid_utf8_in_a_utf8_feed_loses_only_the_bad_bytes(feed_server: FeedServer,
                                                              tmp_path: Path) -> None:
    def damaged(prefix: str) -> bytes:
        body = rss_feed([
            news_item(1, title="三家医院接入大模型辅助诊断", content="<p>正文：模型在影像科试用。</p>"
                      + "<p>医院的人工智能辅助诊断系统已经上线。</p>" * 10,
                      guid=f"{prefix}-1", link=f"https://example.org/{prefix}/1"),
            news_item(2, title="Second story — “quoted”", guid=f"{prefix}-2",
                      link=f"https://example.org/{prefix}/2")])
        # A stray byte, a truncated sequence, an overlong '/', an encoded surrogate.
        body = body.replace("三家".encode(), "三家".encode() + b"\xff", 1)
        body = body.replace("正文".encode(), "正文".encode()[:-1], 1)
        return body.replace(b"Second story", b"Second \xc0\xaf\xed\xa0\x80story", 1)

    feed_server.route("/bad-utf8.xml", body=damaged("header"))
    feed_server.route("/bad-utf8-no-charset.xml", body=damaged("declared"),
                      content_type="application/xml")
    config = write_config(tmp_path, [
        {"id": "header", "url": feed_server.url("/bad-utf8.xml")},
        {"id": "declared", "url": feed_server.url("/bad-utf8-no-charset.xml")}])
    summary = poll_json(config, expect=(0,))
    assert [s["new"] for s in summary["sources"]] == [2, 2]
    store = tmp_path / "store"
    for path in store_files(store):
        path.read_bytes().decode("utf-8")  # the store holds UTF-8 only
    items = read_store(store)
    titles = sorted(i.title for i in items.values())
    # The valid characters around the bad bytes are kept, not decoded as Windows-1252.
    assert sum("三家" in t and "大模型辅助诊断" in t for t in titles) == 2, titles
    assert sum("Second" in t and "story — “quoted”" in t for t in titles) == 2, titles
    assert all("å" not in t and "â€" not in t for t in titles), titles
    bodies = [i.body for i in items.values()]
    assert sum("模型在影像科试用" in b for b in bodies) == 2
    output = publish(config)
    assert output_problems(output) == []


def test_a_feed_in_windows_1252_labelled_utf8_is_still_read_as_1252() -> None:
    """Control for the repair above: no valid UTF-8 sequence at all means the label lies
    about the whole document, and feedparser's fallback decodes it right."""
    body = rss_feed([news_item(1, title="Caf\u00e9 \u2018menu\u2019")], encoding="cp1252")
    body = body.replace(b'encoding="cp1252"', b'encoding="utf-8"')
    parsed = parse_feed(body, {"Content-Type": "application/rss+xml"}, "http://h/", "s")
    assert parsed.entries[0].title == "Caf\u00e9 \u2018menu\u2019"


# -- entity expansion --------------------------------------------------------------------------------
def _laughs(levels: int = 10) -> str:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels)]
    return f"<!DOCTYPE rss [{''.join(entities)}]>\n"


def test_billion_laughs_is_not_expanded(feed_server: FeedServer, tmp_path: Path) -> None:
    top = "&lol9;"  # 10**9 x "lol" once expanded
    body = rss_document([rss_item(1, title=top, description=top), rss_item(2)],
                        doctype=_laughs())
    feed_server.route("/laughs.xml", body=body)
    feed_server.route("/good.xml", body=rss_feed([news_item(1)]))
    config = write_config(tmp_path, [{"id": "laughs", "url": feed_server.url("/laughs.xml")},
                                     {"id": "good", "url": feed_server.url("/good.xml")}])
    started = time.monotonic()
    summary = poll_json(config, timeout=60)
    assert time.monotonic() - started < 30
    assert by_id(summary)["good"]["new"] == 1
    assert by_id(summary)["laughs"]["status"] in ("ok", "error")
    store = tmp_path / "store"
    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert total < 2_000_000, f"{total} bytes in the store: entities were expanded"
    for item in read_store(store).values():
        assert "lollollollollol" not in item.title + item.body
    assert output_problems(publish(config)) == []


# -- external entities ----------------------------------------------------------------------------------
# (doctype placement, where the entity is used). A DOCTYPE in the first 2 KB sends the
# feed to feedparser; one behind a 5 KB comment reaches lxml's fast path, which reads the
# feed when the entity sits only in elements it does not read, and hands it to feedparser
# when the entity sits in a title or description.
XXE_CASES = {
    "feedparser": ("top", "text"),
    "fast-path-unread-elements": ("late", "unread"),
    "fast-path-then-feedparser": ("late", "text"),
    "no-doctype": ("none", "text"),
    "external-dtd": ("dtd", "text"),
    "parameter-entity": ("parameter", "text"),
    "atom-fast-path": ("late", "atom"),
}


def _xxe_feed(case: str, secret: Path) -> bytes:
    placement, use = XXE_CASES[case]
    uri = secret.as_uri()
    comment = "<!-- " + "padding " * 640 + "-->\n"  # past the fast path's 4 KB look
    doctype = {
        "top": f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{uri}">]>\n',
        "late": comment + f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{uri}">]>\n',
        "none": "",
        "dtd": f'<!DOCTYPE rss SYSTEM "{uri}">\n',
        "parameter": f'<!DOCTYPE rss [<!ENTITY % ext SYSTEM "{uri}"> %ext;]>\n',
    }[placement]
    if use == "atom":
        return ('<?xml version="1.0" encoding="utf-8"?>\n'
                + doctype.replace("DOCTYPE rss", "DOCTYPE feed")
                + '<feed xmlns="http://www.w3.org/2005/Atom"><title>XXE</title>'
                '<id>urn:x:xxe</id><updated>2025-02-01T08:00:00Z</updated>'
                '<entry><title>Atom entry</title><id>urn:x:xxe:1</id>'
                '<link href="https://example.org/xxe/atom"/>'
                "<updated>2025-02-01T08:00:00Z</updated><rights>&xxe;</rights>"
                '<content type="html">&lt;p&gt;Atom body&lt;/p&gt;</content></entry>'
                "</feed>\n").encode()
    if use == "unread":
        items = [rss_item(1, extra="<comments>&xxe;</comments>")]
        return rss_document(items, doctype=doctype, channel="&xxe;")
    # The secret file is also a DTD declaring &leak;: loading it would define that entity.
    ref = "&xxe;" if placement in ("top", "late", "none") else "&leak;"
    items = [rss_item(1, title=f"Leak {ref} here", description=f"before {ref} after"),
             rss_item(2)]
    return rss_document(items, doctype=doctype)


@pytest.mark.parametrize("case", sorted(XXE_CASES))
def test_external_entity_never_reaches_the_store_or_output(feed_server: FeedServer,
                                                           tmp_path: Path, case: str) -> None:
    marker = f"XXE-SECRET-{os.getpid()}-{case}-7f3a9c".encode()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"<!ENTITY leak '" + marker + b"'>\n" + marker + b"\n")
    body = _xxe_feed(case, secret)
    if XXE_CASES[case][0] == "late":
        # The fast path really sees this document: lxml reads it, or bails out to
        # feedparser (None); either way without the file's content.
        fast = parse_fast(body, "http://127.0.0.1/")
        if XXE_CASES[case][1] in ("unread", "atom"):
            assert fast is not None and len(fast.entries) == 1
        if fast is not None:
            assert marker.decode() not in repr(fast)
    feed_server.route("/xxe.xml", body=body)
    config = write_config(tmp_path, [{"id": "xxe", "url": feed_server.url("/xxe.xml")}])
    summary = poll_json(config, timeout=60)
    report = by_id(summary)["xxe"]
    assert report["status"] in ("ok", "error"), report
    assert marker.decode() not in json.dumps(summary)
    if XXE_CASES[case][1] in ("unread", "atom") or case == "feedparser":
        assert report["status"] == "ok" and report["new"] >= 1, report
    output = publish(config)
    assert output_problems(output) == []
    for where in (tmp_path / "store", output):
        assert files_holding(where, marker) == []
    listing = run_cli("sources", "--json", config=config)
    assert marker.decode() not in listing.stdout + listing.stderr


# -- dates ------------------------------------------------------------------------------------------------
DATES = {
    "year-9999": "Fri, 31 Dec 9999 23:59:59 GMT",
    "year-3000": "Wed, 01 Jan 3000 00:00:00 +1400",
    "year-1": "Mon, 01 Jan 0001 00:00:00 GMT",
    "year-1900": "Mon, 01 Jan 1900 00:00:00 -1200",
    "before-epoch": "Wed, 31 Dec 1969 23:59:59 GMT",
    "garbage": "the day after tomorrow",
    "empty": "",
    "missing": None,
}
# year 1 is Go's and Hugo's zero date, a site that set none: dated when first seen
FUTURE, PAST = {"year-9999", "year-3000"}, {"year-1900", "before-epoch"}


def test_dates_far_off_or_missing(feed_server: FeedServer, tmp_path: Path) -> None:
    names = sorted(DATES)
    rss = rss_feed([news_item(n, title=f"Dated {name}", pubDate=DATES[name])
                    for n, name in enumerate(names)])
    json_feed = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [
        {"id": f"j-{name}", "url": f"https://example.org/j/{name}", "title": f"JSON {name}",
         "content_text": "x", "date_published": value}
        for name, value in (("future", "9999-12-31T23:59:59-14:00"),
                            ("past", "0001-01-01T00:00:00+14:00"),
                            ("garbage", "soon"), ("number", 12345))]}).encode()
    feed_server.route("/dates.xml", body=rss)
    feed_server.route("/dates.json", body=json_feed, content_type="application/feed+json")
    config = write_config(tmp_path, [{"id": "dates", "url": feed_server.url("/dates.xml")},
                                     {"id": "jdates", "url": feed_server.url("/dates.json")}])
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    summary = poll_json(config, expect=(0,))
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert summary["new"] == len(DATES) + 4
    floor = datetime(1970, 1, 1, tzinfo=UTC)
    items = {i.title: i for i in read_store(tmp_path / "store").values()}
    for name in names:
        date = items[f"Dated {name}"].date
        if name in PAST:
            assert floor <= date <= floor + timedelta(days=2), (name, date)
        else:  # in the future, unreadable, zero or absent: dated when first seen
            assert before <= date <= after, (name, date)
    for name in ("future", "past", "garbage", "number"):
        assert before <= items[f"JSON {name}"].date <= after, name

    # Items dated "now" are not re-dated (updated) by every later poll.
    again = poll_json(config, force=True, expect=(0,))
    assert (again["new"], again["updated"]) == (0, 0)
    output = publish(config)
    assert output_problems(output) == []
    for entry in feedparser.parse((output / "index.xml").read_bytes()).entries:
        assert entry.published_parsed is not None
        assert 1970 <= entry.published_parsed.tm_year <= after.year


# -- size ------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_ten_thousand_items_in_one_feed(feed_server: FeedServer, tmp_path: Path) -> None:
    items = [news_item(n, guid=f"big-{n}", link=f"https://example.org/big/{n}",
                       description=None, content=f"<p>Body {n}.</p>") for n in range(10_000)]
    feed_server.route("/big.xml", body=rss_feed(items), gzip=True, etag='"big-1"')
    config = write_config(tmp_path, [{"id": "big", "url": feed_server.url("/big.xml"),
                                      "max_bytes": "8MB", "max_items": 10_000}])
    summary = poll_json(config, expect=(0,))
    assert summary["new"] == 10_000
    files = store_files(tmp_path / "store")
    assert len(files) == 10_000
    assert all(is_safe_relative(p.relative_to(tmp_path / "store").as_posix()) for p in files)
    again = poll_json(config, force=True, expect=(0,))
    assert by_id(again)["big"]["status"] == "not_modified"
    output = publish(config)
    assert len(feed_titles(output)["json"]) == 50  # keep_items
    assert output_problems(output) == []


@pytest.mark.timeout(180)
def test_a_5_mb_item(feed_server: FeedServer, tmp_path: Path) -> None:
    paragraph = "<p>" + "A long sentence about <b>clinical</b> models and trials. " * 100 + "</p>"
    content = paragraph * (5 * 1024 * 1024 // len(paragraph) + 1)
    body = rss_feed([news_item(1, content=content), news_item(2)])
    assert len(body) > 5 * 1024 * 1024
    feed_server.route("/huge.xml", body=body)
    config = write_config(tmp_path, [{"id": "huge", "url": feed_server.url("/huge.xml"),
                                      "max_bytes": "12MB"}])
    summary = poll_json(config, expect=(0,))
    assert summary["new"] == 2
    items = read_store(tmp_path / "store")
    big = next(i for i in items.values() if i.guid == "story-1")
    assert len(big.body) > 3 * 1024 * 1024
    assert big.body.count("clinical") == content.count("clinical")
    assert len(big.summary) <= 200
    output = publish(config)
    assert output_problems(output) == []
    site = json.loads((output / "feed.json").read_text(encoding="utf-8"))
    assert sorted(i["title"] for i in site["items"]) == sorted(i.title for i in items.values())
    assert max(len(i["content_html"]) for i in site["items"]) > 3 * 1024 * 1024


# -- empty and markup-only titles ----------------------------------------------------------------
TITLES = {
    "spaces": ("  \n\t  ", "The real first sentence of item {n}. More text follows."),
    "nbsp": ("&amp;nbsp;&amp;#160; &amp;#x2003;", "Non-breaking spaces then item {n}. More."),
    "escaped-markup": ("&lt;b&gt;&lt;/b&gt;&lt;img src=x onerror=alert(1)&gt;",
                       "Escaped markup in item {n}. More."),
    "cdata-script": ("<![CDATA[<script>alert(1)</script>]]>", "A script title in item {n}. More."),
    "empty-element": ("", "An empty title element in item {n}. More."),
    "markup-no-text": ("&lt;p&gt;&lt;br/&gt;&lt;/p&gt;", ""),  # and no text at all: the link
}


@pytest.mark.parametrize("doctype", ["", "<!DOCTYPE rss>\n"], ids=["fast-path", "feedparser"])
def test_titles_of_only_whitespace_or_markup(feed_server: FeedServer, tmp_path: Path,
                                             doctype: str) -> None:
    names = sorted(TITLES)
    items = [rss_item(n, title=TITLES[name][0],
                      description=f"&lt;p&gt;{TITLES[name][1].format(n=n)}&lt;/p&gt;")
             for n, name in enumerate(names)]
    atom = ATOM_FEED.replace(b"<title>Atom item</title>", (
        b'<title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><span> </span>'
        b"</div></title>")).replace(b"Atom body", b"The Atom entry speaks. More.")
    feed_server.route("/titles.xml", body=rss_document(items, doctype=doctype))
    feed_server.route("/titles.atom", body=atom, content_type="application/atom+xml")
    config = write_config(tmp_path, [{"id": "titles", "url": feed_server.url("/titles.xml")},
                                     {"id": "atom", "url": feed_server.url("/titles.atom")}])
    summary = poll_json(config, expect=(0,))
    assert summary["new"] == len(TITLES) + 1
    stored = {i.link: i.title for i in read_store(tmp_path / "store").values()}
    for n, name in enumerate(names):
        title = stored[f"https://example.org/h/{n}"]
        expected = TITLES[name][1].format(n=n).split(". ")[0]
        assert title.startswith(expected) if expected else title, (name, title)
        assert title.strip() and "<" not in title and "alert" not in title, (name, title)
    assert stored["https://example.org/a/1"] == "The Atom entry speaks."
    output = publish(config)
    assert output_problems(output) == []
    for kind, titles in feed_titles(output).items():
        assert len(titles) == len(TITLES) + 1, kind
        assert all(t.strip() and "<" not in t for t in titles), (kind, titles)


# -- tag and category names that attack paths -------------------------------------------------
PATH_ATTACKS = ["..", "../../etc", "/", "//", "\\", "..\\..\\windows", "a/../../b", "./.",
                "CON", "nul", "com1.txt", "x" * 1000, "\u202egnp.exe", "a\u200fb",
                "/etc/passwd", "%2e%2e%2f", "~root", "-rf", ".hidden"]


def test_path_attacking_terms_polled_and_published_stay_inside(feed_server: FeedServer,
                                                               tmp_path: Path) -> None:
    def xml_text(term: str) -> str:
        return term.replace("&", "&amp;").replace("<", "&lt;")

    rss_items = [rss_item(n, extra=f"<category>{xml_text(term)}</category>"
                          f"<category>plain</category>")
                 for n, term in enumerate(PATH_ATTACKS)]
    json_items = [{"id": f"j{n}", "url": f"https://example.org/j/{n}", "title": f"JSON {n}",
                   "content_text": "text", "tags": [term, "plain"]}
                  for n, term in enumerate(["a\u0000b", "\u0000", "..\u0000/x", "\x01\x1f",
                                            *PATH_ATTACKS[:4]])]
    feed_server.route("/terms.xml", body=rss_document(rss_items))
    feed_server.route("/terms.json", content_type="application/feed+json", body=json.dumps(
        {"version": "https://jsonfeed.org/version/1.1", "items": json_items}).encode())
    config = write_config(tmp_path, [
        {"id": "terms", "url": feed_server.url("/terms.xml"),
         "categories": ["../../etc", "CON"], "tags": ["..\\..\\win", "y" * 1000]},
        {"id": "jterms", "url": feed_server.url("/terms.json"),
         "categories": ["/", "\u202e"]}])
    parent_before = sorted(p.name for p in tmp_path.parent.iterdir())
    summary = poll_json(config, expect=(0,))
    assert summary["new"] == len(rss_items) + len(json_items)

    store = tmp_path / "store"
    for path in store.rglob("*"):
        rel = path.relative_to(store).as_posix()
        if not rel.startswith(".aggregator"):
            assert is_safe_relative(rel), rel
    items = read_store(store)
    assert len(items) == summary["new"]
    for item in items.values():
        for term in (*item.tags, *item.categories):
            assert "\x00" not in term and term.strip() == term and term, (item.title, term)
            assert hugo_safe_term(term), (item.title, term)  # Hugo builds the store too

    output = publish(config)
    root = os.path.realpath(output)
    for path in output.rglob("*"):
        rel = path.relative_to(output).as_posix()
        assert not path.is_symlink(), rel
        assert os.path.commonpath([root, os.path.realpath(path)]) == root, rel
        for part in rel.split("/"):
            assert part not in ("", ".", "..") and "\\" not in part and "\x00" not in part, rel
            assert len(part.encode()) <= 255, rel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.yaml", "public", "store"]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == parent_before
    assert output_problems(output) == []
    # every item is published, under every safe term of its own
    assert len(feed_titles(output)["json"]) == len(items)
    tag_feeds = [p.parent for p in (output / "tags").rglob("feed.json")]
    assert len(tag_feeds) >= len(PATH_ATTACKS) // 2
    plain = json.loads((output / "tags" / "plain" / "feed.json").read_text(encoding="utf-8"))
    assert len(plain["items"]) == len(items)


def test_lone_surrogates_in_a_json_feed_are_a_normal_item(feed_server: FeedServer,
                                                          tmp_path: Path) -> None:
    """A JSON escape "\\ud800" decodes to a lone surrogate, which no UTF-8 file or SQLite
    text can hold: replaced by U+FFFD at parse, the poll reports, stores and saves state."""
    body = (b'{"version": "https://jsonfeed.org/version/1.1", "title": "Feed \\ud800 title",'
            b' "home_page_url": "https://example.org/\\udc00", "items": [{"id": "s-\\ud800",'
            b' "url": "https://example.org/s", "title": "Bad \\ud800 title",'
            b' "content_html": "<p>x \\udfff y</p>", "tags": ["t\\ud800"],'
            b' "authors": [{"name": "A \\ud800"}]}]}')
    feed_server.route("/s.json", body=body, content_type="application/feed+json")
    config = write_config(tmp_path, [{"id": "sur", "url": feed_server.url("/s.json")}])
    summary = poll_json(config, expect=(0,))
    assert (by_id(summary)["sur"]["status"], summary["new"]) == ("ok", 1)
    [item] = read_store(tmp_path / "store").values()
    assert item.title == "Bad \ufffd title"
    assert item.guid == "s-\ufffd" and "t\ufffd" in item.tags
    # the source's state was saved, and the next poll stores nothing again
    again = poll_json(config, expect=(0,))
    assert (by_id(again)["sur"]["status"], again["new"], again["updated"]) == ("ok", 0, 0)
    with Workspace(load_config(config)) as ws:
        state = ws.index.source_state("sur")
    assert (state.last_status, state.title) == ("ok", "Feed \ufffd title")
# -- issue 20: a feed's attacker against the disk, the Hugo site and the reader's eye -------------
def _log_of(config: Path, *args: str) -> str:
    """`aggregator poll ARGS` (exit 0 or 1, no traceback): its stderr, the log."""
    result = run_cli("poll", *args, config=config, timeout=170)
    assert_clean_exit(result, 0, 1)
    return result.stderr


def _output_files(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if p.is_file()]


@pytest.mark.timeout(240)
def test_ten_thousand_categories_on_one_item_write_a_bounded_output(
        feed_server: FeedServer, tmp_path: Path) -> None:
    """One item with 10,000 categories (a 279 KB feed) made publish write 8.1 GB into
    30,041 files: every tag feed held the item with all its categories."""
    categories = "".join(f"<category>tag{n}</category>" for n in range(10_000))
    feed_server.route("/tags.xml", body=rss_document([rss_item(1, extra=categories),
                                                      rss_item(2)]))
    config = write_config(tmp_path, [{"id": "tagger", "url": feed_server.url("/tags.xml")}])
    log = _log_of(config)
    items = {i.guid: i for i in read_store(tmp_path / "store").values()}
    assert len(items) == 2
    assert len(items["h-1"].tags) == 32, len(items["h-1"].tags)  # max_tags' default
    assert items["h-1"].tags[:3] == ("tag0", "tag1", "tag2")  # the feed's first ones
    assert "tagger" in log and "9968" in log and "max_tags" in log, log
    assert log.count("max_tags") == 1, log  # once for the item, not once per tag
    output = publish(config)
    files = _output_files(output)
    # 3 feeds per tag, category and source, the site's 3, index.html, feeds.opml
    assert len(files) <= 3 * (32 + 1 + 1) + 3 + 2 + 5, len(files)
    assert sum(p.stat().st_size for p in files) < 2_000_000


def test_new_terms_one_source_adds_in_a_poll_are_bounded(feed_server: FeedServer,
                                                         tmp_path: Path) -> None:
    """Under max_tags, many items each with new tags still multiply the output: what one
    source adds in one poll is capped by max_new_terms; terms already published count
    not."""
    def feed(prefix: str) -> bytes:
        return rss_document(
            [rss_item(n, extra="<category>known</category>" + "".join(
                f"<category>{prefix}{n}-{k}</category>" for k in range(30)))
             for n in range(40)])

    feed_server.route("/many.xml", body=feed("first"))
    config = write_config(tmp_path, [{"id": "many", "url": feed_server.url("/many.xml")}],
                          defaults={"max_new_terms": 100})
    log = _log_of(config)
    assert "many" in log and "max_new_terms" in log, log
    assert "dropped 1101 new tags" in log, log  # 1 + 40 * 30 - 100
    tags = {t for i in read_store(tmp_path / "store").values() for t in i.tags}
    assert "known" in tags and len(tags) == 100, len(tags)
    output = publish(config)
    assert len(list((output / "tags").iterdir())) == 100
    # A later poll may add another 100, and terms the output already has are free.
    feed_server.route("/many.xml", body=feed("second").replace(b"h-", b"g-").replace(
        b"/h/", b"/g/"))
    _log_of(config, "--force")
    stored = list(read_store(tmp_path / "store").values())
    assert len(stored) == 80
    assert all("known" in i.tags for i in stored)
    assert len({t for i in stored for t in i.tags}) == 200


@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_tags", 0, "a whole number above 0"), ("max_tags", "many", "a whole number above 0"),
    ("max_items", -1, "a whole number above 0"), ("max_new_terms", 1.5, "a whole number"),
])
def test_bounds_are_validated(tmp_path: Path, key: str, value: object, message: str) -> None:
    config = write_config(tmp_path, [{"id": "a", "url": "https://example.org/a.xml",
                                      key: value}])
    result = run_cli("check", config=config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "feeds.yaml:" in result.stderr and f"sources[0].{key}" in result.stderr, \
        result.stderr
    assert message in result.stderr
    assert not (tmp_path / "store").exists()
    config = write_config(tmp_path, [{"id": "a", "url": "https://example.org/a.xml"}],
                          defaults={key: value})
    result = run_cli("poll", config=config)
    assert result.returncode == 2 and f"defaults.{key}: expected {message}" in result.stderr, \
        result.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.timeout(180)
def test_items_taken_from_one_feed_per_poll_are_capped(feed_server: FeedServer,
                                                        tmp_path: Path) -> None:
    feed_server.route("/flood.xml", body=rss_document(rss_item(n) for n in range(3000)))
    config = write_config(tmp_path, [{"id": "flood", "url": feed_server.url("/flood.xml")}])
    log = _log_of(config)
    items = read_store(tmp_path / "store")
    assert len(items) == 1000  # max_items' default
    assert {i.guid for i in items.values()} == {f"h-{n}" for n in range(1000)}  # the first
    assert "flood" in log and "2000" in log and "max_items" in log, log


HOSTILE_MARKUP = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(2)>",
    "[click](javascript:alert(3))", "<a href='javascript:alert(4)'>x</a>",
    "<svg/onload=alert(5)>", "&lt;script&gt;alert(6)&lt;/script&gt;",
]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _hostile_site_feed() -> bytes:
    """Each attack as text (escaped once: the feed's text holds the markup) and as HTML
    text (escaped twice: plain_text decodes it into markup) in every string a feed
    controls."""
    attacks = [*HOSTILE_MARKUP, *(_xml(a) for a in HOSTILE_MARKUP)]
    items = []
    for n, attack in enumerate(attacks):
        body = (f"<p>{_xml(attack)}</p><p><img src='https://example.org/i{n}.png' "
                f"alt=\"{_xml(attack)}\"></p>")
        items.append(
            f"<item><title>{_xml(attack)} t{n}</title><link>https://example.org/x/{n}</link>"
            f"<guid>x-{n}</guid><description>{_xml(body)}</description>"
            f"<dc:creator>{_xml(attack)}</dc:creator><category>{_xml(attack)}</category>"
            f"<category>c{n}</category></item>\n")
    title = _xml("News <script>alert(7)</script><img src=x onerror=alert(8)>")
    return ('<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>'
            f"<title>{title} {_xml(_xml('<script>alert(9)</script>'))}</title>"
            "<link>https://example.org/</link><description>d</description>\n"
            + "".join(items) + "</channel></rss>\n").encode()


HUGO_SITE = """\
baseURL: http://127.0.0.1:8000/
disableKinds: [sitemap, robotsTXT, "404"]
taxonomies: {tag: tags, category: categories}
markup:
  goldmark:
    renderer:
      unsafe: true
"""
# What themes do with front matter: print it, and often markdownify it.
HUGO_LAYOUTS = {
    "_default/single.html": (
        "<h1>{{ .Title }}</h1><h2>{{ .Title | markdownify }}</h2><p>{{ .Summary }}</p>"
        "<p>{{ .Params.summary | markdownify }}</p><p>{{ .Params.author | markdownify }}</p>"
        "{{ range .Params.tags }}<a>{{ . | markdownify }}</a>{{ end }}{{ .Content }}"),
    "_default/list.html": ("<h1>{{ .Title | markdownify }}</h1>{{ range .Pages }}"
                           "<p>{{ .Title | markdownify }} {{ .Summary }}</p>{{ end }}"),
}


def hugo_build(store: Path, site: Path) -> Path:
    """The real hugo on a tiny site whose content is a copy of the store; its public/."""
    import shutil
    import subprocess

    site.mkdir()
    (site / "hugo.yaml").write_text(HUGO_SITE, encoding="utf-8")
    for name, text in HUGO_LAYOUTS.items():
        (site / "layouts" / name).parent.mkdir(parents=True, exist_ok=True)
        (site / "layouts" / name).write_text(text, encoding="utf-8")
    shutil.copytree(store, site / "content", ignore=shutil.ignore_patterns(".aggregator"))
    result = subprocess.run(["hugo", "--source", str(site), "--destination",
                             str(site / "public")], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
    return site / "public"


def markup_problems(page: str) -> list[str]:
    """What in an HTML page is script: elements, event attributes, javascript: URLs."""
    from lxml import html as lxml_html

    problems = ["raw <script"] if "<script" in page.lower() else []
    for element in lxml_html.document_fromstring(page).iter():
        if not isinstance(element.tag, str):
            continue
        if element.tag in ("script", "svg", "iframe", "object", "embed", "math"):
            problems.append(f"<{element.tag}>")
        for name, value in element.attrib.items():
            if name.lower().startswith("on"):
                problems.append(f"<{element.tag} {name}=>")
            if (name in ("href", "src", "action", "formaction", "data", "srcset")
                    and "javascript:" in "".join(value.lower().split())):
                problems.append(f"<{element.tag} {name}={value!r}>")
    return problems


needs_hugo = pytest.mark.skipif(
    __import__("shutil").which("hugo") is None,
    reason="hugo is not installed (apt-get install hugo)")


@needs_hugo
def test_no_feed_string_becomes_markup_in_a_hugo_site_with_unsafe_html(
        feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/xss.xml", body=_hostile_site_feed())
    config = write_config(tmp_path, [{"id": "xss", "url": feed_server.url("/xss.xml")}])
    summary = poll_json(config, expect=(0,))
    assert summary["new"] == 2 * len(HOSTILE_MARKUP)
    for item in read_store(tmp_path / "store").values():
        for text in (item.title, item.summary, item.author or "", *item.tags):
            assert "<" not in text and ">" not in text, text
    public = hugo_build(tmp_path / "store", tmp_path / "site")
    pages = list(public.rglob("*.html"))
    assert len(pages) > 2 * len(HOSTILE_MARKUP)
    for page in pages:
        # As markup, not as text: the attacks are still there, escaped, to be read.
        assert markup_problems(page.read_text(encoding="utf-8")) == [], page
    # and the text is still there, shown as text
    assert any("alert(1)" in p.read_text(encoding="utf-8") for p in pages)


@needs_hugo
def test_a_category_over_255_bytes_is_shortened_and_hugo_builds(
        feed_server: FeedServer, tmp_path: Path) -> None:
    """120 Chinese characters (360 bytes): Hugo failed the whole site with "file name too
    long". Shortened as the output's slugs are: the store, our output and Hugo agree."""
    long_term = "人工智能医疗" * 20
    feed_server.route("/long.xml", body=rss_document([rss_item(
        1, extra=f"<category>{long_term}</category><category>short</category>")]))
    config = write_config(tmp_path, [{"id": "long", "url": feed_server.url("/long.xml")}])
    poll_json(config, expect=(0,))
    (item,) = read_store(tmp_path / "store").values()
    (stored,) = [t for t in item.tags if t.startswith("人工")]
    assert long_term.startswith(stored) and len(stored.encode()) <= 150, stored
    output = publish(config)
    assert (output / "tags" / stored / "index.xml").is_file()
    public = hugo_build(tmp_path / "store", tmp_path / "site")
    assert (public / "tags" / stored / "index.xml").is_file()


def test_invisible_and_bidi_characters_are_stripped_from_titles(feed_server: FeedServer,
                                                               tmp_path: Path) -> None:
    spoof = "\u202eAdmin\u202c \u2066x\u2069\u200b\u200e\u200f\ufeff\u2060\u061c"
    doctor = "\U0001F468\u200D\u2695\uFE0F"  # man health worker: ZWJ joins the sequence
    feed = rss_document([rss_item(1, title=f"{spoof} news {doctor}",
                                  extra=f"<category>{spoof}tag</category>"
                                        f"<author>a@b ({spoof}Bob)</author>")],
                        ).replace(b"<title>Hostile</title>",
                                  f"<title>{spoof}Feed</title>".encode())
    feed_server.route("/bidi.xml", body=feed)
    config = write_config(tmp_path, [{"id": "bidi", "url": feed_server.url("/bidi.xml")}])
    poll_json(config, expect=(0,))
    (item,) = read_store(tmp_path / "store").values()
    assert item.title == f"Admin x news {doctor}", ascii(item.title)
    assert item.tags == ("Admin xtag",), ascii(item.tags)
    assert item.author is not None and "\u202e" not in item.author, ascii(item.author)
    assert "[Admin xFeed](https://example.org/h/1)" in item.body, ascii(item.body)
    listing = json.loads(run_cli("sources", "--json", config=config).stdout)
    assert "\u202e" not in json.dumps(listing, ensure_ascii=False)
    output = publish(config)
    assert feedparser.parse((output / "sources" / "bidi" / "atom.xml").read_bytes(),
                            ).feed.title.endswith("Admin xFeed")


def test_a_relative_guid_in_a_local_feed_is_not_made_a_file_path(tmp_path: Path) -> None:
    feed = tmp_path / "local.xml"
    for doctype in ("", "<!DOCTYPE rss>\n"):  # the fast path, and feedparser's
        feed.write_bytes(rss_document([rss_item(1).replace("<guid>h-1</guid>",
                                                           "<guid>a/1</guid>")],
                                      doctype=doctype))
        config = write_config(tmp_path, [{"id": "local", "url": "local.xml"}])
        poll_json(config, force=True, expect=(0,))
        (item,) = read_store(tmp_path / "store").values()
        assert item.guid == "a/1", item.guid
        output = publish(config)
        assert b"file:" not in (output / "index.xml").read_bytes()
        assert str(tmp_path).encode() not in (output / "feed.json").read_bytes()
        import shutil
        shutil.rmtree(tmp_path / "store")
        shutil.rmtree(output)


def test_a_full_text_article_over_max_bytes_is_reported(feed_server: FeedServer,
                                                        tmp_path: Path) -> None:
    """The article page of a full_text source over max_bytes was dropped with a log line
    below the default level: the item kept its summary and nobody was told why."""
    feed_server.route("/ft.xml", body=rss_feed([news_item(
        1, link=feed_server.url("/article/1"), content=None)]))
    feed_server.route("/article/1", body=b"<html><body>" + b"<p>word </p>" * 20_000
                      + b"</body></html>", content_type="text/html")
    config = write_config(tmp_path, [{"id": "ft", "url": feed_server.url("/ft.xml"),
                                      "full_text": True, "max_bytes": "100KB"}])
    log = _log_of(config)
    assert "ft" in log and feed_server.url("/article/1") in log and "too large" in log, log
    assert "WARNING" in log
