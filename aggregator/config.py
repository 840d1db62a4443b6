"""Read feeds.yaml, then a pure validate() turns the parsed document into a Config.

Every error names the file, the line and the key path, the way a compiler would:
``feeds.yaml:12: sources[3].interval: expected a duration like 15m, got 'soon'``.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from aggregator.errors import ConfigError
from aggregator.model import Config, Defaults, Site, Source, freeze

DEFAULT_CONFIG = "feeds.yaml"
SOURCE_ID = re.compile(r"^[a-z0-9_-]+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# Keys the store writes itself; front_matter extras may not shadow them.
RESERVED_FRONT_MATTER = frozenset(
    ["title", "date", "summary", "categories", "lang", "tags", "thumbnail", "author", "link",
     "source", "guid", "sources", "lastmod"]
)

SITE_KEYS = {"title", "description", "base_url", "language", "timezone", "websub_hub"}
TOP_KEYS = {"site", "store", "output", "defaults", "front_matter", "sources", "after_publish",
            "after_publish_timeout"}
DEFAULT_KEYS = {"interval", "timeout", "max_bytes", "keep_items"}
BOUND_KEYS = ("max_tags", "max_items", "max_new_terms")  # defaults, overridable per source
DEFAULT_KEYS |= set(BOUND_KEYS)
SOURCE_KEYS = {
    "id", "url", "title", "categories", "tags", "lang", "interval", "timeout",
    "max_bytes", "include", "exclude", "enabled", "full_text", *BOUND_KEYS,
}


def parse_duration(value: Any) -> timedelta:
    """'90s', '15m', '2h', '1d', '1h30m' or a number of seconds -> timedelta."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
            raise ValueError(value)
        seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    else:
        raise ValueError(value)
    if not seconds > 0:  # also refuses NaN
        raise ValueError(value)
    try:
        delta = timedelta(seconds=seconds)
    except OverflowError:  # '.inf' or '99999999999999d': a config error, not a traceback
        raise ValueError(value) from None
    if not delta:  # '0.0000001s' rounds to nothing: a poll loop with no pause
        raise ValueError(value)
    return delta


def parse_size(value: Any) -> int:
    """'10MB', '512KB', '1GiB' or a number of bytes -> bytes (binary multiples)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(value)
        unit = (match.group(2) or "").lower()[:1] if match.group(2) else ""
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(value)
    if size <= 0:
        raise ValueError(value)
    return size


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """--config, else $AGGREGATOR_CONFIG, else ./feeds.yaml."""
    return Path(explicit or os.environ.get("AGGREGATOR_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file (give another with --config FILE)", file=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=path) from e
    document = _fast_yaml(text)
    if document is not None:
        try:
            return validate(document, path)
        except ConfigError:
            pass  # read again below, for the line numbers only ruamel's nodes carry
    return validate(parse_yaml(text, path), path)


_RUAMEL_LOCK = threading.Lock()


def parse_yaml(text: str, path: Path) -> Any:
    # Imported when needed: the libyaml path reads nearly every feeds.yaml without it.
    # One thread at a time: a daemon reloads its config in another thread, and first
    # imports of one package in two threads at once can deadlock (_DeadlockError).
    with _RUAMEL_LOCK:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import MarkedYAMLError, YAMLError
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
        raise ConfigError(f"invalid YAML: {problem}", file=path, line=line) from e
    except YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=path) from e


# -- a fast path for the common, valid config ---------------------------------------------
# ruamel's round-trip loader keeps the line of every node, which errors need, but takes
# 0.4 s for 1,000 sources: a tenth of `poll`'s time when nothing changed. libyaml reads the
# same file in 0.05 s; its scalars are resolved here by YAML 1.2's rules, as ruamel does
# (not PyYAML's 1.1: 'yes' is text, 017 is 17). Anything unusual (tags, merge keys,
# duplicate keys, dates, front_matter extras other than text, an error) goes the ruamel way.
_Y12_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_Y12_BOOL = {"true": True, "True": True, "TRUE": True,
             "false": False, "False": False, "FALSE": False}
_Y12_INT = re.compile(r"[-+]?[0-9][0-9_]*\Z")
_Y12_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_Y12_UNSURE = re.compile(r"[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)\Z|0[ox]|\d{4}-\d\d?-\d\d?")
_TAG_OR_MERGE = re.compile(r"(?:^|[\s\[{,])!|<<")


class _Unsure(Exception):
    pass


class _Lines:
    """The part of ruamel's `lc` position data _line_of reads (0-based lines)."""

    def __init__(self, line: int, children: Any) -> None:
        self.line = line
        self._children = children

    def key(self, name: Any) -> tuple[int, int]:
        return self._children[name], 0

    def item(self, index: int) -> tuple[int, int]:
        return self._children[index], 0


