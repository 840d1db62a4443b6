"""Read-only HTTP over the published output directory.

Subscribers' feed readers poll these files, many of them and often, so every
response is cheap to revalidate (a strong ETag derived from the bytes, so a
re-publish that rewrites identical files changes nothing for them), compressed
when the reader allows it, and labelled with the exact feed media type and
charset. Paths come from strangers: a request can only ever name a regular file
whose real path is inside the output directory.

    request -> method check -> decode + clean path -> realpath inside root?
            -> directory? (301 to slash form, or its index.html)
            -> open once, fstat -> ETag (cached) -> 304? -> body (gzip?) or stream
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import mimetypes
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar
from urllib.parse import quote
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import waitress
from waitress.server import BaseWSGIServer, MultiSocketServer

from aggregator.errors import AggregatorError

log = logging.getLogger("aggregator.serve")

# Files above this are streamed from the open file instead of read into memory:
# 16 worker threads each holding a whole large file would add up. Feeds are far
# smaller, so everything they need (gzip, sniffing from memory) stays on the fast path.
STREAM_OVER = 8 * 1024 * 1024
# Below this gzip's header and trailer eat most of the saving.
GZIP_MIN_SIZE = 256
GZIP_CACHE_BYTES = 64 * 1024 * 1024
FILE_INFO_CACHE_ENTRIES = 10_000
STREAM_BLOCK = 64 * 1024
SNIFF_BYTES = 512

_FEED_MAX_AGE = "public, max-age=300"
_HTML_MAX_AGE = "public, max-age=60"

_ATOM = "application/atom+xml; charset=utf-8"
_RSS = "application/rss+xml; charset=utf-8"
_XML = "application/xml; charset=utf-8"
_JSON_FEED = "application/feed+json; charset=utf-8"
_TYPES_BY_SUFFIX = {
    ".json": "application/json; charset=utf-8",
    ".opml": "text/x-opml; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_HTML_SUFFIXES = frozenset({".html", ".htm"})

# Our own table, not the global one: the global one reads /etc/mime.types, and the
# types we answer with should not depend on which machine the server runs on.
_MIME_TYPES = mimetypes.MimeTypes()

# O_NOFOLLOW: the path was resolved with realpath just before, so a symlink here
# means the tree changed in between; refuse rather than follow it out.
# O_NONBLOCK: opening a FIFO someone left in the directory must not hang a worker.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))

_XML_NAME = re.compile(rb"[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?")
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LRUCache(Generic[K, V]):
    """A thread-safe LRU cache bounded by the total weight of its values."""

    def __init__(self, max_weight: int, weigh: Callable[[V], int]) -> None:
        self._max_weight = max_weight
        self._weigh = weigh
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value)
        if weight > self._max_weight:
            return  # would evict everything else and then itself
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._items[key] = (value, weight)
            self._weight += weight
            while self._weight > self._max_weight:
                _, (_, evicted) = self._items.popitem(last=False)
                self._weight -= evicted


@dataclass(frozen=True)
class _FileInfo:
    """What we derive from a file's bytes, cached by its identity on disk."""

    digest: str
    content_type: str


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    file: BinaryIO | None = None  # streamed instead of body when set
    content_length: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.content_length = len(self.body)


