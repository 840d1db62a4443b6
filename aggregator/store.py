"""The Markdown store: one front-matter file per item; atomic writes; safe paths.

Rendering and reading a file are pure (text in, text out); the Store class does
the disk I/O. Temporary files live in ``store/.aggregator/tmp`` and are renamed
into place, so a crash (even ``kill -9``) never leaves a half-written item, and
leftovers of a killed process are swept on the next run.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from datetime import date as date_type
from datetime import datetime, time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import frontmatter
import yaml

from aggregator.errors import StoreError
from aggregator.model import Item, freeze

META_DIR = ".aggregator"
MAX_NAME_BYTES = 150
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9._-]+$")
MODELED_KEYS = ("title", "date", "lastmod", "summary", "categories", "lang", "tags",
                "thumbnail", "author", "link", "source", "guid", "sources")
_TOML_FRONT_MATTER = re.compile(r"\+\+\+[ \t]*\r?\n(.*?)^\+\+\+[ \t]*(?:\r?\n|\Z)",
                                re.DOTALL | re.MULTILINE)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Characters YAML does not allow raw in a double-quoted scalar, or would fold as line breaks.
_YAML_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


# -- rendering ----------------------------------------------------------------------------
def _yaml_escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    # YAML refuses even the escaped form of a lone surrogate: U+FFFD keeps the file readable.
    if "\ud800" <= ch <= "\udfff":
        return "\\ufffd"
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{ord(ch):04x}")


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar (as the seed post writes every string)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if _YAML_UNSAFE.search(escaped):  # rarely: a search costs a tenth of a sub with a callback
        escaped = _YAML_UNSAFE.sub(_yaml_escape, escaped)
    return f'"{escaped}"'


def format_date(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def render_item(item: Item) -> str:
    """The file text of an item: front matter in the seed's key order, then the body."""
    lines = ["---", f"title: {yaml_quote(item.title)}", f"date: {yaml_quote(format_date(item.date))}"]
    if item.lastmod:
        lines.append(f"lastmod: {yaml_quote(format_date(item.lastmod))}")
    lines.append(f"summary: {yaml_quote(item.summary)}")
    for key in ("categories", "lang", "tags"):
        values: tuple[str, ...] = getattr(item, key)
        if values:
            lines.append(f"{key}:")
            lines.extend(f"  - {yaml_quote(v)}" for v in values)
        else:
            lines.append(f"{key}: []")
    for key in ("thumbnail", "author", "link", "source", "guid"):
        value = getattr(item, key)
        if value:
            lines.append(f"{key}: {yaml_quote(value)}")
    if len(item.sources) > 1:
        lines.append("sources:")
        lines.extend(f"  - {yaml_quote(v)}" for v in item.sources)
    for key, value in item.extra.items():
        if key in MODELED_KEYS:
            continue
        dumped = yaml.dump({key: value}, Dumper=_YAML_DUMPER, allow_unicode=True,
                           default_flow_style=False, sort_keys=False, width=1_000_000)
        lines.append(dumped.rstrip("\n"))
    lines.append("---")
    # A lone surrogate cannot be encoded as UTF-8: U+FFFD, so the write cannot fail on it.
    body = re.sub("[\ud800-\udfff]", "\ufffd", item.body.strip("\n"))
    return "\n".join(lines) + "\n\n" + body + "\n" if body else "\n".join(lines) + "\n"


