"""The exception tree. Every error the aggregator raises on purpose is an AggregatorError.

Third-party exceptions are wrapped at the edge (``raise FetchError(...) from e``) so
callers only ever catch our types, and every message names the thing it is about.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path


class AggregatorError(Exception):
    """Root of every error the aggregator raises on purpose."""


class ConfigError(AggregatorError, ValueError):
    """feeds.yaml is unreadable or invalid; carries file, line and key path."""

    def __init__(self, message: str, *, file: str | Path | None = None,
                 line: int | None = None, key: str | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.detail = message
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line else "") + ": "
        if key:
            where += f"{key}: "
        super().__init__(where + message)


class SourceError(AggregatorError):
    """Something went wrong with one source; the poll of the others goes on."""

    def __init__(self, message: str, *, source_id: str, url: str) -> None:
        self.source_id = source_id
        self.url = url
        self.detail = message
        super().__init__(f"{source_id}: {message} ({url})")


class FetchError(SourceError):
    """The source could not be retrieved.

    ``retry_after`` (how long the server asked us to wait) is set for 429/503
    answers, ``gone`` for 410, ``status`` for any HTTP status that was not a success.
    """

    def __init__(self, message: str, *, source_id: str, url: str,
                 status: int | None = None, retry_after: timedelta | None = None,
                 gone: bool = False) -> None:
        self.status = status
        self.retry_after = retry_after
        self.gone = gone
        super().__init__(message, source_id=source_id, url=url)


class ParseError(SourceError):
    """The bytes were retrieved but are not a feed we can read."""


class StoreError(AggregatorError):
    """A store file could not be read or written."""

    def __init__(self, message: str, *, path: str | Path) -> None:
        self.path = str(path)
        self.detail = message
        super().__init__(f"{path}: {message}")


class PublishError(AggregatorError):
    """An output feed could not be built or written."""

    def __init__(self, message: str, *, feed: str) -> None:
        self.feed = feed
        self.detail = message
        super().__init__(f"{feed}: {message}")


class LockedError(AggregatorError):
    """Another aggregator process holds the store's lock."""
