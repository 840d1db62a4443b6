"""Polite fetching (SPEC §5) and bad sources (SPEC §6), against the loopback feed_server.

Each test runs the real `aggregator poll` as a subprocess on a temporary directory, so
what is checked is what a user sees: the --json summary, the exit code, the store.
A few checks that need to look inside one process (memory use) call fetch directly.
"""

from __future__ import annotations

import gzip
import socket
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.errors import FetchError
from aggregator.fetch import Fetcher, retry_after
from aggregator.model import HttpState, Source
from tests.feed_server import FeedServer
from tests.helpers import by_id, news_item, poll_json, read_store, rss_feed, write_config

pytestmark = pytest.mark.timeout(60)

GOOD = rss_feed([news_item(1), news_item(2)], title="Good feed")


def good_source(server: FeedServer) -> dict[str, str]:
    server.route("/good.xml", body=GOOD, etag='"good-v1"')
    return {"id": "good", "url": server.url("/good.xml")}


def assert_good_ok(summary: dict) -> None:
    """The healthy source polled alongside a broken one was not held up by it."""
    good = by_id(summary)["good"]
    assert good["status"] in ("ok", "not_modified"), good
    assert good["error"] is None


# -- politeness ---------------------------------------------------------------------------------
def test_user_agent_names_aggregator(feed_server: FeedServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, [good_source(feed_server)])
    summary = poll_json(config)
    assert summary["exit_code"] == 0
    agent = feed_server.requests_for("/good.xml")[0].headers.get("User-Agent", "")
    assert "aggregator" in agent.lower()
    assert "python-requests/" not in agent  # not the library's default


def test_second_poll_is_conditional_and_304_is_not_modified(feed_server: FeedServer,
                                                             tmp_path: Path) -> None:
    stamp = "Wed, 12 Feb 2025 10:00:00 GMT"
    feed_server.route("/feed.xml", body=GOOD, etag='"v1"', last_modified=stamp)
    feed_server.route("/lm.xml", body=rss_feed([news_item(7)]), last_modified=stamp)
    config = write_config(tmp_path, [{"id": "feed", "url": feed_server.url("/feed.xml")},
                                     {"id": "lm", "url": feed_server.url("/lm.xml")}])
    first = poll_json(config)
    assert [s["status"] for s in first["sources"]] == ["ok", "ok"]
    assert first["new"] == 3
    before = {p: f.read_bytes() for p, f in ((f.name, f) for f in tmp_path.rglob("*.md"))}

    second = poll_json(config)
    assert [s["status"] for s in second["sources"]] == ["not_modified", "not_modified"]
    assert (second["new"], second["updated"], second["exit_code"]) == (0, 0, 0)
    conditional = feed_server.requests_for("/feed.xml")[1].headers
    assert conditional.get("If-None-Match") == '"v1"'
    assert conditional.get("If-Modified-Since") == stamp
    assert feed_server.requests_for("/lm.xml")[1].headers.get("If-Modified-Since") == stamp
    assert {p: f.read_bytes() for p, f in ((f.name, f) for f in tmp_path.rglob("*.md"))} == before