class _FileIterator:
    """Streams an open file when the server offers no wsgi.file_wrapper."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def __iter__(self) -> Iterator[bytes]:
        while block := self._file.read(STREAM_BLOCK):
            yield block

    def close(self) -> None:
        self._file.close()


# (status, content type, body) for a path the operator's routes answer (/metrics,
# /healthz: see monitor.py), else None.
Routes = Callable[[str], "tuple[int, str, bytes] | None"]


def make_app(output_dir: Path, routes: Routes | None = None) -> WSGIApplication:
    """A WSGI application serving the files under ``output_dir``, read-only."""
    return _OutputApp(Path(output_dir), routes)


class _OutputApp:
    def __init__(self, output_dir: Path, routes: Routes | None = None) -> None:
        self._output_dir = output_dir
        self._routes = routes
        self._info_cache: _LRUCache[tuple[str, int, int, int], _FileInfo] = _LRUCache(
            FILE_INFO_CACHE_ENTRIES, lambda _: 1)
        self._gzip_cache: _LRUCache[str, bytes] = _LRUCache(GZIP_CACHE_BYTES, len)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        routed = (self._routes(environ.get("PATH_INFO", ""))
                  if self._routes is not None and method in ("GET", "HEAD") else None)
        if routed is not None:
            response = _Response(routed[0], [
                ("Content-Type", routed[1]), ("Content-Length", str(len(routed[2]))),
                ("Cache-Control", "no-store")], routed[2])
        elif method in ("GET", "HEAD"):
            response = self._respond(environ)
        else:
            response = _text_response(HTTPStatus.METHOD_NOT_ALLOWED,
                                      [("Allow", "GET, HEAD")])
        log.debug('%s "%s %s" %d %d', environ.get("REMOTE_ADDR", "-"), method,
                  _printable(environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")),
                  response.status, response.content_length)
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}",
                       response.headers)
        if response.file is not None:
            if method == "HEAD":
                response.file.close()
                return []
            file_wrapper = environ.get("wsgi.file_wrapper")
            if file_wrapper is not None:
                return file_wrapper(response.file, STREAM_BLOCK)
            return _FileIterator(response.file)
        return [] if method == "HEAD" else [response.body]

    def _respond(self, environ: WSGIEnvironment) -> _Response:
        path = _decode_path(environ.get("PATH_INFO", ""))
        parts = _clean_parts(path) if path is not None else None
        if path is None or parts is None:
            return _not_found()
        # Resolved per request: publishing may swap the directory (or a symlink to it).
        root = os.path.realpath(self._output_dir)
        target = _inside(root, os.path.join(root, *parts))
        if target is None:
            return _not_found()
        try:
            mode = os.stat(target).st_mode
        except OSError:
            return _not_found()
        if stat.S_ISDIR(mode):
            if not path.endswith("/"):
                return _redirect_to_directory(environ, parts)
            target = _inside(root, os.path.join(target, "index.html"))
            if target is None:
                return _not_found()
        elif path.endswith("/"):
            return _not_found()
        return self._serve_file(target, environ)

    def _serve_file(self, target: str, environ: WSGIEnvironment) -> _Response:
        try:
            # One open file for the whole response: a publish that replaces the
            # file by rename meanwhile leaves us reading the old, complete one.
            file = open(target, "rb", opener=lambda p, _: os.open(p, _OPEN_FLAGS))  # noqa: SIM115
        except OSError:
            return _not_found()
        handed_off = False
        try:
            st = os.fstat(file.fileno())
            if not stat.S_ISREG(st.st_mode):
                return _not_found()
            response, handed_off = self._file_response(target, file, st, environ)
            return response
        except OSError as e:
            log.warning("cannot read %s: %s", target, e)
            return _text_response(HTTPStatus.INTERNAL_SERVER_ERROR)
        finally:
            if not handed_off:
                file.close()

    def _file_response(self, target: str, file: BinaryIO, st: os.stat_result,
                       environ: WSGIEnvironment) -> tuple[_Response, bool]:
        """The response for an open regular file, and whether it now owns the file."""
        name = os.path.basename(target)
        streamed = st.st_size > STREAM_OVER
        key = (target, st.st_mtime_ns, st.st_size, st.st_ino)
        data: bytes | None = None
        info = self._info_cache.get(key)
        if info is None:
            if streamed:
                digest = _hash_stream(file)
                head = os.pread(file.fileno(), SNIFF_BYTES, 0)
            else:
                data = file.read()
                digest = hashlib.blake2b(data, digest_size=16).hexdigest()
                head = data[:SNIFF_BYTES]
            info = _FileInfo(digest, _content_type(name, head))
            # A short or long read means someone is rewriting the file in place;
            # what we hashed is then not what the key describes.
            if data is None or len(data) == st.st_size:
                self._info_cache.put(key, info)

        negotiable = (not streamed and st.st_size > GZIP_MIN_SIZE
                      and _is_textual(info.content_type))
        use_gzip = negotiable and _accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))
        # The gzip bytes are a different representation, so they need their own
        # strong tag; caches would otherwise mix the two up.
        etag = f'"{info.digest}-gz"' if use_gzip else f'"{info.digest}"'
        mtime = st.st_mtime_ns // 1_000_000_000
        headers = [
            ("ETag", etag),
            ("Last-Modified", formatdate(mtime, usegmt=True)),
            ("Cache-Control", _cache_control(name)),
            ("X-Content-Type-Options", "nosniff"),
        ]
        if negotiable:
            headers.append(("Vary", "Accept-Encoding"))
        if _not_modified(environ, etag, mtime):
            return _Response(HTTPStatus.NOT_MODIFIED, headers), False

        headers.append(("Content-Type", info.content_type))
        if streamed:
            file.seek(0)
            headers.append(("Content-Length", str(st.st_size)))
            response = _Response(HTTPStatus.OK, headers, file=file)
            response.content_length = st.st_size
            return response, True
        if data is None:
            data = file.read()
        if use_gzip:
            data = self._compressed(info.digest, data)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(data))))
        return _Response(HTTPStatus.OK, headers, data), False

    def _compressed(self, digest: str, data: bytes) -> bytes:
        # Keyed by content digest, so identical bytes re-published under a new
        # mtime (or at another path) reuse the work.
        compressed = self._gzip_cache.get(digest)
        if compressed is None:
            # mtime=0 keeps the output a function of the input, as a strong ETag promises.
            compressed = gzip.compress(data, compresslevel=6, mtime=0)
            self._gzip_cache.put(digest, compressed)
        return compressed


def _decode_path(path_info: str) -> str | None:
    """The request path as text, or None when it is not UTF-8 or holds a NUL.

    PEP 3333 servers hand PATH_INFO over already percent-decoded, as latin-1
    text of the raw bytes; decoding it again would let %252e%252e become '..'.
    """
    try:
        path = path_info.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None
    return None if "\x00" in path else path


def _clean_parts(path: str) -> list[str] | None:
    """Path components without '' and '.', or None if any could climb or alias."""
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        # A backslash is a separator on Windows and never in a name we publish.
        if part == ".." or "\\" in part:
            return None
        parts.append(part)
    return parts


def _inside(root: str, path: str) -> str | None:
    """The real path of ``path`` if it lies within ``root`` (a real path), else None."""
    real = os.path.realpath(path)
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        return real
    return None


def _redirect_to_directory(environ: WSGIEnvironment, parts: list[str]) -> _Response:
    # Built from the cleaned parts, never the raw path, so '//evil.example' cannot
    # turn into a protocol-relative Location.
    script = environ.get("SCRIPT_NAME", "").encode("latin-1")
    location = quote(script) + "".join("/" + quote(p, safe="") for p in parts) + "/"
    if query := environ.get("QUERY_STRING"):
        location += "?" + query
    return _text_response(HTTPStatus.MOVED_PERMANENTLY, [("Location", location)])


def _content_type(name: str, head: bytes) -> str:
    lower = name.lower()
    suffix = os.path.splitext(lower)[1]
    if lower == "atom.xml":
        return _ATOM
    if suffix == ".xml":
        return _sniff_xml(head)
    if lower == "feed.json":
        return _JSON_FEED
    if suffix in _TYPES_BY_SUFFIX:
        return _TYPES_BY_SUFFIX[suffix]
    guessed, _ = _MIME_TYPES.guess_type(lower, strict=False)
    if guessed is None:
        return "application/octet-stream"
    return guessed + "; charset=utf-8" if guessed.startswith("text/") else guessed


def _sniff_xml(head: bytes) -> str:
    """Atom, RSS or plain XML, from the name of the root element."""
    text = head.removeprefix(b"\xef\xbb\xbf")
    pos = 0
    while (start := text.find(b"<", pos)) != -1:
        if text.startswith(b"<?", start):
            end, skip = text.find(b"?>", start), 2
        elif text.startswith(b"<!--", start):
            end, skip = text.find(b"-->", start), 3
        elif text.startswith(b"<!", start):
            end, skip = text.find(b">", start), 1
        else:
            match = _XML_NAME.match(text, start + 1)
            if match is None:
                break
            local = match.group().rpartition(b":")[2]
            if local == b"feed":
                return _ATOM
            if local in (b"rss", b"RDF"):
                return _RSS
            break
        if end == -1:
            break
        pos = end + skip
    return _XML


def _is_textual(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip()
    kind, _, subtype = media.partition("/")
    return (kind == "text" or subtype in ("xml", "json", "javascript")
            or subtype.endswith(("+xml", "+json")))


def _cache_control(name: str) -> str:
    # HTML is what people look at, so it goes stale sooner; feeds (and the rest)
    # are polled by machines that revalidate cheaply anyway.
    if os.path.splitext(name.lower())[1] in _HTML_SUFFIXES:
        return _HTML_MAX_AGE
    return _FEED_MAX_AGE


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether Accept-Encoding gives gzip (by name or by '*') a q-value above 0."""
    named: float | None = None
    wildcard: float | None = None
    for element in accept_encoding.split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also catches nan
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            wildcard = q
    if named is not None:
        return named > 0
    return wildcard is not None and wildcard > 0


