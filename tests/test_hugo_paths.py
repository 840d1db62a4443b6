"""Hugo builds a site from the same store: its taxonomy feeds land in the same folders.

SPEC §4: `tags/<slug>/` and `categories/<slug>/` are the folders Hugo makes for the
term, so a Hugo site pointed at the store has its term feeds at our paths. This runs
the real `hugo` (skipped when it is not installed) on a temporary site whose
contentDir is a copy of a small store, and compares the folders holding an
index.xml with those `aggregator publish` wrote — for every term whose Hugo folder
is safe on disk (`is_safe_slug`); for the others we pick a safe folder ourselves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from aggregator.slug import hugo_urlize, is_safe_slug, term_slug
from tests.publish_helpers import publish, run_cli, write_config

pytestmark = pytest.mark.skipif(shutil.which("hugo") is None,
                                reason="hugo is not installed (apt-get install hugo)")

# (tags, categories) of each store file; every kind of term Hugo treats specially.
TERMS: list[tuple[list[str], list[str]]] = [
    (["人工智能", "大模型", "医疗"], ["医疗"]),
    (["AI 医疗", "Machine   Learning", "C#"], ["国内资讯", "Mixed Case"]),
    ([".NET", "R&D", "C++", "Node.js"], ["mixed case"]),
    (["AI", "ai", "e-mail", "@home", "~tilde", "under_score"], ["Research & Development"]),
    (["CON", "foo!bar", "50%", "café", "ΟΔΟΣ", "İstanbul"], ["研究 进展"]),
    (["A/B testing", "%41bc", "x\x1cy", "a\u200fb", "١٢٣", "\\", ".", "!!!"],
     ["国际 / 动态", "/"]),
]
# Not here: '..' and '../../etc', on which Hugo itself fails ("missing taxonomy");
# see test_hugo_builds_a_store_polled_from_a_hostile_feed.
SEED = """---
title: "手写的种子文章"
date: "2025-02-14 10:49:11"
summary: "种子文章没有 link、guid 和 source。"
categories:
  - "医疗"
lang:
  - "zh-CN"
translations: []
tags:
  - "人工智能"
  - "医学影像"
thumbnail: "https://example.org/img/seed.jpg"
menu: ""
comments: false
sidebar: "right"
---

正文。