def test_gzip_body_is_decoded(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/gz.xml", body=rss_feed([news_item(3, title="Gzipped story")]), gzip=True)
    config = write_config(tmp_path, [{"id": "gz", "url": feed_server.url("/gz.xml")}])
    summary = poll_json(config)
    assert by_id(summary)["gz"]["status"] == "ok"
    assert "gzip" in feed_server.requests_for("/gz.xml")[0].headers.get("Accept-Encoding", "")
    titles = [item.title for item in read_store(tmp_path / "store").values()]
    assert titles == ["Gzipped story"]


def test_301_is_followed_and_remembered(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/old.xml", status=301, location=feed_server.url("/new.xml"))
    feed_server.route("/new.xml", body=GOOD, etag='"n1"')
    config = write_config(tmp_path, [{"id": "moved", "url": feed_server.url("/old.xml")}])
    assert by_id(poll_json(config))["moved"]["status"] == "ok"
    assert by_id(poll_json(config))["moved"]["status"] == "not_modified"
    assert by_id(poll_json(config))["moved"]["status"] == "not_modified"
    assert len(feed_server.requests_for("/old.xml")) == 1  # never asked again
    new = feed_server.requests_for("/new.xml")
    assert len(new) == 3
    assert new[2].headers.get("If-None-Match") == '"n1"'


def test_302_is_followed_but_not_remembered(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/tmp.xml", status=302, location="/real.xml")  # a relative Location
    feed_server.route("/real.xml", body=GOOD)
    config = write_config(tmp_path, [{"id": "hop", "url": feed_server.url("/tmp.xml")}])
    assert by_id(poll_json(config))["hop"]["status"] == "ok"
    assert by_id(poll_json(config))["hop"]["status"] == "ok"
    assert len(feed_server.requests_for("/tmp.xml")) == 2
    assert len(feed_server.requests_for("/real.xml")) == 2
    assert len(read_store(tmp_path / "store")) == 2  # no duplicates from the second poll


def test_410_disables_the_source_until_its_url_changes(feed_server: FeedServer,
                                                       tmp_path: Path) -> None:
    feed_server.route("/gone.xml", status=410, body=b"gone", content_type="text/plain")
    feed_server.route("/back.xml", body=GOOD)
    sources = [{"id": "gone", "url": feed_server.url("/gone.xml")}, good_source(feed_server)]
    config = write_config(tmp_path, sources)
    first = poll_json(config)
    assert by_id(first)["gone"]["status"] == "error"
    assert "410" in by_id(first)["gone"]["error"]
    assert first["exit_code"] == 1
    assert_good_ok(first)

    for force in (False, True):  # even --force leaves a 410 alone
        again = poll_json(config, force=force)
        assert by_id(again)["gone"]["status"] == "skipped"
        assert by_id(again)["gone"]["error"]  # says why
        assert again["exit_code"] == 0
    assert len(feed_server.requests_for("/gone.xml")) == 1

    sources[0]["url"] = feed_server.url("/back.xml")  # the user gives it a new URL
    config = write_config(tmp_path, sources)
    assert by_id(poll_json(config))["gone"]["status"] == "ok"


def test_429_retry_after_is_honoured_and_force_overrides(feed_server: FeedServer,
                                                         tmp_path: Path) -> None:
    feed_server.route("/busy.xml", status=429, headers={"Retry-After": "120"}, body=b"slow down",
                      content_type="text/plain")
    config = write_config(tmp_path, [{"id": "busy", "url": feed_server.url("/busy.xml")},
                                     good_source(feed_server)])
    first = poll_json(config)
    assert by_id(first)["busy"]["status"] == "error"
    assert "429" in by_id(first)["busy"]["error"]
    assert first["exit_code"] == 1
    assert_good_ok(first)

    second = poll_json(config)
    assert by_id(second)["busy"]["status"] == "skipped"
    assert len(feed_server.requests_for("/busy.xml")) == 1

    feed_server.route("/busy.xml", body=rss_feed([news_item(9)]))
    forced = poll_json(config, "busy", force=True)
    assert [s["id"] for s in forced["sources"]] == ["busy"]
    assert by_id(forced)["busy"]["status"] == "ok"
    assert by_id(forced)["busy"]["new"] == 1
    assert len(feed_server.requests_for("/busy.xml")) == 2


def test_server_error_backs_off(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/broken.xml", status=500, body=b"oops", content_type="text/plain")
    config = write_config(tmp_path, [{"id": "broken", "url": feed_server.url("/broken.xml")},
                                     good_source(feed_server)])
    first = poll_json(config)
    assert by_id(first)["broken"]["status"] == "error"
    assert "500" in by_id(first)["broken"]["error"]
    assert first["exit_code"] == 1
    assert_good_ok(first)
    second = poll_json(config)
    assert by_id(second)["broken"]["status"] == "skipped"
    assert "back" in by_id(second)["broken"]["error"].lower()
    assert len(feed_server.requests_for("/broken.xml")) == 1


# -- bad sources: each errors, names what went wrong, and the others carry on ----------------
def _closed_port_url(server: FeedServer) -> tuple[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/feed.xml"
    return url, url  # the error must name the URL


def _redirect_loop(server: FeedServer) -> tuple[str, str]:
    server.route("/loop-a", status=301, location="/loop-b")
    server.route("/loop-b", status=302, location="/loop-a")
    return server.url("/loop-a"), "redirects"


def _redirect_to_file(server: FeedServer) -> tuple[str, str]:
    server.route("/sneaky", status=302, location="file:///etc/passwd")
    return server.url("/sneaky"), "file:///etc/passwd"


def _too_large(server: FeedServer) -> tuple[str, str]:
    server.route("/big", body=rss_feed([news_item(n) for n in range(400)]))
    return server.url("/big"), "too large"


def _too_large_unframed(server: FeedServer) -> tuple[str, str]:
    server.route("/big-nolen", body=rss_feed([news_item(n) for n in range(400)]),
                 content_length=False)
    return server.url("/big-nolen"), "too large"


def _gzip_bomb(server: FeedServer) -> tuple[str, str]:
    bomb = gzip.compress(b"\0" * 50_000_000, compresslevel=9)
    server.route("/bomb", raw_body_override=bomb, headers={"Content-Encoding": "gzip"})
    return server.url("/bomb"), "too large"


def _slow_drip(server: FeedServer) -> tuple[str, str]:
    server.route("/drip", body=GOOD, drip=0.05)  # ~40 s for the whole body
    return server.url("/drip"), "timed out"


def _slow_headers(server: FeedServer) -> tuple[str, str]:
    server.route("/late", body=GOOD, delay=30)
    return server.url("/late"), "timed out"


def _html_page(server: FeedServer) -> tuple[str, str]:
    server.route("/page", content_type="text/html; charset=utf-8", body=(
        b'<!DOCTYPE html><html><head><title>Blog</title>'
        b'<link rel="alternate" type="application/rss+xml" title="RSS" href="/feed.xml">'
        b"</head><body><p>Hello</p></body></html>"))
    return server.url("/page"), server.url("/feed.xml")


def _empty(server: FeedServer) -> tuple[str, str]:
    server.route("/empty", body=b"")
    return server.url("/empty"), "empty"


def _not_found(server: FeedServer) -> tuple[str, str]:
    return server.url("/missing.xml"), "404"


def _garbage(server: FeedServer) -> tuple[str, str]:
    server.route("/garbage", body=b"\x00\x01binary\xff\xfe nonsense" * 50,
                 content_type="application/octet-stream")
    return server.url("/garbage"), "not a feed"


def _bad_json(server: FeedServer) -> tuple[str, str]:
    server.route("/feed.json", body=b'{"version": "https://jsonfeed.org/version/1.1", "items": [',
                 content_type="application/feed+json")
    return server.url("/feed.json"), "JSON"


def _bad_location(server: FeedServer) -> tuple[str, str]:
    server.route("/bad-location", status=301, location="http://[::1")
    return server.url("/bad-location"), "redirect"


def _latin1_location(server: FeedServer) -> tuple[str, str]:
    server.route("/latin1-location", status=302, location="/caf\xe9 feed.xml")
    return server.url("/latin1-location"), "redirect"


def _huge_retry_after(server: FeedServer) -> tuple[str, str]:
    server.route("/huge-retry", status=429, headers={"Retry-After": "9" * 40})
    return server.url("/huge-retry"), "429"


def _json_nested_deep(server: FeedServer) -> tuple[str, str]:
    server.route("/deep.json", content_type="application/feed+json", body=(
        b'{"version": "https://jsonfeed.org/version/1.1", "items": '
        + b"[" * 20_000 + b"]" * 20_000 + b"}"))
    return server.url("/deep.json"), "nested"


def _truncated_body(server: FeedServer) -> tuple[str, str]:
    server.route("/short", raw_body_override=GOOD[:200],
                 headers={"Content-Length": str(len(GOOD))})
    return server.url("/short"), ""


BAD_SOURCES: dict[str, Callable[[FeedServer], tuple[str, str]]] = {
    "bad-location": _bad_location,
    "latin1-location": _latin1_location,
    "huge-retry-after": _huge_retry_after,
    "json-nested-deep": _json_nested_deep,
    "truncated-body": _truncated_body,
    "connection-refused": _closed_port_url,
    "redirect-loop": _redirect_loop,
    "redirect-to-file": _redirect_to_file,
    "too-large": _too_large,
    "too-large-no-length": _too_large_unframed,
    "gzip-bomb": _gzip_bomb,
    "slow-drip": _slow_drip,
    "slow-headers": _slow_headers,
    "html-page": _html_page,
    "empty-200": _empty,
    "not-found": _not_found,
    "garbage": _garbage,
    "bad-json": _bad_json,
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_source_errors_and_others_carry_on(feed_server: FeedServer, tmp_path: Path,
                                               case: str) -> None:
    url, expected = BAD_SOURCES[case](feed_server)
    config = write_config(tmp_path, [{"id": "bad", "url": url, "timeout": "2s",
                                      "max_bytes": "64KB"},
                                     good_source(feed_server)])
    summary = poll_json(config, timeout=40)
    bad = by_id(summary)["bad"]
    assert bad["status"] == "error", bad
    assert expected.lower() in bad["error"].lower(), bad["error"]
    assert "\n" not in bad["error"]
    assert "internal error" not in bad["error"]
    assert summary["errors"] == 1
    assert summary["exit_code"] == 1
    assert_good_ok(summary)
    assert by_id(summary)["good"]["new"] == 2
    assert not (tmp_path / "store" / "bad").exists()


def test_redirect_to_a_local_file_reads_nothing(feed_server: FeedServer, tmp_path: Path) -> None:
    feed_server.route("/sneaky", status=301, location="file:///etc/passwd")
    config = write_config(tmp_path, [{"id": "sneaky", "url": feed_server.url("/sneaky")}])
    summary = poll_json(config)
    assert by_id(summary)["sneaky"]["status"] == "error"
    secret = Path("/etc/passwd").read_bytes()[:40]
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    # and the permanent redirect to it is not remembered as the feed's new home
    again = poll_json(config, force=True)
    assert by_id(again)["sneaky"]["status"] == "error"
    assert len(feed_server.requests_for("/sneaky")) == 2


def test_gzip_bomb_stops_at_max_bytes_with_bounded_memory(feed_server: FeedServer) -> None:
    bomb = gzip.compress(b"\0" * 50_000_000, compresslevel=9)
    feed_server.route("/bomb", raw_body_override=bomb, content_length=False,
                      headers={"Content-Encoding": "gzip"})
    source = Source(id="bomb", url=feed_server.url("/bomb"), max_bytes=1024 * 1024, timeout=10)
    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="too large"):
            Fetcher().fetch(source, HttpState())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while refusing a 50 MB bomb"


def test_ill_formed_feed_with_entries_is_ok_and_logged(feed_server: FeedServer,
                                                      tmp_path: Path) -> None:
    body = rss_feed([news_item(1), news_item(2)]).replace(b"</channel>\n</rss>", b"")
    body = body.replace(b"Story number 1", b"Story &nbsp; number 1")  # undefined entity too
    feed_server.route("/bozo.xml", body=body)
    config = write_config(tmp_path, [{"id": "bozo", "url": feed_server.url("/bozo.xml")}])
    summary = poll_json(config)
    assert by_id(summary)["bozo"]["status"] == "ok"
    assert by_id(summary)["bozo"]["new"] == 2
    assert summary["exit_code"] == 0
    assert len(read_store(tmp_path / "store")) == 2


# -- at most 2 requests at once to one host -------------------------------------------------------
def _max_overlap(server: FeedServer, paths: list[str]) -> int:
    """The most requests to `paths` the server was serving at one moment."""
    spans = []
    for path in paths:
        for request in server.requests_for(path):
            assert request.answered is not None
            spans.append((request.time, request.answered))
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        current += step
        most = max(most, current)
    return most


def test_at_most_two_requests_at_once_to_one_host(feed_server: FeedServer,
                                                  tmp_path: Path) -> None:
    paths = [f"/slow{n}.xml" for n in range(6)]
    for n, path in enumerate(paths):
        feed_server.route(path, body=rss_feed([news_item(n)]), delay=0.5)
    config = write_config(tmp_path, [{"id": f"slow{n}", "url": feed_server.url(p)}
                                     for n, p in enumerate(paths)])
    summary = poll_json(config)
    assert [s["status"] for s in summary["sources"]] == ["ok"] * 6
    assert _max_overlap(feed_server, paths) <= 2


def test_overlap_measure_sees_concurrency(feed_server: FeedServer) -> None:
    """Control for the test above: without the per-host cap the server sees 6 at once."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [f"/slow{n}.xml" for n in range(6)]
    for n, path in enumerate(paths):
        feed_server.route(path, body=rss_feed([news_item(n)]), delay=0.5)
    fetcher = Fetcher(per_host=6)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda p: fetcher.fetch(Source(id="s", url=feed_server.url(p)),
                                              HttpState()), paths))
    assert _max_overlap(feed_server, paths) > 2


def test_301_is_remembered_when_the_new_home_redirects_temporarily(feed_server: FeedServer,
                                                                   tmp_path: Path) -> None:
    feed_server.route("/old.xml", status=301, location="/new.xml")
    feed_server.route("/new.xml", body=GOOD)
    config = write_config(tmp_path, [{"id": "moved", "url": feed_server.url("/old.xml")}])
    assert by_id(poll_json(config))["moved"]["status"] == "ok"
    feed_server.route("/new.xml", status=302, location="/cdn.xml")  # e.g. a CDN hop
    feed_server.route("/cdn.xml", body=GOOD)
    assert by_id(poll_json(config))["moved"]["status"] == "ok"
    assert by_id(poll_json(config))["moved"]["status"] == "ok"
    assert len(feed_server.requests_for("/old.xml")) == 1
    assert len(feed_server.requests_for("/new.xml")) == 3


def test_503_with_an_http_date_retry_after_is_honoured(feed_server: FeedServer,
                                                       tmp_path: Path) -> None:
    from email.utils import formatdate

    feed_server.route("/maint.xml", status=503, body=b"maintenance", content_type="text/plain",
                      headers={"Retry-After": formatdate(time.time() + 3600, usegmt=True)})
    config = write_config(tmp_path, [{"id": "maint", "url": feed_server.url("/maint.xml")}])
    first = poll_json(config)
    assert "503" in by_id(first)["maint"]["error"]
    assert by_id(poll_json(config))["maint"]["status"] == "skipped"
    assert len(feed_server.requests_for("/maint.xml")) == 1


NOW = datetime(2025, 2, 14, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("120", timedelta(seconds=120)),
    (" 0 ", timedelta(0)),
    ("Fri, 14 Feb 2025 13:00:00 GMT", timedelta(hours=1)),
    ("Fri, 14 Feb 2025 11:00:00 GMT", timedelta(0)),  # in the past: now
    (None, None),
    ("", None),
    ("soon", None),
    ("-5", None),
    ("9" * 40, timedelta(days=7)),  # capped, not an OverflowError
    ("Fri, 31 Dec 9999 23:59:59 GMT", timedelta(days=7)),
])
def test_retry_after_values(value: str | None, expected: timedelta | None) -> None:
    assert retry_after(value, NOW) == expected


# -- the direct first request (fetch._get_direct) -------------------------------------------------
def _fetch(fetcher: Fetcher, url: str, state: HttpState | None = None):  # noqa: ANN202
    return fetcher.fetch(Source(id="s", url=url), state or HttpState())


def test_a_direct_request_is_the_request_requests_sends(feed_server: FeedServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator import fetch

    feed_server.route("/good.xml", body=GOOD, etag='"v1"')
    direct = _fetch(Fetcher(), feed_server.url("/good.xml"), HttpState(etag='"v0"'))
    monkeypatch.setattr(fetch, "_DIRECT_URL", fetch.re.compile("(?!)"))  # requests only
    through_requests = _fetch(Fetcher(), feed_server.url("/good.xml"), HttpState(etag='"v0"'))
    first, second = feed_server.requests_for("/good.xml")
    assert (first.method, first.path) == (second.method, second.path) == ("GET", "/good.xml")
    assert list(first.headers.items()) == list(second.headers.items())
    assert first.headers["If-None-Match"] == '"v0"'
    assert direct == through_requests
    assert direct.body == GOOD and direct.etag == '"v1"'


def test_direct_304s_keep_their_connection(feed_server: FeedServer) -> None:
    feed_server.route("/good.xml", body=GOOD, etag='"v1"')
    fetcher = Fetcher()
    results = [_fetch(fetcher, feed_server.url("/good.xml"), HttpState(etag='"v1"'))
               for _ in range(5)]
    assert {r.status for r in results} == {"not_modified"}
    assert feed_server.connections == 1  # keep-alive: one TCP connection for five requests


def test_a_cookie_the_server_sets_is_sent_back_as_requests_would(feed_server: FeedServer) -> None:
    feed_server.route("/good.xml", body=GOOD, headers={"Set-Cookie": "visit=1; Path=/"})
    fetcher = Fetcher()
    _fetch(fetcher, feed_server.url("/good.xml"))
    _fetch(fetcher, feed_server.url("/good.xml"))
    first, second = feed_server.requests_for("/good.xml")
    assert "Cookie" not in first.headers
    assert second.headers.get("Cookie") == "visit=1"


def test_a_redirect_after_a_direct_request_is_followed_by_requests(
        feed_server: FeedServer) -> None:
    feed_server.route("/old.xml", status=301, location="/mid.xml")
    feed_server.route("/mid.xml", status=302, location="/good.xml")
    feed_server.route("/good.xml", body=GOOD)
    result = _fetch(Fetcher(), feed_server.url("/old.xml"))
    assert result.body == GOOD and result.url == feed_server.url("/good.xml")
    assert result.permanent_url == feed_server.url("/mid.xml")  # the 301 hop only
    assert [len(feed_server.requests_for(p)) for p in ("/old.xml", "/mid.xml", "/good.xml")] \
        == [1, 1, 1]


def test_a_refused_direct_request_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="cannot connect: Connection refused"):
        _fetch(Fetcher(), f"http://127.0.0.1:{port}/feed.xml")
