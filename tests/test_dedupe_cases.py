"""Dedupe through real polls (SPEC §3): distinct entries that share a link stay distinct
items, a feed whose guids rotate creates no files, one link in two sources is one item.

Case files live in tests/cases/dedupe/: real-world shapes of feeds whose entries share a
link (a podcast's episodes all linking its home page, a day page's anchors, a WordPress
comment feed), each with `Expect: N items` in a comment at its top.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from aggregator.content import plain_text
from aggregator.model import Item
from tests.feed_server import FeedServer
from tests.helpers import (
    assert_clean_exit,
    by_id,
    news_item,
    poll_json,
    read_store,
    rss_feed,
    run_cli,
    store_snapshot,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

CASES = sorted((Path(__file__).parent / "cases" / "dedupe").glob("*.xml"))


def expected_items(case: Path) -> int:
    found = re.search(r"^Expect: (\d+) items", case.read_text("utf-8"), re.M)
    assert found, f"{case.name}: no 'Expect: N items' line"
    return int(found.group(1))


def entry_of(item: Item, entries: list[dict]) -> dict:
    """The feed entry a stored item was made from, by the guid the item carries."""
    matching = [e for e in entries if (e.get("id") or e.get("link")) == item.guid]
    assert len(matching) == 1, (item.guid, [e.get("id") for e in entries])
    return matching[0]


def assert_made_from_one_entry(item: Item, entry: dict) -> None:
    """Title, body and date all come from the entry whose guid the file has."""
    text = plain_text(entry.get("summary") or entry["content"][0]["value"])
    assert text[:40] in plain_text(item.body.replace("\\", "")), (item.guid, item.body)
    if entry.get("title"):
        assert item.title == entry["title"], item.guid
    else:
        assert text.startswith(item.title.rstrip(".")[:30]), (item.title, text)
    stamp = entry.get("published_parsed") or entry.get("updated_parsed")
    assert item.date == datetime(*stamp[:6], tzinfo=UTC), item.guid


def test_cases_exist() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_every_entry_of_a_case_is_its_own_file(case: Path, feed_server: FeedServer,
                                               tmp_path: Path) -> None:
    expected = expected_items(case)
    entries = feedparser.parse(case.read_bytes()).entries
    assert len(entries) == expected  # the case file says what it holds
    feed_server.route("/feed.xml", body=case.read_bytes())
    config = write_config(tmp_path, [{"id": "case", "url": feed_server.url("/feed.xml")}])
    summary = poll_json(config, expect=(0,))
    assert by_id(summary)["case"]["new"] == expected
    items = read_store(tmp_path / "store")
    assert len(items) == expected
    for item in items.values():
        assert_made_from_one_entry(item, entry_of(item, entries))
    # Polled again (the whole feed fetched and compared): nothing new, nothing rewritten.
    before = store_snapshot(tmp_path / "store")
    again = poll_json(config, force=True, expect=(0,))
    assert (by_id(again)["case"]["new"], by_id(again)["case"]["updated"]) == (0, 0)
    assert store_snapshot(tmp_path / "store") == before


def _episodes(numbers: range, guid: str = "ep-{n}", **extra: object) -> bytes:
    return rss_feed([news_item(n, link="https://podcast.example/", guid=guid.format(n=n),
                               **extra) for n in numbers])


def test_one_fetch_with_changed_entries_sharing_a_link_keeps_them_apart(
        feed_server: FeedServer, tmp_path: Path) -> None:
    """Every episode edited at once (no entry stored before unchanged): still one file each,
    each updated from its own entry."""
    feed_server.route("/p.xml", body=_episodes(range(1, 6)))
    config = write_config(tmp_path, [{"id": "p", "url": feed_server.url("/p.xml")}])
    poll_json(config, expect=(0,))
    feed_server.route("/p.xml", body=rss_feed([news_item(
        n, link="https://podcast.example/", guid=f"ep-{n}", title=f"Episode {n}, retitled")
        for n in range(1, 6)]))
    summary = poll_json(config, expect=(0,))
    assert (summary["new"], summary["updated"]) == (0, 5)
    by_guid = {i.guid: i for i in read_store(tmp_path / "store").values()}
    assert sorted(by_guid) == [f"ep-{n}" for n in range(1, 6)]
    for n in range(1, 6):
        assert by_guid[f"ep-{n}"].title == f"Episode {n}, retitled"
        assert f"First paragraph of story {n}" in by_guid[f"ep-{n}"].body


def test_a_new_episode_after_old_ones_left_the_feed_is_a_new_file(
        feed_server: FeedServer, tmp_path: Path) -> None:
    """The feed keeps its latest few: when episode 1 has left it, episode 7 (a new guid,
    the same link) is not taken for episode 1's guid rotated."""
    feed_server.route("/p.xml", body=_episodes(range(1, 5)))
    config = write_config(tmp_path, [{"id": "p", "url": feed_server.url("/p.xml")}])
    poll_json(config, expect=(0,))
    for newest in range(5, 8):
        feed_server.route("/p.xml", body=_episodes(range(newest - 3, newest + 1)))
        summary = poll_json(config, expect=(0,))
        assert (summary["new"], summary["updated"]) == (1, 0)
    items = read_store(tmp_path / "store").values()
    assert sorted(i.guid for i in items) == sorted(f"ep-{n}" for n in range(1, 8))
    for item in items:
        n = int(item.guid.split("-")[1])
        assert item.title == f"Story number {n} about clinical models"


