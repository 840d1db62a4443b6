"""The store's derived data, in SQLite under store/.aggregator/index.sqlite.

- ``items``/``keys``: which store file each dedupe key points at, the hash of the
  bytes we last wrote there (a differing file was edited by a person), how often
  its content changed, and whether a person deleted it.
- ``sources``: per-source HTTP and scheduling state (ETag, Last-Modified, the
  permanent URL after a 301, errors, Retry-After, 410...). Files cannot tell this,
  so ``reindex`` keeps it, and keeps the record of deleted items.
- ``files``: publish's cache of parsed store files keyed by (mtime, size).
- ``members``: which feeds each published file is in (its tags, categories, sources
  and the site-wide feed), so a publish regroups only the feeds a change touches.
- ``outputs``: each published feed, its signature (rewrite only changed feeds), its
  name and item count (the front page and OPML without regrouping the store).
- ``dirty_listings``: files whose ``item_sources`` rows changed since the last publish
  (filled by triggers: a second source listing an item changes that source's feed
  without changing the file).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from aggregator.errors import StoreError

DEFERRED_STATES_MAX = 256  # source states held back at most (see Index.deferred_states)
SCHEMA_VERSION = 4  # PRAGMA user_version; older caches are dropped, older items rebuilt
CACHE_TABLES = ("files", "outputs", "fragments", "members", "dirty_listings")
ITEM_TABLES = ("items", "keys", "item_sources")
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    path TEXT PRIMARY KEY,
    source TEXT,
    written_hash TEXT,          -- sha256 of the bytes we last wrote; NULL: never ours
    updates INTEGER NOT NULL DEFAULT 0, -- content changes applied (capped, SPEC §3)
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_path ON keys(path);
CREATE TABLE IF NOT EXISTS item_sources (
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    content_hash TEXT,          -- hash of this source's entry when last applied
    PRIMARY KEY (path, source)
);
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT,                -- sha256 of the bytes
    meta TEXT,                  -- JSON of the parsed front matter
    html TEXT,                  -- the body rendered to sanitized HTML
    error TEXT                  -- why the file is broken, if it is
);
CREATE INDEX IF NOT EXISTS files_broken ON files(path) WHERE error IS NOT NULL;
-- (path, mtime, size) without reading the rows, which hold each file's metadata and
-- HTML: a publish compares all of them with the store (a table scan took 0.15 s of an
-- incremental publish at 50,000 files).
CREATE INDEX IF NOT EXISTS files_stat ON files(path, mtime_ns, size);
CREATE TABLE IF NOT EXISTS fragments (
    path TEXT PRIMARY KEY,
    key TEXT NOT NULL,          -- what they were built with (version, base_url, source)
    rss TEXT NOT NULL,          -- the item as an RSS <item>
    atom TEXT NOT NULL,         -- as an Atom <entry>
    json TEXT NOT NULL          -- as a JSON Feed item
);
-- Which settings each item's fragments were built with, without reading the rows (8 KB
-- of fragments each): a publish asks for the keys of every item of every feed it
-- rebuilds.
CREATE INDEX IF NOT EXISTS fragments_key ON fragments(path, key);
CREATE TABLE IF NOT EXISTS members (
    kind TEXT NOT NULL,         -- all, tag, category or source
    term TEXT NOT NULL,         -- as the file spells it; a source id; '' for all
    nts REAL NOT NULL,          -- minus the item's timestamp: newest first in key order
    path TEXT NOT NULL,
    pos INTEGER NOT NULL,       -- the term's place in the item's list (see feed_name)
    PRIMARY KEY (kind, term, nts, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_path ON members(path);
CREATE TABLE IF NOT EXISTS dirty_listings (
    path TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS item_sources_added AFTER INSERT ON item_sources BEGIN
    INSERT OR IGNORE INTO dirty_listings(path) VALUES (NEW.path);
END;
CREATE TRIGGER IF NOT EXISTS item_sources_removed AFTER DELETE ON item_sources BEGIN
    INSERT OR IGNORE INTO dirty_listings(path) VALUES (OLD.path);
END;
CREATE TABLE IF NOT EXISTS outputs (
    feed TEXT PRIMARY KEY,      -- its folder, '/' for the site-wide feed
    signature TEXT NOT NULL,    -- 'failed': retried by the next publish
    kind TEXT NOT NULL,
    slug TEXT NOT NULL,
    name TEXT NOT NULL,         -- the term as its oldest item spells it; a source id
    count INTEGER NOT NULL      -- its items (all, not only the newest keep_items)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""


@dataclass(frozen=True)
class SourceState:
    """Everything we remember about a source between polls. Times are ISO strings."""

    url: str | None = None  # the configured URL this state belongs to
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None
    last_poll: str | None = None
    last_status: str | None = None
    last_error: str | None = None
    error_count: int = 0
    retry_until: str | None = None  # 429/503 Retry-After
    backoff_until: str | None = None  # exponential backoff after errors
    gone: bool = False  # 410: disabled until the configured URL changes
    min_interval: float | None = None  # seconds: the longer of the feed's ttl and max-age
    feed_interval: float | None = None  # seconds: the feed's own ttl / sy:updatePeriod
    next_poll: str | None = None
    last_new: int = 0
    last_updated: int = 0
    title: str | None = None

    @staticmethod
    def from_json(text: str | None) -> SourceState:
        if not text:
            return SourceState()
        data = json.loads(text)
        names = {f.name for f in fields(SourceState)}
        return SourceState(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        # Flat fields of plain types: no asdict() deep copy (a tenth of a warm poll).
        return json.dumps(self.__dict__, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class ItemRecord:
    path: str
    source: str | None
    written_hash: str | None
    updates: int
    deleted: bool


class Index:
    """A thin, thread-safe layer over the SQLite file. One connection, one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = not path.exists()  # a fresh index: the caller may rebuild it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=60, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self.needs_reindex = self._migrate()
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open the index: {e}", path=path) from e
        self._lock = threading.RLock()
        self._depth = 0
        self._deferred: dict[str, SourceState] | None = None  # see deferred_states()

    def _migrate(self) -> bool:
        """Bring an index written by an older version up to date; True if items must be
        rebuilt from the files (the caller runs reindex)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return False
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rebuild = False
        for table in CACHE_TABLES:
            self._db.execute(f"DROP TABLE IF EXISTS {table}")
        if "item_sources" in tables:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(item_sources)")}
            if "content_hash" not in columns:
                for table in ITEM_TABLES:
                    self._db.execute(f"DROP TABLE IF EXISTS {table}")
                rebuild = True
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return rebuild

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction; nested uses join the outer one (a feed's items commit
        together, which is what makes a cold poll of 20,000 items fast)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                self._write_deferred()
                yield self._db
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- dedupe keys and items -------------------------------------------------------
    def find(self, keys: Iterable[str]) -> str | None:
        """The path of the first key (in the given order) the index knows."""
        keys = list(keys)
        if not keys:
            return None
        marks = ",".join("?" * len(keys))
        found = dict(self._query(f"SELECT key, path FROM keys WHERE key IN ({marks})", keys))
        return next((found[k] for k in keys if k in found), None)

    def find_all(self, keys: Iterable[str]) -> dict[str, str]:
        """The path of each of these keys that the index knows."""
        return dict(r for chunk in _chunks(keys) for r in self._query(
            f"SELECT key, path FROM keys WHERE key IN ({_marks(chunk)})", chunk))

    def paths_taken(self, paths: Iterable[str]) -> set[str]:
        """Those of these paths that an item has."""
        return {p for chunk in _chunks(paths) for (p,) in self._query(
            f"SELECT path FROM items WHERE path IN ({_marks(chunk)})", chunk)}

    def item(self, path: str) -> ItemRecord | None:
        rows = self._query("SELECT path, source, written_hash, updates, deleted "
                           "FROM items WHERE path = ?", (path,))
        if not rows:
            return None
        p, source, written, updates, deleted = rows[0]
        return ItemRecord(p, source, written, updates, bool(deleted))

    def source_content_hash(self, path: str, source_id: str) -> str | None:
        """The hash of source_id's entry when last applied to path ('' if listed, no hash)."""
        rows = self._query("SELECT content_hash FROM item_sources WHERE path = ? AND source = ?",
                           (path, source_id))
        return (rows[0][0] or "") if rows else None

    def sources_of(self, path: str) -> list[str]:
        return [s for (s,) in self._query("SELECT source FROM item_sources WHERE path = ? "
                                           "ORDER BY rowid", (path,))]

    def path_taken(self, path: str) -> bool:
        return bool(self._query("SELECT 1 FROM items WHERE path = ?", (path,)))

    def record_item(self, db: sqlite3.Connection, record: ItemRecord, keys: Iterable[str],
                    source_hashes: dict[str, str | None]) -> None:
        """Insert or update an item, the keys it is known by and the sources listing it."""
        db.execute(
            "INSERT INTO items(path, source, written_hash, updates, deleted) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET source=excluded.source, "
            "written_hash=excluded.written_hash, updates=excluded.updates, "
            "deleted=excluded.deleted",
            (record.path, record.source, record.written_hash, record.updates,
             int(record.deleted)))
        db.executemany("INSERT OR IGNORE INTO keys(key, path) VALUES (?, ?)",
                       [(k, record.path) for k in keys])
        for source, chash in source_hashes.items():
            db.execute("INSERT INTO item_sources(path, source, content_hash) VALUES (?, ?, ?) "
                       "ON CONFLICT(path, source) DO UPDATE SET content_hash = "
                       "coalesce(excluded.content_hash, item_sources.content_hash)",
                       (record.path, source, chash))

    def count_items(self, source_id: str | None = None) -> int:
        if source_id is None:
            return self._query("SELECT count(*) FROM items WHERE deleted = 0")[0][0]
        return self._query("SELECT count(*) FROM item_sources s JOIN items i ON i.path = s.path "
                           "WHERE s.source = ? AND i.deleted = 0", (source_id,))[0][0]

    # -- sources ------------------------------------------------------------------------
    def source_state(self, source_id: str) -> SourceState:
        with self._lock:
            if self._deferred and source_id in self._deferred:
                return self._deferred[source_id]
        rows = self._query("SELECT state FROM sources WHERE id = ?", (source_id,))
        return SourceState.from_json(rows[0][0] if rows else None)

    def all_source_states(self) -> dict[str, SourceState]:
        with self._lock:
            states = {sid: SourceState.from_json(state)
                      for sid, state in self._query("SELECT id, state FROM sources")}
            return {**states, **(self._deferred or {})}

    def source_titles(self) -> dict[str, str | None]:
        """Per source: the title its feed gave (without decoding every whole state)."""
        with self._lock:
            titles = dict(self._query("SELECT id, json_extract(state, '$.title') FROM sources"))
            titles.update((sid, state.title) for sid, state in (self._deferred or {}).items())
            return titles

    def save_source_state(self, source_id: str, state: SourceState) -> None:
        with self._lock:
            if self._deferred is not None and self._depth == 0:
                self._deferred[source_id] = state
                if len(self._deferred) < DEFERRED_STATES_MAX:
                    return
            with self.transaction() as db:  # writes the deferred ones too
                db.execute("INSERT INTO sources(id, state) VALUES (?, ?) ON CONFLICT(id) DO "
                           "UPDATE SET state = excluded.state", (source_id, state.to_json()))

    @contextmanager
    def deferred_states(self) -> Iterator[None]:
        """Within: source states are written with the next transaction, or every
        DEFERRED_STATES_MAX, or at the end, not one commit each (a poll of 1,000 unchanged
        feeds spent a tenth of its time committing them). A state lost to a kill costs
        one fetch without its ETag or an error count reset: nothing of the store."""
        with self._lock:
            self._deferred = {}
        try:
            yield
        finally:
            with self._lock:
                if self._deferred:
                    with self.transaction():
                        pass  # _write_deferred runs at its start
                self._deferred = None

    def _write_deferred(self) -> None:
        if self._deferred:
            self._db.executemany(
                "INSERT INTO sources(id, state) VALUES (?, ?) ON CONFLICT(id) DO UPDATE "
                "SET state = excluded.state",
                [(sid, state.to_json()) for sid, state in self._deferred.items()])
            self._deferred.clear()

    # -- publish caches ------------------------------------------------------------------
    def file_stats(self) -> dict[str, tuple[int, int]]:
        """path -> (mtime_ns, size) of every file the cache holds."""
        return {p: (m, s) for p, m, s in self._query("SELECT path, mtime_ns, size FROM files")}

    def file_entries(self, paths: Iterable[str]) -> list[tuple[str, str, str | None]]:
        """(path, digest, meta JSON) of the given cached files that parsed."""
        return [r for chunk in _chunks(paths) for r in self._query(
            f"SELECT path, digest, meta FROM files WHERE path IN ({_marks(chunk)}) "
            "AND meta IS NOT NULL AND error IS NULL", chunk)]

    def file_members(self, paths: Iterable[str]
                     ) -> list[tuple[str, str, str | None, str, str | None]]:
        """(path, digest, source, date, lastmod) of the given cached files that parsed:
        what a feed's signature and dates need, without decoding whole items."""
        return [r for chunk in _chunks(paths) for r in self._query(
            "SELECT path, digest, json_extract(meta, '$.source'), json_extract(meta, '$.date'), "
            f"json_extract(meta, '$.lastmod') FROM files WHERE path IN ({_marks(chunk)}) "
            "AND meta IS NOT NULL AND error IS NULL", chunk)]

    def broken_files(self) -> list[tuple[str, str]]:
        return self._query("SELECT path, error FROM files WHERE error IS NOT NULL ORDER BY path")

    def save_files(self, rows: Iterable[tuple[str, int, int, str, str | None, str | None,
                                              str | None]],
                   removed: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO files(path, mtime_ns, size, digest, meta, "
                           "html, error) VALUES (?, ?, ?, ?, ?, ?, ?)", list(rows))
            db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in removed])

    def rendered_html(self, paths: list[str]) -> dict[str, str]:
        return dict(r for chunk in _chunks(paths) for r in self._query(
            f"SELECT path, html FROM files WHERE path IN ({_marks(chunk)})", chunk))

    def fragment_keys(self, paths: list[str]) -> dict[str, str]:
        return dict(r for chunk in _chunks(paths) for r in self._query(
            f"SELECT path, key FROM fragments WHERE path IN ({_marks(chunk)})", chunk))

    def fragments(self, paths: list[str]) -> dict[str, tuple[bytes, bytes, bytes]]:
        """path -> its RSS, Atom and JSON Feed fragments, UTF-8 (not decoded: they go
        into files as they are)."""
        return {p: (rss, atom, js) for chunk in _chunks(paths) for p, rss, atom, js in
                self._query("SELECT path, CAST(rss AS BLOB), CAST(atom AS BLOB), "
                            f"CAST(json AS BLOB) FROM fragments WHERE path IN "
                            f"({_marks(chunk)})", chunk)}

    def save_fragments(self, rows: Iterable[tuple[str, str, str, str, str]],
                       removed: Iterable[str] = ()) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO fragments(path, key, rss, atom, json) "
                           "VALUES (?, ?, ?, ?, ?)", list(rows))
            db.executemany("DELETE FROM fragments WHERE path = ?", [(p,) for p in removed])

    def listed_by(self, paths: Iterable[str] | None = None) -> dict[str, list[str]]:
        """path -> the sources whose feeds list it (files name only the first, see SPEC §3),
        in the order they came; for ``paths`` only, if given."""
        out: dict[str, list[str]] = {}
        rows = (self._query("SELECT path, source FROM item_sources ORDER BY rowid")
                if paths is None else sorted(
                    r for chunk in _chunks(paths) for r in self._query(
                        "SELECT rowid, path, source FROM item_sources "
                        f"WHERE path IN ({_marks(chunk)})", chunk)))
        for *_, path, source in rows:
            out.setdefault(path, []).append(source)
        return out

    # -- feed membership (publish) ----------------------------------------------------------
    def dirty_listings(self) -> list[str]:
        return [p for (p,) in self._query("SELECT path FROM dirty_listings")]

    def member_terms(self, paths: Iterable[str]) -> set[tuple[str, str]]:
        """The (kind, term) pairs the given files are members of."""
        return {r for chunk in _chunks(paths) for r in self._query(
            f"SELECT DISTINCT kind, term FROM members WHERE path IN ({_marks(chunk)})", chunk)}

    def terms_in_use(self, kind: str, terms: Iterable[str]) -> set[str]:
        """Those of ``terms`` that some published item has (spelt the same)."""
        return {t for chunk in _chunks(terms) for (t,) in self._query(
            f"SELECT DISTINCT term FROM members WHERE kind = ? AND term IN ({_marks(chunk)})",
            [kind, *chunk])}

    def replace_members(self, paths: Iterable[str],
                        rows: Iterable[tuple[str, str, float, str, int]]) -> None:
        """Forget the memberships of ``paths``, then add ``rows`` (kind, term, nts, path,
        pos); the listings of those paths are no longer dirty."""
        with self.transaction() as db:
            for chunk in _chunks(paths):
                db.execute(f"DELETE FROM members WHERE path IN ({_marks(chunk)})", chunk)
                db.execute(f"DELETE FROM dirty_listings WHERE path IN ({_marks(chunk)})", chunk)
            db.executemany("INSERT OR IGNORE INTO members(kind, term, nts, path, pos) "
                           "VALUES (?, ?, ?, ?, ?)", list(rows))

    def distinct_terms(self) -> list[tuple[str, str]]:
        return self._query("SELECT DISTINCT kind, term FROM members")

    def feed_paths(self, kind: str, terms: list[str], limit: int | None = None) -> list[str]:
        """The members of a feed (terms: its spellings), newest first, at most ``limit``."""
        sql = (f"SELECT path, min(nts) AS n FROM members WHERE kind = ? AND term IN "
               f"({_marks(terms)}) GROUP BY path ORDER BY n, path" if len(terms) > 1 else
               "SELECT path FROM members WHERE kind = ? AND term = ? ORDER BY nts, path")
        rows = self._query(sql + (" LIMIT ?" if limit is not None else ""),
                           [kind, *terms, *([limit] if limit is not None else [])])
        return [r[0] for r in rows]

    def source_item_times(self, source_id: str, limit: int) -> list[datetime]:
        """The dates of a source's newest ``limit`` items as its last publish listed them
        (``interval: auto``): one indexed range read, no store file opened."""
        rows = self._query("SELECT nts FROM members WHERE kind = 'source' AND term = ? "
                           "ORDER BY nts LIMIT ?", (source_id, limit))
        return [datetime.fromtimestamp(-nts, UTC) for (nts,) in rows]

    def feed_count(self, kind: str, terms: list[str]) -> int:
        if len(terms) == 1:  # one row per (term, path): no DISTINCT needed
            return self._query("SELECT count(*) FROM members WHERE kind = ? AND term = ?",
                               [kind, *terms])[0][0]
        return self._query(f"SELECT count(DISTINCT path) FROM members WHERE kind = ? AND term "
                           f"IN ({_marks(terms)})", [kind, *terms])[0][0]

    def feed_name(self, kind: str, terms: list[str]) -> str:
        """A term spelt two ways ('AI', 'ai') is named as its oldest item spells it (then
        by path, then by the place in that item's list): the same on every machine and
        stable as new items arrive."""
        return self._query(f"SELECT term FROM members WHERE kind = ? AND term IN "
                           f"({_marks(terms)}) ORDER BY nts DESC, path, pos LIMIT 1",
                           [kind, *terms])[0][0]

    def feed_records(self) -> dict[str, tuple[str, str, str, str, int]]:
        """feed folder -> (signature, kind, slug, name, count) as the last publish left it."""
        return {f: (sig, k, slug, name, n) for f, sig, k, slug, name, n in self._query(
            "SELECT feed, signature, kind, slug, name, count FROM outputs")}

    def save_feed_records(self, records: dict[str, tuple[str, str, str, str, int]],
                          removed: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO outputs(feed, signature, kind, slug, name, "
                           "count) VALUES (?, ?, ?, ?, ?, ?)",
                           [(f, *r) for f, r in records.items()])
            db.executemany("DELETE FROM outputs WHERE feed = ?", [(f,) for f in removed])

    # -- reindex ---------------------------------------------------------------------------
    def deleted_items(self) -> list[tuple[ItemRecord, list[str], list[str]]]:
        out = []
        for (path,) in self._query("SELECT path FROM items WHERE deleted = 1"):
            record = self.item(path)
            assert record is not None
            keys = [k for (k,) in self._query("SELECT key FROM keys WHERE path = ?", (path,))]
            out.append((record, keys, self.sources_of(path)))
        return out

    def written_hashes(self) -> dict[str, tuple[str | None, int]]:
        return {p: (w, u) for p, w, u in
                self._query("SELECT path, written_hash, updates FROM items")}

    def raw_keys(self, source_id: str) -> frozenset[str]:
        """The raw: keys of a source's entries already stored (see pipeline.raw_key)."""
        low, high = f"raw:{source_id}\x00", f"raw:{source_id}\x01"
        return frozenset(k for (k,) in self._query(
            "SELECT key FROM keys WHERE key >= ? AND key < ?", (low, high)))

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def clear_publish_caches(self) -> None:
        with self.transaction() as db:
            for table in CACHE_TABLES:
                db.execute(f"DELETE FROM {table}")

    def all_keys(self) -> list[tuple[str, str]]:
        return self._query("SELECT key, path FROM keys")

    def all_item_sources(self) -> list[tuple[str, str, str | None]]:
        return self._query("SELECT path, source, content_hash FROM item_sources ORDER BY rowid")

    def clear_items(self, db: sqlite3.Connection) -> None:
        for table in ("items", "keys", "item_sources", *CACHE_TABLES):
            db.execute(f"DELETE FROM {table}")


def _chunks(values: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    """SQLite limits the parameters of one statement: IN (...) lists go in chunks."""
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _marks(values: list[str]) -> str:
    return ",".join("?" * len(values))


def now_iso(now: datetime) -> str:
    return now.isoformat(timespec="seconds")
