"""The loopback feed server answers as a real HTTP/1.1 server would."""

import gzip
import hashlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
import requests

from tests.feed_server import FeedServer, serving

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def raw_exchange(server: FeedServer, request: bytes) -> bytes:
    """Send `request` on a fresh socket; return everything read until the server closes."""
    chunks = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(request)
        for _ in range(10_000):  # socket.timeout ends a server that never closes
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_etag_answers_304_to_matching_if_none_match(feed_server: FeedServer) -> None:
    feed_server.route("/feed", body=RSS, etag='"v1"')

    first = requests.get(feed_server.url("/feed"), timeout=5)
    again = requests.get(feed_server.url("/feed"), headers={"If-None-Match": '"v1"'}, timeout=5)
    changed = requests.get(feed_server.url("/feed"), headers={"If-None-Match": '"v0"'}, timeout=5)

    assert (first.status_code, first.headers["ETag"], first.content) == (200, '"v1"', RSS)
    assert (again.status_code, again.headers["ETag"], again.content) == (304, '"v1"', b"")
    assert (changed.status_code, changed.content) == (200, RSS)


def test_last_modified_answers_304_to_if_modified_since(feed_server: FeedServer) -> None:
    stamp = "Tue, 01 Oct 2024 10:00:00 GMT"
    feed_server.route("/feed", body=RSS, last_modified=stamp)

    first = requests.get(feed_server.url("/feed"), timeout=5)
    same = requests.get(feed_server.url("/feed"), headers={"If-Modified-Since": stamp}, timeout=5)
    older = requests.get(
        feed_server.url("/feed"),
        headers={"If-Modified-Since": "Mon, 30 Sep 2024 10:00:00 GMT"},
        timeout=5,
    )

    assert (first.status_code, first.headers["Last-Modified"]) == (200, stamp)
    assert (same.status_code, same.content) == (304, b"")
    assert (older.status_code, older.content) == (200, RSS)


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("identity", False),
        ("gzip;q=0", False),
    ],
)
def test_gzip_only_when_the_client_accepts_it(
    feed_server: FeedServer, accept_encoding: str, gzipped: bool
) -> None:
    body = RSS * 20
    feed_server.route("/feed", body=body, gzip=True)

    with requests.get(
        feed_server.url("/feed"),
        headers={"Accept-Encoding": accept_encoding},
        stream=True,
        timeout=5,
    ) as response:
        on_the_wire = response.raw.read(decode_content=False)

    assert response.headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    assert response.headers["Content-Length"] == str(len(on_the_wire))
    assert (gzip.decompress(on_the_wire) if gzipped else on_the_wire) == body


def test_raw_body_override_is_sent_as_is(feed_server: FeedServer) -> None:
    bomb = gzip.compress(b"\0" * 100_000)
    feed_server.route("/bomb", raw_body_override=bomb, headers={"Content-Encoding": "gzip"})

    with requests.get(feed_server.url("/bomb"), stream=True, timeout=5) as response:
        on_the_wire = response.raw.read(decode_content=False)

    assert response.headers["Content-Encoding"] == "gzip"
    assert on_the_wire == bomb


def test_301_sends_location(feed_server: FeedServer) -> None:
    feed_server.route("/old", status=301, location=feed_server.url("/new"))
    feed_server.route("/new", body=RSS)

    moved = requests.get(feed_server.url("/old"), allow_redirects=False, timeout=5)
    followed = requests.get(feed_server.url("/old"), timeout=5)

    assert (moved.status_code, moved.headers["Location"]) == (301, feed_server.url("/new"))
    assert [r.status_code for r in followed.history] == [301]
    assert (followed.url, followed.content) == (feed_server.url("/new"), RSS)
    assert len(feed_server.requests_for("/old")) == 2
    assert len(feed_server.requests_for("/new")) == 1


def test_delay_holds_the_response_past_a_read_timeout(feed_server: FeedServer) -> None:
    feed_server.route("/slow", body=RSS, delay=30)

    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(feed_server.url("/slow"), timeout=(2, 0.2))


def test_a_delayed_request_does_not_block_others(feed_server: FeedServer) -> None:
    feed_server.route("/slow", body=b"slow", delay=1.0)
    feed_server.route("/fast", body=b"fast")
    slow: list[requests.Response] = []
    client = threading.Thread(
        target=lambda: slow.append(requests.get(feed_server.url("/slow"), timeout=10))
    )
    client.start()
    assert eventually(lambda: bool(feed_server.requests_for("/slow")))

    fast = requests.get(feed_server.url("/fast"), timeout=0.5)

    client.join(timeout=10)
    assert fast.content == b"fast"
    assert [r.content for r in slow] == [b"slow"]


def test_drip_delivers_a_small_body(feed_server: FeedServer) -> None:
    feed_server.route("/drip", body=RSS[:20], drip=0.005)

    response = requests.get(feed_server.url("/drip"), timeout=5)

    assert response.content == RSS[:20]


def test_drip_pauses_between_bytes(feed_server: FeedServer) -> None:
    feed_server.route("/drip", body=RSS, drip=30)

    # requests reports a read timeout in the body as a ConnectionError.
    with pytest.raises(requests.exceptions.ConnectionError, match="Read timed out"):
        requests.get(feed_server.url("/drip"), timeout=(2, 0.2))


def test_drip_stops_when_the_client_hangs_up(feed_server: FeedServer) -> None:
    feed_server.route("/drip", body=RSS * 10, drip=0.05)  # about 40 s if sent to the end
    with socket.create_connection(("127.0.0.1", feed_server.port), timeout=2) as sock:
        sock.sendall(b"GET /drip HTTP/1.1\r\nHost: test\r\n\r\n")
        received = b""
        for _ in range(100):
            received += sock.recv(1024)
            if b"\r\n\r\n<" in received:
                break
        assert feed_server.open_connections == 1

    assert eventually(lambda: feed_server.open_connections == 0)


