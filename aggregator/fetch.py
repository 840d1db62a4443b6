"""Retrieve a source's bytes politely: requests for http(s), the filesystem for file:.

Polite means: conditional GET (ETag, Last-Modified), a User-Agent naming us, gzip,
a deadline for the whole fetch (a server dripping a byte a second cannot hold a
worker forever), the max_bytes cap counted on the *decoded* body (a gzip bomb
stops at the cap), at most 5 redirects, at most 2 requests at once to one host.
The answer is a FetchResult; 304 is a result, not an error.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import socket
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from urllib3 import BaseHTTPResponse, Timeout
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from aggregator import __version__
from aggregator.errors import FetchError
from aggregator.model import FetchResult, HttpState, Source

USER_AGENT = f"aggregator/{__version__} (self-hosted feed aggregator; python-requests)"
ACCEPT = ("application/atom+xml, application/rss+xml, application/feed+json;q=0.95, "
          "application/rdf+xml;q=0.9, application/xml;q=0.9, text/xml;q=0.8, "
          "application/json;q=0.7, */*;q=0.5")
MAX_REDIRECTS = 5
MAX_RETRY_AFTER_SECONDS = 7 * 86400  # the longest Retry-After we honour
PER_HOST = 2
CHUNK = 64 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.I)


# -- the whole-fetch deadline --------------------------------------------------------------
# A socket timeout bounds each read, not the request: a server sending its status line
# and headers a byte at a time would hold a worker forever. Every connection a fetch
# takes from the pool is noted (per thread); a timer shuts its socket down when the
# fetch's time is up, and the blocked read fails at once.
_fetch_local = threading.local()


def _note_connection(conn: object) -> None:
    noted = getattr(_fetch_local, "connections", None)
    if noted is not None:
        noted.append(conn)


class _WatchedHTTPPool(HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None):  # noqa: ANN202
        conn = super()._get_conn(timeout)
        _note_connection(conn)
        return conn


class _WatchedHTTPSPool(HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None):  # noqa: ANN202
        conn = super()._get_conn(timeout)
        _note_connection(conn)
        return conn


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool,
                                                   "https": _WatchedHTTPSPool}


class _Deadlines:
    """One thread that fires every watchdog whose time is up (a timer thread per fetch
    cost a thread start, and a wait for it, on every request)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watchdog]] = []
        self._wake = threading.Condition()
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watchdog: _Watchdog) -> None:
        with self._wake:
            heapq.heappush(self._heap, (watchdog.deadline, next(self._count), watchdog))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watchdog:
                self._wake.notify()  # earlier than what the thread sleeps towards

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _deadline, _n, watchdog = heapq.heappop(self._heap)
            watchdog.fire()


_deadlines = _Deadlines()


class _Watchdog:
    """Shuts down the fetch's sockets after ``seconds``; ``fired`` says it did."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._connections: list[object] = []

    def __enter__(self) -> _Watchdog:
        _fetch_local.connections = self._connections
        _deadlines.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:  # a connection back in the pool may now serve another fetch
            self._done = True
            self._connections.clear()  # the deadline thread holds this until its time
        _fetch_local.connections = None

    def fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            self._shut_down()

    def _shut_down(self) -> None:
        for conn in list(self._connections):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _environment_matters() -> bool:
    """Whether requests' trust_env would change anything: proxy variables or a ~/.netrc."""
    if any(urllib.request.getproxies_environment().values()):
        return True
    netrc = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) or os.path.exists(os.path.expanduser("~/_netrc"))