class _Map(dict):  # type: ignore[type-arg]
    lc: _Lines


class _Seq(list):  # type: ignore[type-arg]
    lc: _Lines


def _fast_yaml(text: str) -> Any | None:
    """The document as plain dicts, lists and scalars, or None: ask ruamel."""
    if "%YAML" in text or _TAG_OR_MERGE.search(text):
        return None
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        document = _construct(node, {})
    except (yaml.YAMLError, _Unsure, RecursionError):
        return None
    extras = document.get("front_matter") if isinstance(document, dict) else None
    if isinstance(extras, dict) and not all(map(_textual, extras.values())):
        return None  # numbers, mappings...: ruamel's types reach the store as it made them
    return document


def _textual(value: Any) -> bool:
    if isinstance(value, list):
        return all(map(_textual, value))
    return value is None or isinstance(value, str | bool)


def _construct(node: Any, seen: dict[int, Any]) -> Any:
    if node is None:
        return None
    if id(node) in seen:  # an alias
        return seen[id(node)]
    if isinstance(node, yaml.ScalarNode):
        value = node.value if node.style else _plain_scalar(node.value)  # plain: None or ""
    elif isinstance(node, yaml.SequenceNode):
        value = seen[id(node)] = _Seq()
        value.extend(_construct(child, seen) for child in node.value)
        value.lc = _Lines(node.start_mark.line, [c.start_mark.line for c in node.value])
    elif isinstance(node, yaml.MappingNode):
        value = seen[id(node)] = _Map()
        keys: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, seen)
            if isinstance(key, dict | list) or key in value:
                raise _Unsure
            value[key] = _construct(value_node, seen)
            keys[key] = key_node.start_mark.line
        value.lc = _Lines(node.start_mark.line, keys)
    else:
        raise _Unsure
    return value


def _plain_scalar(text: str) -> Any:
    if text in _Y12_NULL:
        return None
    if text in _Y12_BOOL:
        return _Y12_BOOL[text]
    if _Y12_UNSURE.match(text):
        raise _Unsure
    if _Y12_INT.match(text):
        return int(text.replace("_", ""))
    if _Y12_FLOAT.match(text):
        return float(text.replace("_", ""))
    return text