def test_unknown_path_is_404(feed_server: FeedServer) -> None:
    feed_server.route("/feed", body=RSS)

    response = requests.get(feed_server.url("/nothing"), timeout=5)

    assert response.status_code == 404


def test_query_route_wins_over_path_route(feed_server: FeedServer) -> None:
    feed_server.route("/feed", body=b"any page")
    feed_server.route("/feed?page=2", body=b"page 2")

    assert requests.get(feed_server.url("/feed?page=2"), timeout=5).content == b"page 2"
    assert requests.get(feed_server.url("/feed?page=3"), timeout=5).content == b"any page"
    assert requests.get(feed_server.url("/feed"), timeout=5).content == b"any page"


def test_request_log_records_method_path_and_headers(feed_server: FeedServer) -> None:
    feed_server.route("/feed", body=RSS)

    requests.get(feed_server.url("/feed?x=1"), headers={"User-Agent": "agg/1"}, timeout=5)
    requests.head(feed_server.url("/feed"), timeout=5)

    logged = feed_server.requests_for("/feed")
    assert [(r.method, r.path) for r in logged] == [("GET", "/feed?x=1"), ("HEAD", "/feed")]
    assert logged[0].headers["user-agent"] == "agg/1"
    assert feed_server.requests_for("/feed?x=1") == logged[:1]
    assert logged[0].time <= logged[1].time


def test_head_sends_headers_without_a_body(feed_server: FeedServer) -> None:
    feed_server.route("/feed", body=RSS)
    connection = http.client.HTTPConnection("127.0.0.1", feed_server.port, timeout=2)
    try:
        connection.request("HEAD", "/feed")
        head = connection.getresponse()
        head.read()
        # A body after the HEAD response would be parsed as this response's status line.
        connection.request("GET", "/feed")
        get = connection.getresponse()
        body = get.read()
    finally:
        connection.close()

    assert (head.status, head.getheader("Content-Length")) == (200, str(len(RSS)))
    assert (get.status, body) == (200, RSS)


def test_without_content_length_the_body_ends_at_close(feed_server: FeedServer) -> None:
    feed_server.route("/feed", body=RSS, content_length=False)

    response = raw_exchange(feed_server, b"GET /feed HTTP/1.1\r\nHost: test\r\n\r\n")

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == RSS


def test_serve_dir_with_conditional_get(feed_server: FeedServer, tmp_path: Path) -> None:
    (tmp_path / "feed.rss").write_bytes(RSS)
    os.utime(tmp_path / "feed.rss", (1_700_000_000, 1_700_000_000))
    feed_server.serve_dir(tmp_path)
    url = feed_server.url("/files/feed.rss")

    first = requests.get(url, timeout=5)
    by_etag = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=5)
    by_date = requests.get(
        url, headers={"If-Modified-Since": first.headers["Last-Modified"]}, timeout=5
    )
    missing = requests.get(feed_server.url("/files/other.rss"), timeout=5)

    assert (first.status_code, first.content) == (200, RSS)
    assert first.headers["Content-Type"] == "application/rss+xml"
    assert first.headers["ETag"] == f'"{hashlib.sha1(RSS).hexdigest()}"'
    assert first.headers["Last-Modified"] == formatdate(1_700_000_000, usegmt=True)
    assert (by_etag.status_code, by_date.status_code) == (304, 304)
    assert missing.status_code == 404


def test_serve_dir_refuses_to_leave_its_directory(feed_server: FeedServer, tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    feed_server.serve_dir(tmp_path / "public")

    for target in (b"/files/../secret.txt", b"/files/%2e%2e/secret.txt", b"/files/%2Fetc/hosts"):
        response = raw_exchange(
            feed_server, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.1 404"), target


def test_server_writes_nothing_to_stderr(
    feed_server: FeedServer, capfd: pytest.CaptureFixture[str]
) -> None:
    feed_server.route("/feed", body=RSS)
    requests.get(feed_server.url("/feed"), timeout=5)
    requests.get(feed_server.url("/missing"), timeout=5)
    assert requests.post(feed_server.url("/feed"), timeout=5).status_code == 501
    assert b"400" in raw_exchange(feed_server, b"nonsense\r\n\r\n")

    assert capfd.readouterr().err == ""


def test_shutdown_wakes_sleeping_handlers_and_closes_idle_connections() -> None:
    outcomes: dict[str, object] = {}

    def fetch(path: str) -> None:
        try:
            outcomes[path] = requests.get(server.url(path), timeout=30)
        except requests.RequestException as error:
            outcomes[path] = error

    with requests.Session() as session:
        with serving() as server:
            server.route("/slow", body=RSS, delay=60)
            server.route("/drip", body=RSS, drip=60)
            server.route("/feed", body=RSS)
            session.get(server.url("/feed"), timeout=5)  # its connection stays open, idle
            clients = [threading.Thread(target=fetch, args=(path,)) for path in ("/slow", "/drip")]
            for client in clients:
                client.start()
            assert eventually(lambda: server.open_connections == 3)
        # The session still holds its connection; the server has let go of it.
        assert server.open_connections == 0

    for client in clients:
        client.join(timeout=5)
    assert not any(client.is_alive() for client in clients)
    # No response at all, and a body cut short: neither is mistaken for a whole one.
    assert isinstance(outcomes["/slow"], requests.exceptions.ConnectionError)
    assert isinstance(outcomes["/drip"], requests.exceptions.ChunkedEncodingError)
