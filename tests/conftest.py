"""Shared fixtures. The loopback HTTP server itself is in tests/feed_server.py."""

from collections.abc import Iterator

import pytest

from tests.feed_server import FeedServer, serving


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    """A FeedServer on 127.0.0.1 at a free port, stopped after the test.

    A handler that raised (a bug in the server, not a client hanging up) fails the test.
    """
    with serving() as server:
        yield server
    if server.errors:
        pytest.fail(f"feed_server handlers raised: {server.errors!r}")
