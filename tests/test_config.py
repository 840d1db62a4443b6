"""feeds.yaml (SPEC §2): every key parsed, every error `FILE:LINE: key.path: message`.

Pure parts (durations, sizes) are tables; the rest loads real files from tmp_path, since
line numbers come from the YAML parser and paths resolve against the file's folder.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.config import (
    config_path,
    format_duration,
    load_config,
    parse_duration,
    parse_size,
)
from aggregator.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
MAINROAD = {
    "menu": "", "lead": "", "comments": False, "authorbox": False, "pager": True,
    "toc": False, "mathjax": False, "sidebar": "right", "widgets": ["search", "recent", "taglist"],
}


def write(folder: Path, text: str, name: str = "feeds.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def config_error(folder: Path, text: str) -> ConfigError:
    path = write(folder, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# -- durations and sizes ------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90),
    ("15m", 15 * 60),
    ("2h", 2 * 3600),
    ("1d", 86400),
    ("1h30m", 5400),
    ("1h 30m", 5400),
    ("1d2h3m4s", 86400 + 7200 + 180 + 4),
    ("1.5h", 5400),
    ("500ms", 0.5),
    ("2w", 14 * 86400),
    ("15M", 900),  # units are case-insensitive: M is minutes, not months
    (" 30m ", 1800),
    (90, 90),
    (1.5, 1.5),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", [
    "soon", "", "  ", "15", "m", "1x", "-5m", "0m", "0", 0, -1, "1d-2h", "1h30", "15 minutes",
    True, None, [15], "99999999999999d", float("inf"), float("nan"), 10**20,
])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(seconds=1), "1s"),
    (timedelta(seconds=90), "90s"),
    (timedelta(minutes=15), "15m"),
    (timedelta(minutes=90), "90m"),
    (timedelta(hours=2), "2h"),
    (timedelta(days=1), "1d"),
    (timedelta(hours=25), "25h"),
])
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert parse_duration(text) == delta


@pytest.mark.parametrize(("text", "size"), [
    ("10MB", 10 * 1024**2),
    ("512KB", 512 * 1024),
    ("512kb", 512 * 1024),
    ("1GiB", 1024**3),
    ("1.5k", 1536),
    ("10 MB", 10 * 1024**2),
    ("100", 100),
    ("100b", 100),
    (4096, 4096),
])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "0", "-1MB", "10TB", "", True, 2.5, 0, None])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# -- a full file --------------------------------------------------------------------------
FULL = """
site:
  title: 智能医疗资讯
  description: Medical-AI news
  base_url: http://example.org/news
  language: zh-CN
  timezone: Asia/Shanghai
store: data/store
output: /srv/public
defaults:
  interval: 2h
  timeout: 90s
  max_bytes: 512KB
  keep_items: 7
front_matter:
  comments: false
  sidebar: right
  widgets: [search, recent]
sources:
  - id: local
    url: feeds/a.xml
  - id: qq
    url: https://example.org/rss.xml
    title: 腾讯新闻
    categories: [qq, news, qq]
    tags: 医疗
    lang: zh-CN
    interval: 1h30m
    timeout: 5s
    max_bytes: 1MB
    include: ['DeepSeek|人工智能']
    exclude: ['广告']
    enabled: false
    full_text: true
  - id: abs-file
    url: file:///srv/feeds/b.xml
  - id: rel-file
    url: file:feeds/c.xml
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "site", FULL))
    site = config.site
    assert (site.title, site.description, site.language, site.timezone) == (
        "智能医疗资讯", "Medical-AI news", "zh-CN", "Asia/Shanghai")
    assert site.base_url == "http://example.org/news/"  # always ends with /
    assert config.store_dir == tmp_path / "site" / "data" / "store"
    assert config.output_dir == Path("/srv/public")
    d = config.defaults
    assert (d.interval, d.timeout, d.max_bytes, d.keep_items) == (
        timedelta(hours=2), 90.0, 512 * 1024, 7)
    assert dict(config.front_matter) == {
        "comments": False, "sidebar": "right", "widgets": ["search", "recent"]}
    assert type(config.front_matter["widgets"]) is list  # plain data, not ruamel's types

    local, qq, abs_file, rel_file = config.sources
    assert qq.id == "qq" and qq.url == "https://example.org/rss.xml"
    assert qq.title == "腾讯新闻"
    assert qq.categories == ("qq", "news")
    assert qq.tags == ("医疗",)  # a single string is a one-item list
    assert qq.lang == "zh-CN"
    assert qq.interval == timedelta(minutes=90)
    assert (qq.timeout, qq.max_bytes) == (5.0, 1024**2)
    assert (qq.include, qq.exclude) == (("DeepSeek|人工智能",), ("广告",))
    assert (qq.enabled, qq.full_text) == (False, True)
    assert config.source("qq") is qq and config.source("nope") is None

    # Defaults inherited by a source that sets nothing itself.
    assert local.categories == ("local",)
    assert (local.title, local.lang, local.tags, local.include, local.exclude) == (
        None, None, (), (), ())
    assert (local.interval, local.timeout, local.max_bytes) == (
        timedelta(hours=2), 90.0, 512 * 1024)
    assert (local.enabled, local.full_text) == (True, False)
    assert local.line == 19 and qq.line == 21

    # Local paths and file: URLs become absolute file: URLs, relative to the config's folder.
    assert local.url == (tmp_path / "site" / "feeds" / "a.xml").as_uri()
    assert abs_file.url == "file:///srv/feeds/b.xml"
    assert rel_file.url == (tmp_path / "site" / "feeds" / "c.xml").as_uri()
    assert not local.is_http and qq.is_http


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "# nothing yet\n"))
    assert config.sources == ()
    assert config.site.timezone == "UTC"
    assert config.site.base_url == "http://127.0.0.1:8000/"
    assert config.defaults.interval == timedelta(minutes=30)
    assert config.defaults.max_bytes == 10 * 1024**2
    assert config.store_dir == tmp_path / "store"
    assert config.output_dir == tmp_path / "public"


