"""A real HTTP/1.1 server on 127.0.0.1 for tests: routes, a directory, a request log.

    with serving() as server:                  # or take the `feed_server` fixture
        server.route("/feed.xml", body=b"<rss/>", etag='"v1"')
        requests.get(server.url("/feed.xml"))
        server.requests_for("/feed.xml")[0].headers["User-Agent"]

A request is answered by, in order: the route registered for its exact path and
query, the route registered for its path alone, a file from a `serve_dir`
directory, or a 404. Responses are framed by Content-Length, or by closing the
connection when a route asks for none.

Handlers that sleep (`delay`, `drip`) wait on the server's stop event, and
`shutdown()` also closes every open connection, so stopping the server never
waits on a sleeping handler or an idle keep-alive socket.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import mimetypes
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.message import Message
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from requests.structures import CaseInsensitiveDict

# How long server_close() waits, in all, for handler threads to finish.
_JOIN_TIMEOUT = 5.0

# mimetypes depends on the host's /etc/mime.types; feed types must not.
_FEED_TYPES = {
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".rdf": "application/rdf+xml",
    ".xml": "application/xml",
    ".json": "application/json",
}


@dataclass
class Route:
    """How the server answers one path. Fields are read when a request arrives."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers; they replace any header of the same name set by the fields."""
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: str | None = None
    """Sent as ETag, quotes included; an If-None-Match that matches it gets a 304."""
    last_modified: str | None = None
    """Sent as Last-Modified; an If-Modified-Since not before it gets a 304."""
    gzip: bool = False
    """Gzip the body for requests whose Accept-Encoding allows gzip."""
    delay: float = 0.0
    """Seconds to wait before sending the status line."""
    drip: float = 0.0
    """If > 0, send the body one byte at a time, waiting this long between bytes."""
    location: str | None = None
    """Sent as Location, for redirects."""
    content_length: bool = True
    """False: send no Content-Length; the body ends when the server closes the connection."""
    raw_body_override: bytes | None = None
    """Bytes sent as-is instead of `body`: no gzip, no Content-Encoding unless in `headers`."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    """The request target: path and query, as sent."""
    headers: CaseInsensitiveDict[str]
    time: float
    """time.monotonic() when the request line and headers had been read."""
    answered: float | None = None
    """time.monotonic() just before the status line was sent (after any `delay`), or None
    if it was not sent. Taken before writing, so a client that waits for the answer
    and then sends another request always sees `answered` < the next request's `time`;
    [time, answered] overlapping between requests shows they were served at once."""


_NOT_FOUND = Route(body=b"not found\n", status=404, content_type="text/plain; charset=utf-8")


class FeedServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 at a free port; see the module docstring."""

    daemon_threads = True
    block_on_close = False  # server_close() joins handler threads itself, with a timeout

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        """Exceptions raised by handlers, other than a client going away."""
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._dirs: list[tuple[str, Path]] = []
        self._requests: list[RecordedRequest] = []
        self._connections: dict[socket.socket, threading.Thread] = {}
        self.connections = 0
        """Client connections accepted so far (keep-alive makes fewer than requests)."""
        super().__init__(("127.0.0.1", 0), _FeedHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        return self.server_port

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, **fields: Any) -> Route:
        """Add or replace the route for `path`; `fields` are Route's. Returns the route."""
        route = Route(**fields)
        self.set(path, route)
        return route

    def set(self, path: str, route: Route) -> None:
        """Add or replace the route for `path` ("/feed" or "/feed?page=2")."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        with self._lock:
            self._routes[path] = route

    def serve_dir(self, directory: Path, prefix: str = "/files/") -> None:
        """Serve the files under `directory` at `prefix`, with ETag (sha1 of the bytes)
        and Last-Modified (the mtime); files are read on each request."""
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"prefix must start and end with '/': {prefix!r}")
        with self._lock:
            self._dirs.append((prefix, Path(directory).resolve()))
            self._dirs.sort(key=lambda entry: len(entry[0]), reverse=True)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """Logged requests for `path`; without a query in `path`, any query matches."""
        return [
            request
            for request in self.requests
            if request.path == path or ("?" not in path and request.path.split("?")[0] == path)
        ]

    @property
    def open_connections(self) -> int:
        """Client connections a handler thread is still serving."""
        with self._lock:
            return len(self._connections)

    def shutdown(self) -> None:
        """Stop serve_forever(), wake sleeping handlers and close client connections."""
        self.stop_event.set()
        self._close_connections()
        super().shutdown()
        self._close_connections()  # any accepted while serve_forever was stopping

    def server_close(self) -> None:
        """Close the listening socket and wait, boundedly, for handler threads."""
        self.stop_event.set()
        super().server_close()
        self._close_connections()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        with self._lock:
            threads = list(self._connections.values())
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: object, client_address: object) -> None:
        # The default prints a traceback to stderr; keep the bugs, drop the hang-ups.
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, ConnectionError | TimeoutError):
            with self._lock:
                self.errors.append(error)

    def _close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client or the handler
                connection.shutdown(socket.SHUT_RDWR)

    def _register(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections[connection] = threading.current_thread()
            self.connections += 1

    def _unregister(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.pop(connection, None)

    def _record(self, handler: BaseHTTPRequestHandler) -> int:
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for name, value in handler.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = RecordedRequest(handler.command, handler.path, headers, time.monotonic())
        with self._lock:
            self._requests.append(request)
            return len(self._requests) - 1

    def _answered(self, index: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._requests[index] = replace(self._requests[index], answered=now)

    def _find_route(self, target: str) -> Route:
        path = target.split("?")[0]
        with self._lock:
            route = self._routes.get(target)
            if route is None:
                route = self._routes.get(path)
            dirs = list(self._dirs)
        if route is not None:
            return route
        for prefix, directory in dirs:
            if path.startswith(prefix):
                return _file_route(directory, path[len(prefix) :]) or _NOT_FOUND
        return _NOT_FOUND


class _FeedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "feed-server/1"
    # A socket read or write gives up after this; shutdown() closes sockets sooner.
    timeout = 10
    server: FeedServer

    def setup(self) -> None:
        super().setup()
        self.server._register(self.connection)

    def handle(self) -> None:
        if not self.server.stop_event.is_set():
            super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server._unregister(self.connection)

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read the request log, not stderr

    def _answer(self) -> None:
        self._log_index = self.server._record(self)
        try:
            self._send(self.server._find_route(self.path))
        except OSError:  # the client went away, or shutdown() closed the socket
            self.close_connection = True

    def _send(self, route: Route) -> None:
        stop = self.server.stop_event
        if route.delay > 0 and stop.wait(route.delay):
            self.close_connection = True
            return
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        headers["Server"] = self.version_string()
        headers["Date"] = self.date_time_string()
        if route.etag is not None:
            headers["ETag"] = route.etag
        if route.last_modified is not None:
            headers["Last-Modified"] = route.last_modified
        if route.location is not None:
            headers["Location"] = route.location

        if route.status == HTTPStatus.OK and _not_modified(route, self.headers):
            headers.update(route.headers)
            self._send_head(HTTPStatus.NOT_MODIFIED, headers)
            return

        payload = route.body
        if route.raw_body_override is not None:
            payload = route.raw_body_override
        elif route.gzip:
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(self.headers.get("Accept-Encoding", "")):
                payload = gzip.compress(payload, mtime=0)
                headers["Content-Encoding"] = "gzip"
        if not _has_body(route.status):
            payload = b""
        else:
            if route.content_type:
                headers["Content-Type"] = route.content_type
            if route.content_length:
                headers["Content-Length"] = str(len(payload))
        if not route.content_length:
            headers["Connection"] = "close"
        headers.update(route.headers)
        self._send_head(route.status, headers)
        if self.command != "HEAD":
            self._send_body(payload, route.drip)

    def _send_head(self, status: int, headers: CaseInsensitiveDict[str]) -> None:
        self.server._answered(self._log_index)
        self.send_response_only(status)
        for name, value in headers.items():
            self.send_header(name, value)  # "Connection: close" sets close_connection
        self.end_headers()

    def _send_body(self, payload: bytes, drip: float) -> None:
        if drip <= 0:
            self.wfile.write(payload)
            return
        for index in range(len(payload)):
            if index and self.server.stop_event.wait(drip):
                self.close_connection = True  # the body is cut short; the framing is broken
                return
            self.wfile.write(payload[index : index + 1])


def _has_body(status: int) -> bool:
    return not (100 <= status < 200 or status in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED))


def _not_modified(route: Route, request_headers: Message) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match, when sent, decides alone."""
    if_none_match = request_headers.get("If-None-Match")
    if if_none_match is not None:
        return route.etag is not None and _etag_matches(route.etag, if_none_match)
    if_modified_since = request_headers.get("If-Modified-Since")
    if if_modified_since is not None and route.last_modified is not None:
        return _not_modified_since(route.last_modified, if_modified_since)
    return False