def _not_modified(environ: WSGIEnvironment, etag: str, mtime: int) -> bool:
    """RFC 9110 §13.2.2: If-None-Match when present, else If-Modified-Since."""
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        # Weak comparison, as the RFC asks for If-None-Match.
        return etag.strip('"') in _ENTITY_TAG.findall(if_none_match)
    if_modified_since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False  # an invalid date is ignored, per the RFC
        if since.tzinfo is None:  # '-0000' parses naive; HTTP dates are UTC
            since = since.replace(tzinfo=UTC)
        return since.timestamp() >= mtime
    return False


def _hash_stream(file: BinaryIO) -> str:
    digest = hashlib.blake2b(digest_size=16)
    while block := file.read(STREAM_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def _text_response(status: HTTPStatus,
                   extra: list[tuple[str, str]] | None = None) -> _Response:
    body = f"{status.value} {status.phrase}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Content-Type-Options", "nosniff"),
        *(extra or []),
    ]
    return _Response(status, headers, body)


def _not_found() -> _Response:
    return _text_response(HTTPStatus.NOT_FOUND)


def _printable(uri: str) -> str:
    # The raw request line is attacker-controlled; keep it to one log line.
    return "".join(c if c.isprintable() and c != '"' else f"\\x{ord(c):02x}" for c in uri)