def test_relative_paths_follow_the_config_file_not_the_cwd(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "sites", "sources:\n  - id: a\n    url: feeds/a.xml\n", "med.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config(Path("..") / "sites" / "med.yaml")
    assert config.store_dir.resolve() == (tmp_path / "sites" / "store").resolve()
    assert config.output_dir.resolve() == (tmp_path / "sites" / "public").resolve()
    # No '..' left in the URL: it keys the source's saved state, so it must not depend on
    # the folder the command ran from.
    assert config.sources[0].url == (tmp_path / "sites" / "feeds" / "a.xml").as_uri()


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGGREGATOR_CONFIG", raising=False)
    assert config_path(None) == Path("feeds.yaml")
    monkeypatch.setenv("AGGREGATOR_CONFIG", "from-env.yaml")
    assert config_path(None) == Path("from-env.yaml")
    assert config_path("given.yaml") == Path("given.yaml")


# -- errors: FILE:LINE: key.path: message -----------------------------------------------
ERRORS = [
    pytest.param("""
        site:
          title: x
        sources:
          - id: a
            url: a.xml
          - id: b
            url: b.xml
          - id: c
            url: c.xml
          - id: d
            url: d.xml
            interval: soon
        """, "12: sources[3].interval: expected a duration like 15m, got 'soon'",
        id="spec-example"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            intervall: 5m
        """, "4: sources[0].intervall: unknown key (did you mean 'interval'?)", id="typo"),
    pytest.param("""
        sitee:
          title: x
        """, "1: sitee: unknown key (did you mean 'site'?)", id="typo-top-level"),
    pytest.param("""
        site:
          titel: x
        """, "2: site.titel: unknown key (did you mean 'title'?)", id="typo-site"),
    pytest.param("""
        defaults:
          interval: 5m
          colour: blue
        """, "3: defaults.colour: unknown key", id="unknown-no-hint"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
          - id: a
            url: b.xml
        """, "4: sources[1].id: duplicate id 'a' (also sources[0])", id="duplicate-id"),
    pytest.param("""
        sources:
          - id: Tencent News
            url: a.xml
        """, "2: sources[0].id: expected only a-z, 0-9, _ and -, got 'Tencent News'",
        id="bad-id"),
    pytest.param("""
        sources:
          - id: ../etc
            url: a.xml
        """, "2: sources[0].id: expected only a-z, 0-9, _ and -, got '../etc'", id="id-path"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
          - id: b
            title: no url
        """, "4: sources[1].url: is required", id="missing-url"),
    pytest.param("""
        sources:
          - url: a.xml
        """, "2: sources[0].id: is required", id="missing-id"),
    pytest.param("""
        sources:
          - id: a
            url: ftp://example.org/feed
        """, "3: sources[0].url: expected an http(s) URL, a file: URL or a path, "
             "got 'ftp://example.org/feed'", id="bad-scheme"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            include:
              - ok
              - '(unclosed'
        """, "6: sources[0].include[1]: invalid regular expression '(unclosed': "
             "missing ), unterminated subpattern at position 0", id="bad-regex"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            exclude: ['[z-a]']
        """, "4: sources[0].exclude[0]: invalid regular expression '[z-a]': "
             "bad character range z-a at position 1", id="bad-regex-exclude"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            include: '(unclosed'
        """, "4: sources[0].include[0]: invalid regular expression '(unclosed': "
             "missing ), unterminated subpattern at position 0", id="bad-regex-single"),
    pytest.param("""
        site:
          title: x
          timezone: Mars/Olympus_Mons
        """, "3: site.timezone: unknown time zone 'Mars/Olympus_Mons' "
             "(use a name like Asia/Shanghai)", id="bad-timezone"),
    pytest.param("""
        site:
          base_url: ftp://example.org/
        """, "2: site.base_url: expected an http(s) URL, got 'ftp://example.org/'",
        id="bad-base-url"),
    pytest.param("""
        site:
          base_url: 'http://[::1'
        """, "2: site.base_url: expected an http(s) URL, got 'http://[::1'",
        id="unparsable-base-url"),
    pytest.param("""
        site:
          websub_hub: 'https:///no-host'
        """, "2: site.websub_hub: expected an http(s) URL, got 'https:///no-host'",
        id="bad-hub"),
    pytest.param("""
        sources:
          - id: a
            url: 'http://[bad'
        """, "3: sources[0].url: expected an http(s) URL, a file: URL or a path, "
             "got 'http://[bad'", id="unparsable-url"),
    pytest.param("""
        sources:
          - id: a
            url: 'https://'
        """, "3: sources[0].url: expected an http(s) URL, a file: URL or a path, "
             "got 'https://'", id="url-without-host"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            interval: 0.0000001s
        """, "4: sources[0].interval: expected a duration like 15m, got '0.0000001s'",
        id="duration-rounds-to-zero"),
    pytest.param("""
        front_matter:
          comments: false
          title: mine
        """, "3: front_matter.title: is written by the aggregator itself; remove it here",
        id="reserved-front-matter"),
    pytest.param("""
        front_matter:
          Tags: [x]
        """, "2: front_matter.Tags: is written by the aggregator itself; remove it here",
        id="reserved-front-matter-any-case"),
    pytest.param("""
        front_matter:
          lastmod: 2025-01-01
        """, "2: front_matter.lastmod: is written by the aggregator itself; remove it here",
        id="reserved-lastmod"),
    pytest.param("""
        defaults:
          max_bytes: lots
        """, "2: defaults.max_bytes: expected a size like 10MB, got 'lots'", id="bad-size"),
    pytest.param("""
        defaults:
          keep_items: 0
        """, "2: defaults.keep_items: expected a whole number above 0, got 0",
        id="bad-keep-items"),
    pytest.param("""
        defaults:
          timeout: .inf
        """, "2: defaults.timeout: expected a duration like 20s, got inf", id="inf"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            enabled: yes please
        """, "4: sources[0].enabled: expected true or false, got 'yes please'",
        id="bad-bool"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            tags:
              a: 1
        """, "4: sources[0].tags: expected a list of text, got a mapping", id="tags-mapping"),
    pytest.param("""
        sources:
          - id: a
            url: a.xml
            tags:
              - ok
              - [nested]
        """, "6: sources[0].tags[1]: expected text, got a list", id="tag-list"),
    pytest.param("""
        sources:
          - just-a-string
        """, "2: sources[0]: expected a mapping, got 'just-a-string'", id="source-not-map"),
    pytest.param("""
        sources:
          a: 1
        """, "1: sources: expected a list of sources, got a mapping", id="sources-not-list"),
    pytest.param("""
        site: 5
        """, "1: site: expected a mapping, got 5", id="site-not-map"),
    pytest.param("""
        site:
          title: [a, b]
        """, "2: site.title: expected text, got a list", id="title-list"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_config_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    error = config_error(tmp_path, text)
    assert str(error) == f"{tmp_path / 'feeds.yaml'}:{expected}"
    line, key_and_message = expected.split(": ", 1)
    assert error.line == int(line)
    assert error.file == str(tmp_path / "feeds.yaml")
    assert error.key == key_and_message.split(": ", 1)[0]
    assert isinstance(error, ValueError)  # ConfigError(AggregatorError, ValueError)


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("site:\n  title: x\nsources:\n  - id: a\n    url: a.xml\n   title: bad\n",
     6, "expected <block end>, but found '<block mapping start>'"),
    ("site:\n  title: x\n\tbad: 1\n", 3, "found character '\\t' that cannot start any token"),
    ("sources:\n  - id: a\n    url: a.xml\n    id: b\n", 4,
     'found duplicate key "id" with value "b" (original value: "a")'),
])
def test_bad_yaml_syntax_names_the_line(tmp_path: Path, text: str, line: int,
                                        problem: str) -> None:
    error = config_error(tmp_path, text)
    assert str(error) == f"{tmp_path / 'feeds.yaml'}:{line}: invalid YAML: {problem}"
    assert error.line == line
    assert "\n" not in str(error)  # one line


def test_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    error = config_error(tmp_path, "- a\n- b\n")
    assert str(error) == f"{tmp_path / 'feeds.yaml'}:1: expected a mapping, got a list"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(caught.value) == f"{missing}: no such file (give another with --config FILE)"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "feeds.yaml"
    path.write_bytes("site:\n  title: 医疗\n".encode("gbk"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: cannot read: 'utf-8' codec can't decode")


def test_every_config_error_is_one_line(tmp_path: Path) -> None:
    for param in ERRORS:
        text = param.values[0]
        assert "\n" not in str(config_error(tmp_path, text))


# -- the shipped feeds.yaml ------------------------------------------------------------------
def test_shipped_config_validates_with_mainroad_theme_keys() -> None:
    config = load_config(REPO / "feeds.yaml")
    assert dict(config.front_matter) == MAINROAD
    assert list(config.front_matter) == list(MAINROAD)  # the seed post's order
    assert config.site.timezone == "Asia/Shanghai"
    assert config.site.language == "zh-CN"
    assert config.store_dir == REPO / "store" and config.output_dir == REPO / "public"
    ids = [s.id for s in config.sources]
    assert len(ids) == len(set(ids)) >= 5
    for source in config.sources:
        # Works offline: every source is a sample feed kept in the repo.
        assert source.url.startswith("file:///"), source.url
        assert Path(source.url.removeprefix("file://")).is_file(), source.url
        assert source.categories and source.enabled


# -- the libyaml fast path reads what ruamel reads -------------------------------------------
FAST_PATH_CASES = [
    (Path(__file__).parent.parent / "feeds.yaml").read_text(encoding="utf-8"),
    """
    site: {title: "智能医疗", description: d, base_url: "https://e.example/news/",
           language: zh-CN, timezone: Asia/Shanghai}
    defaults: {interval: 1h, timeout: 7.5, max_bytes: 1_000_000, keep_items: 017}
    front_matter: {draft_note: "yes", flag: no, empty: ~}
    sources:
      - &base {id: a, url: "https://e.example/a.xml", categories: [医疗, AI], lang: yes}
      - id: b
        url: https://e.example/b.xml   # a comment
        tags: ["C#", .NET, "A/B testing", 1:30]
        title: 'It''s "quoted"'
        include: ['\\bAI\\b', 大模型]
        enabled: FALSE
        timeout: 1e1
        interval: 90s
    """,
]


@pytest.mark.parametrize("text", FAST_PATH_CASES, ids=["repo-feeds.yaml", "tricky"])
def test_the_fast_path_reads_a_config_as_ruamel_does(tmp_path: Path, text: str) -> None:
    from aggregator.config import _fast_yaml, parse_yaml, validate

    text = textwrap.dedent(text)
    path = write(tmp_path, text)
    fast = _fast_yaml(text)
    assert fast is not None  # taken, not handed to ruamel
    try:
        expected = validate(parse_yaml(text, path), path)
    except ConfigError as e:
        with pytest.raises(ConfigError) as fast_error:
            validate(fast, path)
        assert str(fast_error.value) == str(e)
        return
    assert validate(fast, path) == expected


@pytest.mark.parametrize("text", [
    "site: !!str x\n",  # a tag
    "a: &x {b: 1}\nc:\n  <<: *x\n",  # a merge key
    "sources:\n  - id: a\n    id: b\n",  # a duplicate key
    "site:\n  title: 2024-01-05\n",  # a date
    "defaults:\n  timeout: .inf\n",
    "defaults:\n  max_bytes: 0x10\n",
    "front_matter:\n  weight: 5\n",  # extras other than text keep ruamel's types
    "site: [unclosed\n",  # an error: ruamel's message and line
])
def test_the_fast_path_hands_anything_unusual_to_ruamel(text: str) -> None:
    from aggregator.config import _fast_yaml

    assert _fast_yaml(text) is None