# -- reading --------------------------------------------------------------------------------
def parse_date(value: Any, tz: ZoneInfo) -> datetime | None:
    """Every date form Hugo reads; a naive one is in the site's time zone."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date_type):
        parsed = datetime.combine(value, time())
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            try:
                parsed = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
    else:
        return None
    return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed


def _terms(meta: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if value is None:
        return ()
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{key}: expected a list, got {type(value).__name__}")
    out: list[str] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"{key}: expected text, got {v!r}")
        text = str(v).strip()
        if text and text not in out:
            out.append(text)
    return tuple(out)


def _optional_text(meta: Mapping[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{key}: expected text, got {type(value).__name__}")
    return str(value)


def read_item(text: str, tz: ZoneInfo, name: str = "") -> Item:
    """Parse a store file (ours or hand-written). Raises ValueError saying what is wrong."""
    text = text.removeprefix("\ufeff")  # a byte-order mark from a Windows editor; Hugo skips it
    toml = _TOML_FRONT_MATTER.match(text)
    handler = None if toml else frontmatter.detect_format(
        text, [frontmatter.YAMLHandler(), frontmatter.JSONHandler()])
    if handler is None and not toml:
        raise ValueError("no front matter (the file must start with ---, +++ or {)")
    try:
        if toml:  # Hugo's other front matter format; python-frontmatter would need `toml`
            meta, body = tomllib.loads(toml.group(1)), text[toml.end():]
        else:
            assert handler is not None
            fm, body = handler.split(text)
            meta = handler.load(fm, Loader=_YAML_LOADER) if isinstance(
                handler, frontmatter.YAMLHandler) else handler.load(fm)
    except (yaml.YAMLError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise ValueError(f"invalid front matter: {' '.join(str(e).split())}") from None
    if not isinstance(meta, dict):
        raise ValueError("front matter is not a mapping of keys")
    date = parse_date(meta.get("date"), tz)
    if date is None:
        if meta.get("date") is None:
            raise ValueError("no date in the front matter")
        raise ValueError(f"date: cannot read {meta.get('date')!r} as a date")
    lastmod = parse_date(meta.get("lastmod"), tz) if meta.get("lastmod") else None
    title = _optional_text(meta, "title") or Path(name).stem or "untitled"
    try:
        item = Item(
            title=title,
            date=date,
            summary=_optional_text(meta, "summary") or "",
            categories=_terms(meta, "categories"),
            lang=_terms(meta, "lang"),
            tags=_terms(meta, "tags"),
            thumbnail=_optional_text(meta, "thumbnail"),
            author=_optional_text(meta, "author"),
            link=_optional_text(meta, "link"),
            source=_optional_text(meta, "source"),
            guid=_optional_text(meta, "guid"),
            sources=_terms(meta, "sources"),
            lastmod=lastmod,
            extra=freeze({k: v for k, v in meta.items() if k not in MODELED_KEYS}),
            body=body.strip("\n") + "\n" if body.strip() else "",
        )
    except ValueError as e:
        raise ValueError(str(e)) from None
    return item


# -- paths ------------------------------------------------------------------------------------
def ascii_slug(text: str, limit: int = 60) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    return slug[:limit].rstrip("-")


def item_path(source_id: str, item: Item, key: str, dated: bool) -> str:
    """A stable, safe relative path: source/[date-]slug-hash.md, ASCII only.

    The hash of the item's strongest key makes it unique and lets a re-poll after
    a crash find the file it wrote before the index knew about it.
    """
    slug = ascii_slug(item.title)
    if len(slug) < len(item.title) / 2 and item.link:
        # Mostly non-Latin title (Chinese...): the link's last segment says more in ASCII.
        try:
            path = urlsplit(item.link).path
        except ValueError:  # 'http://[': a feed's malformed link must not stop the poll
            path = ""
        segment = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        slug = ascii_slug(segment) or slug
    parts = [item.date.date().isoformat()] if dated else []  # strftime: 6x slower, same text
    if slug:
        parts.append(slug)
    parts.append(hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:10])
    return f"{source_id}/{'-'.join(parts)}.md"


def is_safe_relative(path: str) -> bool:
    parts = path.split("/")
    return all(
        _SAFE_COMPONENT.match(p) and p not in (".", "..") and len(p.encode()) <= MAX_NAME_BYTES
        for p in parts
    )


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- disk ----------------------------------------------------------------------------------
# Paths on disk are strings here, not pathlib objects: a cold poll writes 20,000 files and
# a publish 14,000, and joining Paths was a tenth of the poll's storing.

# Folders this process made or found: a publish writes thousands of files into a few
# thousand folders, and a mkdir per file is a measurable share of its time.
_known_dirs: set[str] = set()


def _ensure_dir(folder: str) -> None:
    if folder not in _known_dirs:
        os.makedirs(folder, exist_ok=True)
        _known_dirs.add(folder)


_temp_names = itertools.count()


def _temp_file(tmp_dir: str) -> tuple[int, str]:
    """A new temporary file named PID-N.tmp (sweep_temp_files reads the pid back).

    Not mkstemp: its random names cost a fifth of a cold poll's file writes, and it makes
    0600 files, where a store and feeds served by nginx (another user) must be readable
    like any file this user creates (0666 less the umask, which os.open applies).
    """
    prefix = f"{tmp_dir}{os.sep}{os.getpid()}-"
    while True:
        name = f"{prefix}{next(_temp_names)}.tmp"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:  # left by an earlier process with this pid
            continue


def os_error_reason(e: OSError) -> str:
    """What to tell a person about a failed write."""
    return "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))


def write_atomic(target: str | Path, data: bytes, tmp_dir: str | Path) -> None:
    """Write data to target through a temporary file and a rename.

    On failure (disk full...) the temporary file is removed and the old target is
    left as it was.
    """
    target, tmp_dir = os.fspath(target), os.fspath(tmp_dir)
    folder = os.path.dirname(target)
    _ensure_dir(tmp_dir)
    _ensure_dir(folder)
    fd, tmp = _temp_file(tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:  # the folder went away since we made it: make it again
            _known_dirs.discard(folder)
            _ensure_dir(folder)
            os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StoreError(f"cannot write: {os_error_reason(e)}", path=target) from e
        raise


def sweep_temp_files(tmp_dir: Path) -> int:
    """Remove temporary files left by processes that no longer run."""
    removed = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except OSError:
        return 0
    for entry in entries:
        pid_text = entry.name.split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _alive(int(pid_text)):
            continue
        if pid_text.isdigit() and int(pid_text) == os.getpid():
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The store directory: item files plus the derived data under .aggregator/."""

    def __init__(self, root: Path, timezone: str) -> None:
        self.root = root
        self.meta_dir = root / META_DIR
        self.tmp_dir = self.meta_dir / "tmp"
        self.tz = ZoneInfo(timezone)
        self._prefix = os.fspath(root) + os.sep  # + a relative path: the file on disk
        self._tmp = os.fspath(self.tmp_dir)

    def path(self, relative: str) -> str:
        """The file on disk of a store path; StoreError for an unsafe one."""
        if not is_safe_relative(relative):
            raise StoreError("unsafe store path refused", path=relative)
        return self._prefix + relative

    def read_bytes(self, relative: str) -> bytes | None:
        try:
            with open(self._prefix + relative, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read: {e.strerror or e}", path=relative) from e

    def write(self, relative: str, data: bytes) -> None:
        write_atomic(self.path(relative), data, self._tmp)

    def scan(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every Markdown file under the store (relative POSIX path, stat), skipping .dirs."""
        # Strings, not Paths: a publish scans 50,000 files, and pathlib was most of it.
        stack = [("", str(self.root))]
        while stack:
            prefix, folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((f"{prefix}{name}/", entry.path))
                elif name.endswith((".md", ".markdown")) and entry.is_file():
                    if name.startswith("_index."):
                        continue  # Hugo section pages, not items
                    yield prefix + name, entry.stat()

    def load(self, relative: str) -> tuple[Item, bytes]:
        """Read and parse one file; StoreError if it is missing or broken."""
        data = self.read_bytes(relative)
        if data is None:
            raise StoreError("no such file", path=relative)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StoreError(f"not UTF-8 (byte {e.start})", path=relative) from None
        try:
            return read_item(text, self.tz, relative), data
        except ValueError as e:
            raise StoreError(str(e), path=relative) from None