def make_server(output_dir: Path, host: str = "127.0.0.1", port: int = 8000,
                threads: int = 16, routes: Routes | None = None,
                ) -> BaseWSGIServer | MultiSocketServer:
    """A listening waitress server for ``output_dir``; call ``.run()``, later ``.close()``."""
    try:
        return waitress.create_server(
            make_app(output_dir, routes), host=host, port=port, threads=threads,
            connection_limit=1000, channel_timeout=60, ident="aggregator",
            # poll() rather than select(): select cannot watch descriptors above
            # 1024, which 1000 connections reach, and it fails outright if
            # .close() from another thread races with it.
            asyncore_use_poll=True,
        )
    except (OSError, OverflowError, ValueError) as e:
        raise AggregatorError(f"cannot listen on {host}:{port}: {e}") from e


def stop_server(server: BaseWSGIServer | MultiSocketServer) -> None:
    """Stop, from any thread, a server whose ``.run()`` is running in another one.

    Plain ``.close()`` from outside leaves the loop asleep until its next wake-up
    (up to a second); handing the close to the loop thread through its trigger makes
    ``.run()`` return as soon as open connections end. Requests already being
    answered are finished first (waitress waits up to 5 s for its workers).
    """
    if isinstance(server, MultiSocketServer):
        server.close()
        return
    server.trigger.pull_trigger(server.close)
    server.task_dispatcher.shutdown()


def run_server(output_dir: Path, host: str = "127.0.0.1", port: int = 8000, *,
               threads: int = 16, ready: Callable[[str, int], None] | None = None,
               routes: Routes | None = None) -> None:
    """Serve ``output_dir`` until interrupted; ``ready`` gets the bound host and port."""
    server = make_server(output_dir, host, port, threads=threads, routes=routes)
    try:
        if ready is not None:
            ready(*_listening_address(server))
        server.run()  # returns on KeyboardInterrupt / SystemExit
    finally:
        server.close()


def _listening_address(server: BaseWSGIServer | MultiSocketServer) -> tuple[str, int]:
    if isinstance(server, MultiSocketServer):
        # A name like 'localhost' can bind several addresses; report the first.
        bound_host, bound_port = server.effective_listen[0]
    else:
        bound_host, bound_port = server.effective_host, server.effective_port
    return str(bound_host), int(bound_port)