def _etag_matches(etag: str, if_none_match: str) -> bool:
    # Weak comparison, as If-None-Match requires. ETags holding commas are not supported.
    if if_none_match.strip() == "*":
        return True
    return any(_opaque_tag(tag) == _opaque_tag(etag) for tag in if_none_match.split(","))


def _opaque_tag(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def _not_modified_since(last_modified: str, if_modified_since: str) -> bool:
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):  # unparsable, or naive against aware
        return last_modified == if_modified_since


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def _file_route(directory: Path, relative: str) -> Route | None:
    """A route for the file at `relative` (URL-encoded) under `directory`, or None."""
    try:
        path = (directory / unquote(relative)).resolve()
        if not path.is_relative_to(directory) or not path.is_file():
            return None
        data = path.read_bytes()
        mtime = path.stat().st_mtime
    except (OSError, ValueError):  # vanished, unreadable, or a NUL in the name
        return None
    content_type = _FEED_TYPES.get(path.suffix.lower())
    if content_type is None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Route(
        body=data,
        content_type=content_type,
        etag=f'"{hashlib.sha1(data).hexdigest()}"',
        last_modified=formatdate(mtime, usegmt=True),
    )


@contextmanager
def serving() -> Iterator[FeedServer]:
    """Run a FeedServer in a daemon thread; stop it on exit."""
    server = FeedServer()
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.01},  # shutdown() waits up to one poll interval
        name=f"feed-server-{server.port}",
        daemon=True,
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=_JOIN_TIMEOUT)