class _Checker:
    """Walks the parsed document, keeping file and line for each message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str, key: str, node: Any = None, parent: Any = None,
             name: Any = None) -> ConfigError:
        return ConfigError(message, file=self.path, line=_line_of(node, parent, name), key=key)

    def mapping(self, node: Any, key: str, allowed: set[str], parent: Any = None,
                name: Any = None) -> Mapping[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise self.fail(f"expected a mapping, got {_show(node)}", key, node, parent, name)
        for k in node:
            if k not in allowed:
                hint = difflib.get_close_matches(str(k), sorted(allowed), n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(f"unknown key{extra}", where, None, node, k)
        return node

    def string(self, node: Mapping[str, Any], name: str, key: str, *, required: bool = False,
               default: str | None = None) -> str | None:
        value = node.get(name)
        if value is None:
            if required:
                raise self.fail("is required", _join(key, name), node, None, None)
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(f"expected text, got {_show(value)}", _join(key, name),
                            None, node, name)
        return str(value)

    def strings(self, node: Mapping[str, Any], name: str, key: str) -> tuple[str, ...] | None:
        value = node.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(f"expected a list of text, got {_show(value)}", _join(key, name),
                            None, node, name)
        out: list[str] = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, str | int | float) or not str(v).strip():
                raise self.fail(f"expected text, got {_show(v)}", f"{_join(key, name)}[{i}]",
                                None, value, i)
            if str(v).strip() not in out:
                out.append(str(v).strip())
        return tuple(out)

    def converted(self, node: Mapping[str, Any], name: str, key: str,
                  convert: Callable[[Any], Any], expected: str, default: Any) -> Any:
        if name not in node or node[name] is None:
            return default
        try:
            return convert(node[name])
        except (ValueError, TypeError):
            raise self.fail(f"expected {expected}, got {_show(node[name])}", _join(key, name),
                            None, node, name) from None

    def boolean(self, node: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
        value = node.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"expected true or false, got {_show(value)}", _join(key, name),
                            None, node, name)
        return value


def validate(document: Any, path: Path) -> Config:
    """Pure: the parsed YAML document -> Config, or the first ConfigError found."""
    check = _Checker(path)
    base_dir = path.parent if str(path.parent) else Path(".")
    if document is None:
        document = {}
    top = check.mapping(document, "", TOP_KEYS)

    site_node = check.mapping(top.get("site"), "site", SITE_KEYS, top, "site")
    base_url = check.string(site_node, "base_url", "site", default="http://127.0.0.1:8000/")
    assert base_url is not None
    if not _is_web_url(base_url):
        raise check.fail(f"expected an http(s) URL, got {_show(base_url)}", "site.base_url",
                         None, site_node, "base_url")
    if not base_url.endswith("/"):
        base_url += "/"
    timezone = check.string(site_node, "timezone", "site", default="UTC") or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise check.fail(f"unknown time zone {_show(timezone)} (use a name like Asia/Shanghai)",
                         "site.timezone", None, site_node, "timezone") from None
    hub = check.string(site_node, "websub_hub", "site")
    if hub is not None and not _is_web_url(hub):
        raise check.fail(f"expected an http(s) URL, got {_show(hub)}", "site.websub_hub",
                         None, site_node, "websub_hub")
    site = Site(
        title=check.string(site_node, "title", "site", default="aggregator") or "aggregator",
        description=check.string(site_node, "description", "site", default="") or "",
        base_url=base_url,
        language=check.string(site_node, "language", "site", default="en") or "en",
        timezone=timezone,
        websub_hub=hub,
    )

    store = check.string(top, "store", "", default="store") or "store"
    output = check.string(top, "output", "", default="public") or "public"

    defaults_node = check.mapping(top.get("defaults"), "defaults", DEFAULT_KEYS, top, "defaults")
    base = Defaults()
    interval, interval_auto = _interval(check, defaults_node, "defaults", base.interval, False)
    defaults = Defaults(
        interval=interval,
        interval_auto=interval_auto,
        timeout=check.converted(defaults_node, "timeout", "defaults",
                                lambda v: parse_duration(v).total_seconds(),
                                "a duration like 20s", base.timeout),
        max_bytes=check.converted(defaults_node, "max_bytes", "defaults", parse_size,
                                  "a size like 10MB", base.max_bytes),
        keep_items=check.converted(defaults_node, "keep_items", "defaults", _positive_int,
                                   "a whole number above 0", base.keep_items),
        **_bounds(check, defaults_node, "defaults", base),
    )

    front_matter = top.get("front_matter") or {}
    if not isinstance(front_matter, Mapping):
        raise check.fail(f"expected a mapping, got {_show(front_matter)}", "front_matter",
                         None, top, "front_matter")
    for k in front_matter:
        # Hugo reads front matter keys case-insensitively: 'Title' would shadow 'title'.
        if str(k).lower() in RESERVED_FRONT_MATTER:
            raise check.fail("is written by the aggregator itself; remove it here",
                             f"front_matter.{k}", None, front_matter, k)

    sources_node = top.get("sources") or []
    if not isinstance(sources_node, list):
        raise check.fail(f"expected a list of sources, got {_show(sources_node)}", "sources",
                         None, top, "sources")
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for i, node in enumerate(sources_node):
        key = f"sources[{i}]"
        node = check.mapping(node, key, SOURCE_KEYS, sources_node, i)
        source = _source(check, node, key, base_dir, defaults)
        if source.id in seen:
            raise check.fail(f"duplicate id '{source.id}' (also sources[{seen[source.id]}])",
                             f"{key}.id", None, node, "id")
        seen[source.id] = i
        sources.append(source)

    hook = top.get("after_publish")
    if hook is not None and (not isinstance(hook, list) or not hook or any(
            isinstance(a, bool) or not isinstance(a, str | int | float) for a in hook)):
        raise check.fail(f"expected a list of arguments like [hugo, --source, site], got "
                         f"{_show(hook)}", "after_publish", None, top, "after_publish")
    return Config(
        path=path,
        site=site,
        store_dir=_resolve(base_dir, store),
        output_dir=_resolve(base_dir, output),
        defaults=defaults,
        front_matter=freeze(_plain(front_matter)),
        sources=tuple(sources),
        after_publish=tuple(str(a) for a in hook or ()),
        after_publish_timeout=check.converted(
            top, "after_publish_timeout", "", lambda v: parse_duration(v).total_seconds(),
            "a duration like 10m", 600.0),
    )


def _interval(check: _Checker, node: Mapping[str, Any], key: str, default: timedelta,
              default_auto: bool) -> tuple[timedelta, bool]:
    """``interval``: a duration, or ``auto`` (follow the feed; ``default`` until then)."""
    value = node.get("interval")
    if isinstance(value, str) and value.strip().lower() == "auto":
        return default, True
    if value is None:
        return default, default_auto
    return check.converted(node, "interval", key, parse_duration,
                           "a duration like 15m", default), False


def _source(check: _Checker, node: Mapping[str, Any], key: str, base_dir: Path,
            defaults: Defaults) -> Source:
    source_id = check.string(node, "id", key, required=True)
    assert source_id is not None
    if not SOURCE_ID.match(source_id):
        raise check.fail(f"expected only a-z, 0-9, _ and -, got {_show(source_id)}",
                         f"{key}.id", None, node, "id")
    raw_url = check.string(node, "url", key, required=True)
    assert raw_url is not None
    url = _source_url(raw_url, base_dir)
    if url is None:
        raise check.fail(f"expected an http(s) URL, a file: URL or a path, got {_show(raw_url)}",
                         f"{key}.url", None, node, "url")
    patterns: dict[str, tuple[str, ...]] = {}
    for name in ("include", "exclude"):
        values = check.strings(node, name, key) or ()
        for j, pattern in enumerate(values):
            try:
                re.compile(pattern)
            except re.error as e:
                # The pattern's own line when the patterns are a list, else the key's.
                listed = node[name] if isinstance(node[name], list) else None
                raise check.fail(f"invalid regular expression {_show(pattern)}: {e}",
                                 f"{key}.{name}[{j}]", None, listed if listed is not None
                                 else node, j if listed is not None else name) from None
        patterns[name] = values
    interval, interval_auto = _interval(check, node, key, defaults.interval,
                                        defaults.interval_auto)
    return Source(
        id=source_id,
        url=url,
        title=check.string(node, "title", key),
        categories=check.strings(node, "categories", key) or (source_id,),
        tags=check.strings(node, "tags", key) or (),
        lang=check.string(node, "lang", key),
        interval=interval,
        interval_auto=interval_auto,
        timeout=check.converted(node, "timeout", key, lambda v: parse_duration(v).total_seconds(),
                                "a duration like 20s", defaults.timeout),
        max_bytes=check.converted(node, "max_bytes", key, parse_size, "a size like 10MB",
                                  defaults.max_bytes),
        include=patterns["include"],
        exclude=patterns["exclude"],
        enabled=check.boolean(node, "enabled", key, True),
        full_text=check.boolean(node, "full_text", key, False),
        **_bounds(check, node, key, defaults),
        line=_line_of(node, None, None),
    )


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # 'http://[bad': an error message, not a traceback
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _source_url(raw: str, base_dir: Path) -> str | None:
    raw = raw.strip()
    try:
        parts = urlsplit(raw)
    except ValueError:  # 'http://[bad'
        return None
    scheme = parts.scheme.lower()
    if parts.scheme and parts.scheme != scheme:  # HTTPS://, FILE:// work as they do in browsers
        raw = scheme + raw[len(parts.scheme):]
    if scheme in ("http", "https"):
        return raw if parts.netloc else None
    if scheme == "file":
        if parts.netloc in ("", "localhost") and not parts.path.startswith("/"):
            # 'file:feeds/a.xml' is relative too: to the config file's folder, not the cwd.
            return _file_uri(_resolve(base_dir, unquote(parts.path)))
        return raw
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive, i.e. a path
        return None
    if not raw:
        return None
    return _file_uri(_resolve(base_dir, raw))


def _file_uri(path: Path) -> str:
    # abspath, not Path.absolute(): 'x/../feeds/a.xml' must give the same URL (the key of
    # the source's HTTP state) as 'feeds/a.xml', whatever folder the command ran from.
    return Path(os.path.abspath(path)).as_uri()


def _resolve(base_dir: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base_dir / p


def _bounds(check: _Checker, node: Mapping[str, Any], key: str,
            base: Defaults) -> dict[str, int]:
    """max_tags, max_items, max_new_terms: under defaults, or a source's own."""
    return {name: check.converted(node, name, key, _positive_int, "a whole number above 0",
                                  getattr(base, name)) for name in BOUND_KEYS}


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(value)
    return value


def _plain(value: Any) -> Any:
    """ruamel's commented containers -> plain dicts and lists, for the store writer."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value) if isinstance(value, str) else repr(value)


def _line_of(node: Any, parent: Any, name: Any) -> int | None:
    """1-based line of a value (parent[name]) or of a node, from ruamel's position data."""
    try:
        if parent is not None and name is not None:
            if isinstance(parent, list):
                return parent.lc.item(name)[0] + 1
            # The key's line, not the value's: for a block value ('site:' then an indented
            # mapping) the value starts a line later, and an unknown key has to be found.
            return parent.lc.key(name)[0] + 1 if name in parent else parent.lc.line + 1
        if node is not None and hasattr(node, "lc"):
            return node.lc.line + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return None
    return None