@pytest.mark.parametrize("link", ["https://podcast.example/", None], ids=["shared-link", "no-link"])
def test_rotating_guids_create_no_files(feed_server: FeedServer, tmp_path: Path,
                                        link: str | None) -> None:
    """A feed whose guids all change on every fetch (SPEC §3), here while every entry has
    the same link: the old guids are gone from the feed, so the new ones are rotations."""
    config = write_config(tmp_path, [{"id": "rot", "url": feed_server.url("/rot.xml")}])
    for poll_number in range(3):
        feed_server.route("/rot.xml", body=rss_feed([news_item(
            n, link=link, guid=f"urn:uuid:{poll_number}-{n}") for n in range(4)]))
        summary = poll_json(config, expect=(0,))
        assert by_id(summary)["rot"]["new"] == (4 if poll_number == 0 else 0)
        assert by_id(summary)["rot"]["updated"] == 0
    items = read_store(tmp_path / "store").values()
    assert sorted(i.title for i in items) == sorted(
        f"Story number {n} about clinical models" for n in range(4))


@pytest.mark.parametrize(("one", "two"), [
    ("https://day.example/26.html#a080605", "https://day.example/26.html#a080605"),
    ("https://day.example/26.html", "https://DAY.example/26.html?utm_source=rss#a080605"),
    ("https://podcast.example/", "https://podcast.example/"),
])
def test_the_same_link_in_two_sources_is_one_item(feed_server: FeedServer, tmp_path: Path,
                                                  one: str, two: str) -> None:
    """SPEC §3 rule 2 is across sources: one story listed by two feeds is one file."""
    feed_server.route("/one.xml", body=rss_feed([news_item(1, link=one, guid="one-1")]))
    feed_server.route("/two.xml", body=rss_feed([news_item(1, link=two, guid="two-1",
                                                           title="Its title in feed two")]))
    config = write_config(tmp_path, [{"id": "one", "url": feed_server.url("/one.xml")},
                                     {"id": "two", "url": feed_server.url("/two.xml")}])
    summary = poll_json(config, expect=(0,))
    assert (by_id(summary)["one"]["new"], by_id(summary)["two"]["new"]) == (1, 0)
    [item] = read_store(tmp_path / "store").values()
    assert (item.source, item.sources, item.guid) == ("one", ("one", "two"), "one-1")


def test_two_anchors_of_one_page_in_two_sources_are_two_items(feed_server: FeedServer,
                                                              tmp_path: Path) -> None:
    feed_server.route("/one.xml", body=rss_feed([news_item(
        1, link="https://day.example/26.html#a080605", guid="one-1")]))
    feed_server.route("/two.xml", body=rss_feed([news_item(
        2, link="https://day.example/26.html#a030658", guid="two-2")]))
    config = write_config(tmp_path, [{"id": "one", "url": feed_server.url("/one.xml")},
                                     {"id": "two", "url": feed_server.url("/two.xml")}])
    summary = poll_json(config, expect=(0,))
    assert summary["new"] == 2
    items = read_store(tmp_path / "store").values()
    assert sorted((i.source, i.guid) for i in items) == [("one", "one-1"), ("two", "two-2")]


def test_an_item_polled_days_later_keeps_its_guid_and_date(feed_server: FeedServer,
                                                           tmp_path: Path) -> None:
    """No mixing: an update from its own entry keeps the file's guid and date."""
    day = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    feed_server.route("/p.xml", body=rss_feed([news_item(
        n, link="https://podcast.example/", guid=f"ep-{n}", pubDate=day + timedelta(days=n))
        for n in range(1, 4)]))
    config = write_config(tmp_path, [{"id": "p", "url": feed_server.url("/p.xml")}])
    poll_json(config, expect=(0,))
    for item in read_store(tmp_path / "store").values():
        n = int(item.guid.split("-")[1])
        assert item.date == day + timedelta(days=n)
        assert item.title == f"Story number {n} about clinical models"


def test_a_reindexed_store_still_tells_anchors_apart(feed_server: FeedServer,
                                                     tmp_path: Path) -> None:
    case = next(c for c in CASES if c.stem == "fragments-without-guids")
    feed_server.route("/feed.xml", body=case.read_bytes())
    config = write_config(tmp_path, [{"id": "case", "url": feed_server.url("/feed.xml")}])
    poll_json(config, expect=(0,))
    before = store_snapshot(tmp_path / "store")
    # the index rebuilt from the files alone
    for derived in (tmp_path / "store" / ".aggregator").glob("index.sqlite*"):
        derived.unlink()
    assert_clean_exit(run_cli("reindex", config=config), 0)
    # each post edited: found again by its exact link, not taken for another anchor
    feed_server.route("/feed.xml", body=case.read_bytes().replace(b"a short note", b"a note"))
    summary = poll_json(config, expect=(0,))
    assert (summary["new"], summary["updated"]) == (0, expected_items(case))
    assert set(store_snapshot(tmp_path / "store")) == set(before)


def test_a_rebuilt_index_still_knows_a_link_is_shared(feed_server: FeedServer,
                                                      tmp_path: Path) -> None:
    """After `reindex` from the files alone, a new episode linking the home page, once
    its oldest has left the feed, is still a new file (not episode 1's guid rotated)."""
    feed_server.route("/p.xml", body=_episodes(range(1, 4)))
    config = write_config(tmp_path, [{"id": "p", "url": feed_server.url("/p.xml")}])
    poll_json(config, expect=(0,))
    for derived in (tmp_path / "store" / ".aggregator").glob("index.sqlite*"):
        derived.unlink()
    assert_clean_exit(run_cli("reindex", config=config), 0)
    feed_server.route("/p.xml", body=_episodes(range(2, 5)))
    summary = poll_json(config, expect=(0,))
    assert (summary["new"], summary["updated"]) == (1, 0)
    assert sorted(i.guid for i in read_store(tmp_path / "store").values()) == [
        f"ep-{n}" for n in range(1, 5)]
