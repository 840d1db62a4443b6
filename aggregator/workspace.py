"""An opened store: config, store files, index, write lock and write journal.

Apart from pipeline (fetching, parsing, storing) so that commands which only read
and publish the store do not load the HTTP client and the feed parsers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path

from aggregator.errors import StoreError
from aggregator.index import Index
from aggregator.lock import WriteLock
from aggregator.model import Config
from aggregator.store import Store, os_error_reason

log = logging.getLogger("aggregator")


class Workspace:
    """A config with its store, index and write lock opened; close() when done."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.store_dir, config.site.timezone)
        self.index = Index(self.store.meta_dir / "index.sqlite")
        self.write_lock = WriteLock(self.store.meta_dir / "write.lock")
        self.journal = Journal(self.store.meta_dir / "pending")
        if self.index.needs_reindex:
            log.warning("the index was written by an older version; rebuilding it from the files")
            _reindex(self)
        elif self.index.created and next(self.store.scan(), None) is not None:
            # store/.aggregator/ was deleted (or the store copied without it): without its
            # dedupe keys the next poll would duplicate items, so rebuild it first.
            log.info("no index in %s; building it from the store's files", self.store.meta_dir)
            _reindex(self)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reindex(ws: Workspace) -> None:
    # Imported here: only an old or missing index needs the pipeline (at start-up, in
    # the thread that opens the store, before any other thread runs).
    from aggregator.pipeline import reindex

    reindex(ws)


class Journal:
    """One feed's writes, one JSON line each, appended to one file before each write.

    One file per feed, not per write: a cold poll of 20,000 items spent a fifth of its
    storing time making and deleting 20,000 journal files.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._path: Path | None = None

    def add(self, path: str, digest: str, source_id: str, keys: list[str], chash: str) -> None:
        line = json.dumps({"path": path, "hash": digest, "source": source_id, "keys": keys,
                           "chash": chash}) + "\n"
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            # Unbuffered: the line is in the kernel before the file it describes is.
            os.write(self._fd, line.encode("utf-8"))
        except OSError as e:
            raise StoreError(f"cannot write the journal: {os_error_reason(e)}",
                             path=self._path or self.folder) from e

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(100):
            candidate = self.folder / f"{os.getpid()}-{time.time_ns()}-{attempt}.jsonl"
            try:
                self._fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                                   0o666)
            except FileExistsError:
                continue
            self._path = candidate
            return
        raise FileExistsError(errno.EEXIST, "no free journal name", str(self.folder))

    def commit(self) -> None:
        """The writes are in the index: the journal is done with."""
        path = self._close()
        if path is not None:
            path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """The index rolled back: leave the journal for recover_journal."""
        self._close()

    def _close(self) -> Path | None:
        path, fd = self._path, self._fd
        self._fd = self._path = None
        if fd is not None:
            os.close(fd)
        return path