![图片](https://example.org/img/seed.jpg)
"""
HUGO_CONFIG = """\
baseURL: http://127.0.0.1:8000/
languageCode: zh-CN
disableKinds: [home, section, sitemap, robotsTXT, "404"]
taxonomies:
  tag: tags
  category: categories
outputs:
  taxonomy: [RSS]
  term: [RSS]
cascade:
  - _target:
      kind: page
    _build:
      render: never
      list: always
"""


def _yaml_list(key: str, values: list[str]) -> str:
    return f"{key}:\n" + "".join(f"  - {json.dumps(v)}\n" for v in values)


def _store_file(n: int, tags: list[str], categories: list[str]) -> str:
    """An item as the aggregator writes it (SPEC §3)."""
    return (
        "---\n"
        f'title: "Item {n}"\n'
        f'date: "2025-02-{10 + n:02d}T09:00:00+08:00"\n'
        f'summary: "Summary {n}"\n'
        + _yaml_list("categories", categories)
        + _yaml_list("lang", ["zh-CN"])
        + _yaml_list("tags", tags)
        + f'link: "https://example.org/a/{n}"\n'
        f'source: "sample"\n'
        f'guid: "https://example.org/a/{n}"\n'
        "comments: false\n"
        "---\n\n"
        f"Body {n}.\n\n[Sample](https://example.org/a/{n})\n"
    )


def _term_folders(public: Path, taxonomy: str) -> dict[str, set[str]]:
    """{folder under public/<taxonomy>/: titles of its items}, for folders with an index.xml."""
    base = public / taxonomy
    out = {}
    for feed in base.rglob("index.xml"):
        folder = feed.parent.relative_to(base).as_posix()
        if folder == ".":
            continue  # the taxonomy's own list, not a term
        # recover: Hugo writes the term's name raw, even a control character XML forbids.
        root = etree.parse(str(feed), etree.XMLParser(recover=True)).getroot()
        out[folder] = {t.text for t in root.iter("title")} - {root.findtext("channel/title")}
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Hugo's public/, our public/) for the same store."""
    root = tmp_path_factory.mktemp("hugo-paths")
    store = root / "store" / "sample"
    store.mkdir(parents=True)
    for n, (tags, categories) in enumerate(TERMS, start=1):
        (store / f"item-{n}.md").write_text(_store_file(n, tags, categories), encoding="utf-8")
    (root / "store" / "seed").mkdir()
    (root / "store" / "seed" / "seed.md").write_text(SEED, encoding="utf-8")

    config = write_config(root, [{"id": "sample", "url": "https://example.org/feed.xml",
                                  "title": "Sample"}], language="zh-CN")
    publish(config)

    site = root / "site"
    site.mkdir()
    (site / "hugo.yaml").write_text(HUGO_CONFIG, encoding="utf-8")
    # A copy of the store's item files (not the derived data under store/.aggregator/).
    shutil.copytree(root / "store", site / "content",
                    ignore=shutil.ignore_patterns(".aggregator"))
    result = subprocess.run(["hugo", "--source", str(site), "--destination",
                             str(site / "public")], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
    return site / "public", root / "public"


def _all_terms(index: int) -> set[str]:
    terms = {t for entry in TERMS for t in entry[index]}
    return terms | ({"人工智能", "医学影像"} if index == 0 else {"医疗"})


@pytest.mark.parametrize(("taxonomy", "index"), [("tags", 0), ("categories", 1)])
def test_safe_term_folders_match_hugo(built: tuple[Path, Path], taxonomy: str,
                                      index: int) -> None:
    hugo_public, our_public = built
    hugo = _term_folders(hugo_public, taxonomy)
    ours = _term_folders(our_public, taxonomy)
    terms = _all_terms(index)
    safe = {hugo_urlize(t) for t in terms if is_safe_slug(hugo_urlize(t))}
    assert safe, "the store should have terms with safe Hugo folders"

    hugo_safe = {f for f in hugo if is_safe_slug(f)}
    assert hugo_safe == safe, "hugo_urlize() does not predict Hugo's folders"
    missing = sorted(hugo_safe - ours.keys())
    assert not missing, f"Hugo has {taxonomy} feeds we do not: {missing}"
    # Our other folders are the safe ones we derived for terms Hugo could not place.
    derived = {term_slug(t) for t in terms if not is_safe_slug(hugo_urlize(t))}
    assert ours.keys() - hugo_safe == derived


@pytest.mark.parametrize("taxonomy", ["tags", "categories"])
def test_same_items_under_each_term(built: tuple[Path, Path], taxonomy: str) -> None:
    """Hugo merges terms the way we do ('AI' and 'ai', 'Mixed Case' and 'mixed case')."""
    hugo_public, our_public = built
    hugo = _term_folders(hugo_public, taxonomy)
    ours = _term_folders(our_public, taxonomy)
    for folder in sorted(f for f in hugo if is_safe_slug(f)):
        assert hugo[folder] == ours[folder], folder


def test_unsafe_hugo_folders_are_not_ours(built: tuple[Path, Path]) -> None:
    """'A/B testing' makes Hugo write tags/a/b-testing/; we never nest folders."""
    hugo_public, our_public = built
    assert (hugo_public / "tags" / "a" / "b-testing" / "index.xml").is_file()
    assert not (our_public / "tags" / "a").exists()
    assert (our_public / "tags" / term_slug("A/B testing") / "index.xml").is_file()
    assert "/" not in term_slug("A/B testing")


HOSTILE_RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Hostile</title><link>https://example.org/</link>
<description>d</description>
<item><title>One</title><link>https://example.org/1</link><guid>h-1</guid>
<pubDate>Fri, 14 Feb 2025 02:00:00 GMT</pubDate>
<category>../../etc</category><category>..</category><category>../x</category></item>
</channel></rss>
"""


def test_hugo_builds_a_store_polled_from_a_hostile_feed(tmp_path: Path) -> None:
    (tmp_path / "hostile.xml").write_text(HOSTILE_RSS, encoding="utf-8")
    config = write_config(tmp_path, [{"id": "hostile", "url": "hostile.xml"}])

    polled = run_cli(config, "poll")
    assert polled.returncode == 0, polled.stderr
    site = tmp_path / "site"
    site.mkdir()
    (site / "hugo.yaml").write_text(HUGO_CONFIG, encoding="utf-8")
    shutil.copytree(tmp_path / "store", site / "content",
                    ignore=shutil.ignore_patterns(".aggregator"))
    result = subprocess.run(["hugo", "--source", str(site), "--destination",
                             str(site / "public")], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    outside = [p for p in (site / "public").rglob("index.xml")
               if p.parent.parent.name not in ("tags", "categories")
               and p.parent.name not in ("tags", "categories")]
    assert not outside, outside
