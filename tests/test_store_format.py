"""The store file format (SPEC §3): render/read, safe paths, atomic writes.

Rendering and reading are pure, so most of this is tables; the disk tests use tmp_path.
The hypothesis round trip over arbitrary text is in test_properties.py.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aggregator import store as store_module
from aggregator.errors import StoreError
from aggregator.model import Item, freeze
from aggregator.store import (
    MAX_NAME_BYTES,
    Store,
    is_safe_relative,
    item_path,
    parse_date,
    read_item,
    render_item,
    sweep_temp_files,
    write_atomic,
    yaml_quote,
)

REPO = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
CST = timezone(timedelta(hours=8))
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)$")
ORDER = ["title", "date", "lastmod", "summary", "categories", "lang", "tags", "thumbnail",
         "author", "link", "source", "guid", "sources"]


def example(**changes: object) -> Item:
    item = Item(
        title="示例：三家医院接入大模型辅助诊断",
        date=datetime(2025, 2, 14, 10, 49, 11, tzinfo=SHANGHAI),
        summary="示例摘要：本周三家医院宣布...",
        categories=("qq",),
        lang=("zh-CN",),
        tags=("qq", "医疗"),
        thumbnail="https://example.org/img/1.jpg",
        author="...",
        link="https://example.org/a/20250214-001",
        source="qq",
        guid="https://example.org/a/20250214-001",
        extra=freeze({"menu": "", "comments": False, "sidebar": "right",
                      "widgets": ["search", "recent", "taglist"]}),
        body="![图片](https://example.org/img/1.jpg)\n\nBody...\n\n"
             "[腾讯新闻](https://example.org/a/20250214-001)\n",
    )
    return replace(item, **changes)


def front_matter_keys(text: str) -> list[str]:
    head = text.split("\n---\n", 1)[0].removeprefix("---\n")
    return [line.split(":", 1)[0] for line in head.splitlines()
            if line and not line.startswith((" ", "-"))]


# -- rendering ----------------------------------------------------------------------------
def test_render_matches_the_spec_example() -> None:
    assert render_item(example()) == (
        '---\n'
        'title: "示例：三家医院接入大模型辅助诊断"\n'
        'date: "2025-02-14T10:49:11+08:00"\n'
        'summary: "示例摘要：本周三家医院宣布..."\n'
        'categories:\n  - "qq"\n'
        'lang:\n  - "zh-CN"\n'
        'tags:\n  - "qq"\n  - "医疗"\n'
        'thumbnail: "https://example.org/img/1.jpg"\n'
        'author: "..."\n'
        'link: "https://example.org/a/20250214-001"\n'
        'source: "qq"\n'
        'guid: "https://example.org/a/20250214-001"\n'
        "menu: ''\n"
        'comments: false\n'
        'sidebar: right\n'
        'widgets:\n- search\n- recent\n- taglist\n'
        '---\n'
        '\n'
        '![图片](https://example.org/img/1.jpg)\n\nBody...\n\n'
        '[腾讯新闻](https://example.org/a/20250214-001)\n'
    )


def test_key_order_with_every_key() -> None:
    item = example(lastmod=datetime(2025, 2, 15, 8, 0, tzinfo=UTC),
                   sources=("qq", "sina"),
                   extra=freeze({"zzz": 1, "aaa": 2, "translations": []}))
    keys = front_matter_keys(render_item(item))
    assert keys == [*ORDER, "zzz", "aaa", "translations"]  # extras after, in their order


def test_optional_keys_are_left_out() -> None:
    item = example(thumbnail=None, author=None, link=None, guid=None, source=None, extra=freeze({}),
                   tags=(), categories=())
    text = render_item(item)
    assert front_matter_keys(text) == ["title", "date", "summary", "categories", "lang", "tags"]
    assert "tags: []\n" in text and "categories: []\n" in text
    assert "sources" not in text  # a single source is `source`, not a list


def test_extra_cannot_shadow_modelled_keys() -> None:
    text = render_item(example(extra=freeze({"title": "evil", "date": "x", "sidebar": "right"})))
    assert text.count("\ntitle:") == 1 and text.count("\ndate:") == 1
    assert read_item(text, SHANGHAI).title == example().title


@pytest.mark.parametrize("when", [
    datetime(2025, 2, 14, 10, 49, 11, tzinfo=SHANGHAI),
    datetime(2025, 2, 14, 2, 49, 11, tzinfo=UTC),
    datetime(2025, 7, 1, 12, 0, 0, 999999, tzinfo=ZoneInfo("America/New_York")),
    datetime(1970, 1, 2, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
])
def test_dates_are_rfc3339_with_offset(when: datetime) -> None:
    text = render_item(example(date=when, lastmod=when))
    written = re.findall(r'^(?:date|lastmod): "([^"]*)"$', text, re.M)
    assert len(written) == 2
    for value in written:
        assert RFC3339.match(value), value
        assert datetime.fromisoformat(value) == when.replace(microsecond=0)


@pytest.mark.parametrize(("text", "quoted"), [
    ("plain", '"plain"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("two\nlines\ttab\r", '"two\\nlines\\ttab\\r"'),
    ("\u2028\u2029\x00\x7f\x85\ufeff", '"\\u2028\\u2029\\u0000\\u007f\\u0085\\ufeff"'),
    ("lone \ud800", '"lone \\ufffd"'),
    ("中文 😀", '"中文 😀"'),
    ("yes", '"yes"'),
    ("- [x]: {y} # z", '"- [x]: {y} # z"'),
])
def test_yaml_quote(text: str, quoted: str) -> None:
    assert yaml_quote(text) == quoted


# -- reading ------------------------------------------------------------------------------
@pytest.mark.parametrize("item", [
    example(),
    example(lastmod=datetime(2025, 3, 1, tzinfo=UTC), sources=("qq", "sina")),
    example(title='He said "hi" \\ back\nnew\u2028line\x00\x07\x1b 中文 😀',
            summary="s: 'x' # not a comment", tags=("- x", "[y]", "yes", "null", "123", "a: b")),
    example(thumbnail=None, author=None, link=None, source=None, guid=None, extra=freeze({}),
            body=""),
    example(body="---\n\nnot front matter\n\n---\n"),
])
def test_round_trip(item: Item) -> None:
    text = render_item(item)
    assert read_item(text, SHANGHAI) == item
    assert render_item(read_item(text, SHANGHAI)) == text  # and back: same bytes


def test_lone_surrogates_are_written_as_replacement_characters() -> None:
    item = example(title="a\ud800b", body="x\udc00y\n")
    text = render_item(item)
    text.encode("utf-8")  # writable
    back = read_item(text, SHANGHAI)
    assert (back.title, back.body) == ("a\ufffdb", "x\ufffdy\n")


def seed_form(date_line: str, extra: str = "") -> str:
    return f'---\ntitle: "t"\n{date_line}\n{extra}---\n\nbody\n'


@pytest.mark.parametrize(("date_line", "expected"), [
    ('date: "2025-02-14 10:49:11"', datetime(2025, 2, 14, 10, 49, 11, tzinfo=CST)),  # the seed's
    ("date: 2025-02-14 10:49:11", datetime(2025, 2, 14, 10, 49, 11, tzinfo=CST)),  # YAML timestamp
    ("date: 2025-02-14T10:49:11Z", datetime(2025, 2, 14, 10, 49, 11, tzinfo=UTC)),
    ('date: "2025-02-14T10:49:11Z"', datetime(2025, 2, 14, 10, 49, 11, tzinfo=UTC)),
    ("date: 2025-02-14T10:49:11-05:00",
     datetime(2025, 2, 14, 10, 49, 11, tzinfo=timezone(timedelta(hours=-5)))),
    ('date: "2025-02-14T10:49:11.5+08:00"', datetime(2025, 2, 14, 10, 49, 11, 500000, tzinfo=CST)),
    ("date: 2025-02-14", datetime(2025, 2, 14, tzinfo=CST)),
    ('date: "2025-02-14"', datetime(2025, 2, 14, tzinfo=CST)),
    ('date: "Fri, 14 Feb 2025 10:49:11 +0000"',
     datetime(2025, 2, 14, 10, 49, 11, tzinfo=UTC)),
])
def test_read_accepts_hugo_date_forms(date_line: str, expected: datetime) -> None:
    item = read_item(seed_form(date_line), SHANGHAI)
    assert item.date == expected
    assert item.date.utcoffset() is not None


def test_naive_dates_take_the_site_time_zone() -> None:
    text = seed_form('date: "2025-02-14 10:49:11"')
    assert read_item(text, ZoneInfo("UTC")).date.isoformat() == "2025-02-14T10:49:11+00:00"
    assert read_item(text, SHANGHAI).date.isoformat() == "2025-02-14T10:49:11+08:00"


@pytest.mark.parametrize(("value", "expected"), [
    (date(2025, 2, 14), datetime(2025, 2, 14, tzinfo=CST)),
    ("2025-02-14T10:49:11z", datetime(2025, 2, 14, 10, 49, 11, tzinfo=UTC)),
    ("", None), ("   ", None), ("soon", None), (None, None), (12345, None), ([2025], None),
])
def test_parse_date(value: object, expected: datetime | None) -> None:
    assert parse_date(value, SHANGHAI) == expected


def test_read_json_front_matter() -> None:
    text = ('{\n  "title": "JSON item",\n  "date": "2025-02-14T10:49:11+08:00",\n'
            '  "tags": ["a", "b"],\n  "sidebar": "right"\n}\n\nThe body.\n')
    item = read_item(text, SHANGHAI)
    assert (item.title, item.tags, item.body) == ("JSON item", ("a", "b"), "The body.\n")
    assert item.date == datetime(2025, 2, 14, 10, 49, 11, tzinfo=CST)
    assert dict(item.extra) == {"sidebar": "right"}


def test_read_toml_front_matter() -> None:
    text = ('+++\ntitle = "TOML item"\ndate = 2025-02-14T10:49:11+08:00\n'
            'tags = ["a", "b"]\ntoc = false\n+++\n\nThe body.\n')
    item = read_item(text, SHANGHAI)
    assert (item.title, item.tags, item.body) == ("TOML item", ("a", "b"), "The body.\n")
    assert item.date == datetime(2025, 2, 14, 10, 49, 11, tzinfo=CST)
    assert dict(item.extra) == {"toc": False}
    naive = read_item('+++\ndate = 2025-02-14 10:49:11\n+++\n', SHANGHAI, "x/name.md")
    assert naive.date == datetime(2025, 2, 14, 10, 49, 11, tzinfo=CST)


@pytest.mark.parametrize("text", [
    '\ufeff---\ntitle: "t"\ndate: 2025-02-14\n---\nbody\n',  # a BOM from a Windows editor
    '---\r\ntitle: "t"\r\ndate: 2025-02-14\r\n---\r\nbody\r\n',  # CRLF
])
def test_read_tolerates_editor_habits(text: str) -> None:
    item = read_item(text, SHANGHAI)
    assert item.title == "t" and item.date == datetime(2025, 2, 14, tzinfo=CST)


def test_read_hand_written_file_without_title_or_links() -> None:
    item = read_item("---\ndate: 2025-02-14\ntags: 医疗\n---\nbody\n", SHANGHAI, "qq/my-post.md")
    assert item.title == "my-post"  # from the file name, as Hugo would show something
    assert item.tags == ("医疗",)
    assert (item.link, item.guid, item.source, item.all_sources) == (None, None, None, ())


@pytest.mark.parametrize(("text", "message"), [
    ("no front matter\n", "no front matter (the file must start with ---, +++ or {)"),
    ("", "no front matter (the file must start with ---, +++ or {)"),
    ("---\ntitle: [a\ndate: x\n---\n", "invalid front matter: "),
    ("---\n- a\n- b\n---\nbody", "front matter is not a mapping of keys"),
    ("---\njust text\n---\nbody", "front matter is not a mapping of keys"),
    ('{"title": "x"', "no front matter (the file must start with ---, +++ or {)"),
    ("+++\ntitle = \n+++\n", "invalid front matter: "),
    ("---\ntitle: a\n---\nbody", "no date in the front matter"),
    ("---\ntitle: a\ndate:\n---\nbody", "no date in the front matter"),
    ("---\ntitle: a\ndate: soon\n---\nbody", "date: cannot read 'soon' as a date"),
    ("---\ntitle: a\ndate: ''\n---\nbody", "date: cannot read '' as a date"),
    ("---\ntitle: a\ndate: 12345\n---\nbody", "date: cannot read 12345 as a date"),
    ("---\ntitle: a\ndate: 2025-13-45\n---\nbody", "invalid front matter: month must be in 1..12"),
    ("---\ntitle: {a: 1}\ndate: 2025-02-14\n---\n", "title: expected text, got dict"),
    ("---\ntitle: a\ndate: 2025-02-14\ntags: {a: 1}\n---\n", "tags: expected a list, got dict"),
    ("---\ntitle: a\ndate: 2025-02-14\ncategories: [[1]]\n---\n",
     "categories: expected text, got [1]"),
    ("---\ntitle: a\ndate: 2025-02-14\nlink: [x]\n---\n", "link: expected text, got list"),
])
def test_read_rejects_broken_files_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        read_item(text, SHANGHAI)
    if message.endswith(": "):
        assert str(caught.value).startswith(message)
    else:
        assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_shipped_seed_file_reads() -> None:
    seeds = sorted((REPO / "store" / "seed").glob("*.md"))
    assert seeds
    for path in seeds:
        item = read_item(path.read_text(encoding="utf-8"), SHANGHAI, str(path))
        assert item.title.startswith("市一院上线大模型辅助诊断系统")
        assert item.date == datetime(2025, 2, 14, 10, 49, 11, tzinfo=CST)
        assert item.summary and len(item.summary) <= 200
        assert (item.categories, item.lang) == (("医疗",), ("zh-CN",))
        assert item.tags == ("人工智能", "大模型", "医疗")
        assert item.thumbnail == "https://example.org/img/seed.jpg"
        assert (item.link, item.guid, item.source) == (None, None, None)
        assert list(item.extra) == ["translations", "menu", "lead", "comments", "authorbox",
                                    "pager", "toc", "mathjax", "sidebar", "widgets"]
        assert item.extra["widgets"] == ["search", "recent", "taglist"]
        assert re.search(r"\n\[[^\]]+\]\(https?://[^)]+\)\n$", item.body)  # ends with the link


# -- item_path ----------------------------------------------------------------------------
D = datetime(2025, 2, 14, 10, 0, tzinfo=SHANGHAI)


@pytest.mark.parametrize(("title", "link", "dated", "expected"), [
    ("Hello, World!", None, True, r"qq/2025-02-14-hello-world-[0-9a-f]{10}\.md"),
    ("Hello, World!", None, False, r"qq/hello-world-[0-9a-f]{10}\.md"),
    ("三家医院接入大模型辅助诊断", "https://e.org/a/20250214-001.html", True,
     r"qq/2025-02-14-20250214-001-[0-9a-f]{10}\.md"),  # Chinese title: the link's name says more
    ("三家医院接入大模型辅助诊断", None, True, r"qq/2025-02-14-[0-9a-f]{10}\.md"),
    ("三家医院接入大模型辅助诊断", "https://e.org/新闻/中文.html", True,
     r"qq/2025-02-14-[0-9a-f]{10}\.md"),
    ("三家医院", "http://[broken", True, r"qq/2025-02-14-[0-9a-f]{10}\.md"),  # no crash
    ("AI 辅助诊断进入三甲医院", "https://e.org/", True, r"qq/2025-02-14-ai-[0-9a-f]{10}\.md"),
    ("Ünïcödé café", None, True, r"qq/2025-02-14-unicode-cafe-[0-9a-f]{10}\.md"),
    ("../../etc/passwd", None, False, r"qq/etc-passwd-[0-9a-f]{10}\.md"),
    ("CON", None, False, r"qq/con-[0-9a-f]{10}\.md"),
    ("...", None, False, r"qq/[0-9a-f]{10}\.md"),
    ("", None, False, r"qq/[0-9a-f]{10}\.md"),
    ("x" * 500, None, True, r"qq/2025-02-14-x{60}-[0-9a-f]{10}\.md"),
])
def test_item_path(title: str, link: str | None, dated: bool, expected: str) -> None:
    path = item_path("qq", Item(title=title, date=D, link=link), f"id:qq\x00{title}", dated)
    assert re.fullmatch(expected, path), path
    assert is_safe_relative(path)
    assert len(path.split("/")[-1].encode()) <= MAX_NAME_BYTES
    # Stable: the same item and key give the same path.
    assert path == item_path("qq", Item(title=title, date=D, link=link), f"id:qq\x00{title}",
                             dated)


def test_item_path_is_unique_per_key() -> None:
    item = Item(title="Same title", date=D)
    paths = {item_path("qq", item, f"id:qq\x00{n}", True) for n in range(2000)}
    assert len(paths) == 2000


@pytest.mark.parametrize(("path", "safe"), [
    ("qq/2025-02-14-a-0123456789.md", True),
    ("a.md", True),
    ("../a.md", False),
    ("qq/../a.md", False),
    ("./a.md", False),
    ("/abs.md", False),
    ("qq//a.md", False),
    ("qq/a b.md", False),
    ("qq/中文.md", False),
    ("qq\\a.md", False),
    ("qq/a\x00.md", False),
    ("qq/" + "a" * 148 + ".md", False),
    ("qq/" + "a" * 147 + ".md", True),
    ("", False),
])
def test_is_safe_relative(path: str, safe: bool) -> None:
    assert is_safe_relative(path) is safe


def test_store_refuses_unsafe_paths(tmp_path: Path) -> None:
    store = Store(tmp_path, "UTC")
    with pytest.raises(StoreError, match="unsafe store path refused"):
        store.write("../escape.md", b"x")
    assert not (tmp_path.parent / "escape.md").exists()


# -- atomic writes ------------------------------------------------------------------------
def test_write_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    target, tmp = tmp_path / "qq" / "a.md", tmp_path / ".aggregator" / "tmp"
    write_atomic(target, b"one", tmp)
    write_atomic(target, b"two", tmp)
    assert target.read_bytes() == b"two"
    assert list(tmp.iterdir()) == []


def test_write_atomic_failure_when_target_is_a_directory(tmp_path: Path) -> None:
    target, tmp = tmp_path / "qq" / "a.md", tmp_path / "tmp"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(StoreError) as caught:
        write_atomic(target, b"new", tmp)
    assert str(caught.value).startswith(f"{target}: cannot write: ")
    assert list(tmp.iterdir()) == []
    assert (target / "inside").is_dir()


def test_write_atomic_disk_full_keeps_the_old_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target, tmp = tmp_path / "a.md", tmp_path / "tmp"
    write_atomic(target, b"old", tmp)

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "replace", full)
    with pytest.raises(StoreError) as caught:
        write_atomic(target, b"new" * 1000, tmp)
    assert str(caught.value) == f"{target}: cannot write: disk full"
    assert isinstance(caught.value.__cause__, OSError)
    assert target.read_bytes() == b"old"
    assert list(tmp.iterdir()) == []


def test_write_atomic_interrupted_keeps_the_old_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target, tmp = tmp_path / "a.md", tmp_path / "tmp"
    write_atomic(target, b"old", tmp)

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new", tmp)
    assert target.read_bytes() == b"old"
    assert list(tmp.iterdir()) == []


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_sweep_removes_temp_files_of_dead_processes_only(tmp_path: Path) -> None:
    tmp_path.joinpath("sub").mkdir()
    dead = dead_pid()
    files = {
        f"{dead}-abc.tmp": False,  # its writer is gone: removed
        f"{os.getpid()}-mine.tmp": True,  # ours, maybe being written: kept
        f"{os.getppid()}-parent.tmp": True,  # a live process: kept
        "1-init.tmp": True,
        "junk.tmp": False,  # no pid: nobody can be writing it
    }
    for name in files:
        (tmp_path / name).write_bytes(b"partial")
    removed = sweep_temp_files(tmp_path)
    assert removed == 2
    for name, kept in files.items():
        assert (tmp_path / name).exists() is kept, name


def test_sweep_of_a_missing_folder() -> None:
    assert sweep_temp_files(Path("/nonexistent/aggregator/tmp")) == 0


def test_store_load_reports_broken_files(tmp_path: Path) -> None:
    store = Store(tmp_path, "Asia/Shanghai")
    (tmp_path / "qq").mkdir()
    (tmp_path / "qq" / "gbk.md").write_bytes("---\ntitle: 医疗\n---\n".encode("gbk"))
    (tmp_path / "qq" / "nodate.md").write_text("---\ntitle: x\n---\n", encoding="utf-8")
    (tmp_path / "qq" / "ok.md").write_text(render_item(example()), encoding="utf-8")
    with pytest.raises(StoreError, match=r"^qq/gbk.md: not UTF-8 \(byte \d+\)$"):
        store.load("qq/gbk.md")
    with pytest.raises(StoreError, match=r"^qq/nodate.md: no date in the front matter$"):
        store.load("qq/nodate.md")
    with pytest.raises(StoreError, match=r"^qq/missing.md: no such file$"):
        store.load("qq/missing.md")
    item, data = store.load("qq/ok.md")
    assert item == example() and data == render_item(example()).encode()
