"""An incremental publish writes exactly what a publish from scratch would.

publish() regroups only the feeds a change touched (the index keeps each file's feed
memberships). The oracle is the same store published with every cache dropped into
an empty directory: after each round of random changes, the two output trees must be
byte-identical. The changes are the ones that move items between feeds: new, edited,
re-dated, deleted, drafted and broken files; a term spelt a new way ('AI' beside
'ai'), terms whose folders collide; a second source listing an item (the index, not
the file, says so); and a publish that dies half-way.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator import publish as publish_module
from aggregator.config import load_config
from aggregator.index import ItemRecord
from aggregator.model import Item
from aggregator.pipeline import Workspace
from aggregator.publish import publish
from aggregator.slug import term_slug
from aggregator.store import render_item
from tests.publish_helpers import write_config

SOURCES = ["alpha", "beta", "gamma"]  # configured; "ghost" is not
# Spellings of one Hugo term ('AI'/'ai', 'A/B'/'a/b'), a tag spelt as another's derived
# folder, Chinese, and traps for paths and URLs.
TAGS = ["AI", "ai", "A/B", "a/b", "人工智能", "医疗", "C#", ".NET", "R&D", "x y",
        term_slug("A/B"), "深度 学习", "plain"]
CATEGORIES = ["新闻", "News", "news", "Research", "..dots"]
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _config(root: Path, output: str) -> Path:
    folder = root / output
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, [{"id": s, "url": f"http://127.0.0.1:9/{s}.xml"}
                                 for s in SOURCES], keep_items=3)
    text = path.read_text(encoding="utf-8").replace("store: store", f"store: {root / 'store'}")
    path.write_text(text, encoding="utf-8")
    return path


def _item(rng: random.Random, n: int) -> Item:
    source = rng.choice([*SOURCES, "ghost", None])
    return Item(
        title=f"Item {n} 条目",
        # few distinct dates: ties are broken by path, and that must hold too
        date=BASE + timedelta(hours=rng.randrange(12)),
        summary="",
        tags=tuple(rng.sample(TAGS, rng.randrange(0, 4))),
        categories=tuple(rng.sample(CATEGORIES, rng.randrange(0, 3))),
        link=f"https://example.org/{n}",
        source=source,
        guid=f"urn:test:{n}",
        body=f"Body of item {n}, with a [link](https://example.org/{n}/more).",
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".aggregator-tmp" not in p.parts}


def _from_scratch(root: Path, round_no: int) -> dict[str, bytes]:
    """The oracle: a copy of the store (and its index), every publish cache dropped."""
    copy = root / f"scratch{round_no}"
    shutil.copytree(root / "store", copy / "store")
    config_path = _config(copy, "site")
    config = load_config(config_path)
    with Workspace(config) as ws:
        ws.index.clear_publish_caches()
        for key in ("publish_state", "publish_fingerprint", "publish_slugs"):
            ws.index.set_meta(key, "")
        publish(ws)
    tree = _tree(config.output_dir)
    shutil.rmtree(copy)
    return tree


def _change(rng: random.Random, store: Path, ws: Workspace, files: dict[str, Item],
            counter: list[int], churn: float = 0.2) -> None:
    """One round of random changes to the store and to who lists what; ``churn``: the
    share of touched files deleted (high: terms and their feeds come and go)."""
    for _ in range(rng.randrange(1, 6)):
        counter[0] += 1
        rel = f"posts/item-{counter[0]}.md"
        files[rel] = _item(rng, counter[0])
    live = sorted(files)
    for rel in rng.sample(live, min(len(live), rng.randrange(0, 4 + int(churn * 10)))):
        roll = rng.random()
        item = files[rel]
        if roll < churn:
            del files[rel]
            (store / rel).unlink(missing_ok=True)
            continue
        if roll < 0.4 + churn:
            item = replace(item, tags=tuple(rng.sample(TAGS, rng.randrange(0, 4))))
        elif roll < 0.55:
            item = replace(item, date=BASE + timedelta(hours=rng.randrange(12)))
        elif roll < 0.7:
            item = replace(item, categories=tuple(rng.sample(CATEGORIES, 1)))
        elif roll < 0.8:
            item = replace(item, extra={"draft": not item.extra.get("draft")})
        elif roll < 0.9:
            (store / rel).parent.mkdir(parents=True, exist_ok=True)
            (store / rel).write_text("---\ntitle: [broken\n---\n", encoding="utf-8")
            files[rel] = replace(item, title="(broken)")
            continue
        else:
            item = replace(item, title=item.title + " (edited)")
        files[rel] = item
    for rel, item in files.items():
        if item.title != "(broken)":
            path = store / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            text = render_item(item)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
    # Another source starts listing an item: the file stays as it is.
    if files and rng.random() < 0.6:
        rel = rng.choice(sorted(files))
        with ws.index.transaction() as db:
            ws.index.record_item(db, ItemRecord(rel, files[rel].source, None, 0, False),
                                 [f"test:{rel}"], {rng.choice(SOURCES): None})
    # ... or stops (the poll forgets a listing when an item is merged away).
    if rng.random() < 0.2:
        with ws.index.transaction() as db:
            db.execute("DELETE FROM item_sources WHERE rowid = (SELECT max(rowid) FROM "
                       "item_sources)")


@pytest.mark.parametrize(("seed", "churn"), [(seed, 0.2) for seed in range(4)]
                         + [(seed, 0.5) for seed in range(4, 10)])
def test_incremental_publish_equals_a_publish_from_scratch(tmp_path: Path, seed: int,
                                                           churn: float) -> None:
    rng = random.Random(seed)
    config = load_config(_config(tmp_path, "site"))
    files: dict[str, Item] = {}
    counter = [0]
    with Workspace(config) as ws:
        for round_no in range(10):
            _change(rng, tmp_path / "store", ws, files, counter, churn)
            result = publish(ws)
            incremental = _tree(config.output_dir)
            assert incremental == _from_scratch(tmp_path, round_no), f"round {round_no}"
            assert result.items == sum(1 for i in files.values() if i.title != "(broken)"
                                       and not i.extra.get("draft"))


def test_a_publish_that_dies_half_way_is_finished_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first publish records what changed in the index, then dies before writing the
    feeds: the next one must not take the store as already published."""
    rng = random.Random(99)
    config = load_config(_config(tmp_path, "site"))
    files: dict[str, Item] = {}
    counter = [0]
    with Workspace(config) as ws:
        _change(rng, tmp_path / "store", ws, files, counter)
        publish(ws)
        for _ in range(3):
            _change(rng, tmp_path / "store", ws, files, counter)

        def dies(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(publish_module, "refresh_fragments", dies)
        with pytest.raises(KeyboardInterrupt):
            publish(ws)
        monkeypatch.undo()
        publish(ws)
        assert _tree(config.output_dir) == _from_scratch(tmp_path, 0)


@pytest.mark.parametrize("change_store", [False, True])
def test_an_output_file_deleted_by_hand_comes_back(tmp_path: Path, change_store: bool) -> None:
    """Whether the store is unchanged (the publish's early way out) or changed elsewhere
    (only touched feeds are regrouped), a feed file missing from the output is rebuilt."""
    rng = random.Random(7)
    config = load_config(_config(tmp_path, "site"))
    files: dict[str, Item] = {}
    counter = [0]
    with Workspace(config) as ws:
        for _ in range(3):
            _change(rng, tmp_path / "store", ws, files, counter, churn=0.0)
        publish(ws)
        before = _tree(config.output_dir)
        victims = [name for name in before if name.startswith("tags/") and
                   name.endswith("/atom.xml")][:2] + ["feed.json"]
        assert len(victims) == 3
        for name in victims:
            (config.output_dir / name).unlink()
        if change_store:  # a new item in a feed the deleted files are not in
            counter[0] += 1
            (tmp_path / "store" / "posts").mkdir(parents=True, exist_ok=True)
            (tmp_path / "store" / "posts" / "late.md").write_text(render_item(replace(
                _item(rng, counter[0]), tags=(), categories=(), source=None)), "utf-8")
        publish(ws)
        after = _tree(config.output_dir)
    for name in victims:
        assert name in after, name
        if not change_store or name != "feed.json":
            assert after[name] == before[name], name