def _ca_bundle() -> str | None:
    """The CA bundle requests takes from the environment when it trusts it."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


class Fetcher:
    """Thread-safe fetcher: one requests.Session per thread, a semaphore per host."""

    def __init__(self, *, per_host: int = PER_HOST, stop: threading.Event | None = None) -> None:
        self.per_host = per_host
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()

    def fetch(self, source: Source, state: HttpState) -> FetchResult:
        url = state.permanent_url or source.url
        if url.startswith("file:"):
            return fetch_file(source, url, state)
        return self._fetch_http(source, url, state)

    # -- http -------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.max_redirects = MAX_REDIRECTS
            session.headers.update({"User-Agent": USER_AGENT, "Accept": ACCEPT,
                                    "Accept-Encoding": "gzip, deflate"})
            adapter = _WatchedAdapter(pool_connections=4, pool_maxsize=self.per_host,
                                      max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if not _environment_matters():
                # requests reads the proxy variables of the whole environment on every
                # request (0.4 ms, a third of a 304's cost); with none set, skip that.
                session.trust_env = False
                session.verify = _ca_bundle() or True
            self._local.session = session
        return session

    def _get(self, url: str, headers: dict[str, str],
             timeout: tuple[float, float]) -> requests.Response | _DirectResponse:
        session = self._session()
        if session.trust_env:
            return session.get(url, headers=headers, stream=True, timeout=timeout)
        if not session.cookies and _DIRECT_URL.fullmatch(url):
            return self._get_direct(session, url, headers, timeout)
        # Session.request, less the merging a session with no environment, auth or
        # proxies does not need (it was a third of the cost of a 304): the same headers,
        # cookies, hooks and redirect handling.
        return session.send(_prepare(session, url, headers), stream=True, timeout=timeout,
                            allow_redirects=True, verify=session.verify, cert=None, proxies={})

    def _get_direct(self, session: requests.Session, url: str, headers: dict[str, str],
                    timeout: tuple[float, float]) -> requests.Response | _DirectResponse:
        """The request Session.send would make, sent by urllib3 itself: a 304 or 200 from
        a URL requests would send as it is, with no cookie to send, is most of a poll, and
        preparing the request and wrapping the answer were half of a 304's cost. Anything
        else (a redirect, a cookie) goes on as Session.send would go on: requests builds
        the response from the same urllib3 answer and follows the redirects."""
        adapter = session.get_adapter(url)
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        pool = self._pool(adapter, session, f"{scheme}://{host}/")
        try:
            raw = pool.urlopen("GET", slash + path, headers={**session.headers, **headers},
                               redirect=False, assert_same_host=False, preload_content=False,
                               decode_content=False, retries=adapter.max_retries,
                               timeout=Timeout(connect=timeout[0], read=timeout[1]),
                               chunked=False)
        except Exception as e:
            mapped = _as_requests_error(e)
            if mapped is None:
                raise
            raise mapped from e
        if raw.status not in _REDIRECTS and "set-cookie" not in raw.headers:
            return _DirectResponse(raw, url)
        request = _prepare(session, url, headers)
        response = adapter.build_response(request, raw)
        extract_cookies_to_jar(session.cookies, request, raw)
        history = list(session.resolve_redirects(response, request, stream=True, timeout=timeout,
                                                 verify=session.verify, cert=None, proxies={}))
        if history:
            history.insert(0, response)
            response = history.pop()
            response.history = history
        return response

    def _pool(self, adapter: HTTPAdapter, session: requests.Session,
              origin: str) -> HTTPConnectionPool:
        """The connection pool requests would pick for origin (with its TLS settings),
        kept per thread while it is open: the adapter closes a pool it lets go of."""
        pools = self._local.__dict__.setdefault("pools", {})
        pool = pools.get(origin)
        if pool is None or pool.pool is None:
            request = requests.Request("GET", origin).prepare()
            pool = pools[origin] = adapter.get_connection_with_tls_context(
                request, session.verify, proxies={}, cert=None)
        return pool

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        """One of the host's PER_HOST slots, to hold while fetching from it."""
        host = _host(url)
        slot = self._hosts.get(host)
        if slot is None:
            with self._hosts_lock:
                slot = self._hosts.setdefault(host, threading.BoundedSemaphore(self.per_host))
        return slot

    def _fetch_http(self, source: Source, url: str, state: HttpState) -> FetchResult:
        headers = {}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        read_timeout = source.timeout  # the deadline below bounds the whole fetch

        def fail(message: str, **kw: object) -> FetchError:
            return FetchError(message, source_id=source.id, url=url, **kw)  # type: ignore[arg-type]

        with self._host_slot(url):
            # The deadline starts once the request may go: waiting for one of the host's
            # two slots is our queue, not the server's slowness.
            deadline = time.monotonic() + source.timeout
            watchdog = _Watchdog(source.timeout)
            try:
                with watchdog:
                    response = self._get(url, headers,
                                         (min(source.timeout, 10.0), read_timeout))
                    with response:
                        return self._read_response(source, url, response, deadline, fail)
            except FetchError:
                raise
            except Exception as e:
                if watchdog.fired:  # our deadline cut the connection, whatever broke next
                    raise fail(f"timed out after {source.timeout:g}s") from e
                # Mapped here, not by except clauses after this one: those never ran, and
                # every refused connection or redirect loop became an "internal error".
                error = _request_error(e, source, fail)
                if error is None:
                    raise
                raise error from e

    def _read_response(self, source: Source, url: str,
                       response: requests.Response | _DirectResponse,
                       deadline: float, fail) -> FetchResult:  # noqa: ANN001
        status = response.status_code
        final_url = response.url or url
        permanent = _permanent_target(response, url)
        lower = {k.lower(): v for k, v in response.headers.items()}
        if status == 304:
            # No body: read it (nothing), so closing the response gives the connection back
            # to the pool instead of closing it (a new connection per 304 otherwise).
            _ = response.content
            return FetchResult(status="not_modified", url=final_url, headers=lower,
                               http_status=304, etag=lower.get("etag"),
                               last_modified=lower.get("last-modified"),
                               permanent_url=permanent, max_age=_max_age(lower))
        if status == 410:
            raise fail("gone (HTTP 410): the source is disabled until its URL changes",
                       status=410, gone=True)
        if status in (429, 503):
            wait = retry_after(lower.get("retry-after"), datetime.now(UTC))
            hint = f", retry after {int(wait.total_seconds())}s" if wait else ""
            raise fail(f"HTTP {status} {response.reason or ''}".rstrip() + hint, status=status,
                       retry_after=wait)
        if status >= 400 or status < 200:
            raise fail(f"HTTP {status} {response.reason or ''}".rstrip(), status=status)
        if status == 204 or status >= 300:  # a 3xx here is a redirect without a Location
            raise fail(f"HTTP {status}: no feed in the answer", status=status)
        length = lower.get("content-length", "")
        if length.isdigit() and int(length) > source.max_bytes and "content-encoding" not in lower:
            raise fail(f"too large: {int(length)} bytes, max_bytes is {source.max_bytes}")
        chunks: list[bytes] = []
        total = 0
        try:
            while True:
                if self.stop.is_set():
                    raise fail("interrupted: shutting down")
                if time.monotonic() > deadline:
                    raise fail(f"timed out after {source.timeout:g}s (body still arriving)")
                chunk = response.raw.read1(CHUNK, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > source.max_bytes:
                    raise fail(f"too large: more than max_bytes ({source.max_bytes} bytes)")
                chunks.append(chunk)
        except FetchError:
            raise
        except Exception as e:
            if time.monotonic() > deadline:  # the watchdog broke the read: that is the timeout
                raise fail(f"timed out after {source.timeout:g}s (body still arriving)") from e
            if isinstance(e, requests.RequestException | OSError | ValueError):
                raise fail(f"connection broke while reading: {_reason(e)}") from e
            # urllib3 raises its own types (DecodeError, ProtocolError...)
            if "timed out" in str(e).lower():
                raise fail(f"timed out after {source.timeout:g}s") from e
            raise fail(f"bad response body: {_reason(e)}") from e
        response.raw.release_conn()  # read to its end: the connection can be used again
        return FetchResult(
            status="ok", url=final_url, body=b"".join(chunks), headers=lower, http_status=status,
            etag=lower.get("etag"), last_modified=lower.get("last-modified"),
            permanent_url=permanent, max_age=_max_age(lower),
        )


def fetch_file(source: Source, url: str, state: HttpState) -> FetchResult:
    """A local feed; its (mtime, size) plays the part of Last-Modified."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file: URL with a host ({parts.netloc}) is not supported",
                         source_id=source.id, url=url)
    path = Path(url2pathname(unquote(parts.path)))
    try:
        stat = path.stat()
        stamp = f"file:{stat.st_mtime_ns}:{stat.st_size}"
        if state.last_modified == stamp:
            return FetchResult(status="not_modified", url=url, last_modified=stamp)
        if stat.st_size > source.max_bytes:
            raise FetchError(f"too large: {stat.st_size} bytes, max_bytes is {source.max_bytes}",
                             source_id=source.id, url=url)
        with path.open("rb") as f:
            body = f.read(source.max_bytes + 1)
    except FileNotFoundError as e:
        raise FetchError("no such file", source_id=source.id, url=url) from e
    except IsADirectoryError as e:
        raise FetchError("is a directory, not a feed file", source_id=source.id, url=url) from e
    except OSError as e:
        raise FetchError(f"cannot read: {e.strerror or e}", source_id=source.id, url=url) from e
    if len(body) > source.max_bytes:
        raise FetchError(f"too large: more than max_bytes ({source.max_bytes} bytes)",
                         source_id=source.id, url=url)
    return FetchResult(status="ok", url=url, body=body, last_modified=stamp)


def _request_error(e: Exception, source: Source, fail) -> FetchError | None:  # noqa: ANN001
    """What a failed request means for the user, or None for an exception we do not know."""
    if isinstance(e, requests.TooManyRedirects):
        return fail(f"too many redirects (more than {MAX_REDIRECTS})")
    if isinstance(e, requests.exceptions.InvalidSchema):
        return fail(f"redirected to a URL that is not http(s): {_target(e)}")
    if isinstance(e, requests.exceptions.MissingSchema | requests.exceptions.InvalidURL):
        return fail(f"invalid URL: {e}")
    if isinstance(e, requests.exceptions.SSLError):
        return fail(f"TLS error: {_reason(e)}")
    if isinstance(e, requests.Timeout):
        return fail(f"timed out after {source.timeout:g}s")
    if isinstance(e, requests.ConnectionError):
        return fail(f"cannot connect: {_reason(e)}")
    if isinstance(e, requests.RequestException):
        return fail(f"request failed: {_reason(e)}")
    if isinstance(e, ValueError | UnicodeError):
        # requests lets a malformed Location through ("http://[::1", raw non-UTF-8
        # bytes); it fails while following it, outside its own exception tree.
        return fail(f"invalid redirect: {_reason(e)}")
    return None


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Retry-After as seconds or an HTTP date -> how long to wait (None if absent/bad)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        # Capped: a huge number would overflow timedelta, and a server cannot ask for ever.
        return timedelta(seconds=min(int(value), MAX_RETRY_AFTER_SECONDS))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(when - now, timedelta(0)), timedelta(seconds=MAX_RETRY_AFTER_SECONDS))


def _max_age(headers: dict[str, str]) -> timedelta | None:
    control = headers.get("cache-control", "")
    if "no-cache" in control.lower() or "no-store" in control.lower():
        return None
    match = _MAX_AGE.search(control)
    if not match:
        return None
    return timedelta(seconds=min(int(match.group(1)), 86400))


@lru_cache(maxsize=4096)  # a source's URL, asked for at every poll
def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _prepare(session: requests.Session, url: str,
             headers: dict[str, str]) -> requests.PreparedRequest:
    request = requests.PreparedRequest()
    request.prepare(method="GET", url=url, headers={**session.headers, **headers},
                    cookies=session.cookies, hooks=session.hooks)
    return request


# A URL requests sends exactly as given (its preparing changes nothing: a lower-case
# host, a path, only characters it never quotes or unquotes): such a request can be sent
# without it. Anything else (IDNA, %-escapes, a fragment, IPv6) goes through requests.
_DIRECT_URL = re.compile(r"https?://[a-z0-9.-]+(?::[0-9]{1,5})?/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _DirectResponse:
    """The parts of a requests.Response that _read_response uses, over a urllib3 answer."""

    history: list[requests.Response] = []  # no redirect: those go through requests

    def __init__(self, raw: BaseHTTPResponse, url: str) -> None:
        self.raw = raw
        self.url = url
        self.status_code = raw.status
        self.reason = raw.reason
        # Repeated headers joined with ", ", as requests' CaseInsensitiveDict has them.
        self.headers = dict(raw.headers.itermerged())
        self._consumed = False

    @property
    def content(self) -> bytes:
        self._consumed = True
        return self.raw.read(decode_content=True)

    def __enter__(self) -> _DirectResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        # As requests.Response.close(): a body read to its end leaves the connection open,
        # and it goes back to the pool (keep-alive).
        if not self._consumed:
            self.raw.close()
        self.raw.release_conn()


def _as_requests_error(e: Exception) -> Exception | None:
    """The requests exception HTTPAdapter.send raises for what urllib3 raised (the same
    order of tests), so that a direct request fails with the same message."""
    from urllib3 import exceptions as u

    if isinstance(e, u.ProtocolError | OSError):
        return requests.ConnectionError(e)
    if isinstance(e, u.MaxRetryError):
        if isinstance(e.reason, u.ConnectTimeoutError) and not isinstance(
                e.reason, u.NewConnectionError):
            return requests.ConnectTimeout(e)
        if isinstance(e.reason, u.ResponseError):
            return requests.exceptions.RetryError(e)
        if isinstance(e.reason, u.ProxyError):
            return requests.exceptions.ProxyError(e)
        if isinstance(e.reason, u.SSLError):
            return requests.exceptions.SSLError(e)
        return requests.ConnectionError(e)
    if isinstance(e, u.ClosedPoolError):
        return requests.ConnectionError(e)
    if isinstance(e, u.ProxyError):
        return requests.exceptions.ProxyError(e)
    if isinstance(e, u.SSLError):
        return requests.exceptions.SSLError(e)
    if isinstance(e, u.ReadTimeoutError):
        return requests.ReadTimeout(e)
    if isinstance(e, u.InvalidHeader):
        return requests.exceptions.InvalidHeader(e)
    return None


def _permanent_target(response: requests.Response | _DirectResponse, url: str) -> str | None:
    """Where a chain of *permanent* redirects (301/308) from url leads, if it starts with one."""
    target = None
    for i, hop in enumerate(response.history):
        if hop.status_code not in (301, 308):
            break
        nxt = response.history[i + 1].url if i + 1 < len(response.history) else response.url
        target = nxt
    return target if target and target != url else None


def _target(e: Exception) -> str:
    match = re.search(r"for '?([^'\s]+)", str(e))
    return match.group(1) if match else str(e)


def _reason(e: BaseException) -> str:
    text = str(e)
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"Failed to establish a new connection: (.+?)'\)",
                    r"Caused by (\w+\(.*?\))"):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip().rstrip(")'\"")
    return " ".join(text.split())[:200] or type(e).__name__

