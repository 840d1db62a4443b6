"""Deterministic feed corpus for the benchmark.

    python bench/corpus.py DIR --feeds N --items M [--seed S]   # generate
    python bench/corpus.py DIR --mutate K                       # add 2 items to K % of feeds

N feeds x M items, the same bytes for the same (seed, N, M): 70 % RSS 2.0,
25 % Atom 1.0, 5 % RSS 1.0; half the feeds in Chinese. Every item has a
guid, a link, a date, 1-3 categories from a fixed pool of 2,000 names (about
850 Chinese, plus traps such as ``C#``, ``A/B testing``, ``.NET``, ``R&D``),
an author and about 2 KB of HTML with two images and a link.

``--mutate K`` adds two new (newest) items to K % of the feeds, chosen from
the seed and the mutation number, and rewrites only those files: the others
keep their bytes and their mtime, so nginx answers 304 for them.

Feeds are written as ``DIR/feeds/fNNNNN.xml``; ``DIR/manifest.json`` records
the parameters and the mutations. The module also renders each item as a
store file (SPEC section 3), for building a store without polling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

POOL_SIZE = 2000
N_CATEGORIES = 50
BASE_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CN_TZ = dt.timezone(dt.timedelta(hours=8))
US_TZ = dt.timezone(dt.timedelta(hours=-5))

# --- vocabulary ------------------------------------------------------------


def _words(text: str, sep: str | None = None) -> list[str]:
    return text.split(sep)


_ZH_WORDS = _words(
    "医疗 人工 智能 影像 诊断 药物 基因 临床 医院 数据 模型 算法 芯片 手术 机器 健康 保险 研究 "
    "疫苗 癌症 心脏 大脑 睡眠 营养 康复 护理 远程 监测 筛查 治疗 监管 政策 投资 融资 创新 平台 "
    "云端 安全 隐私 伦理"
)
_ZH_TEXT = (
    "近日多家三甲医院宣布接入大模型辅助诊断系统医生表示该系统在影像识别病历整理和随访管理方面"
    "显著提升了效率专家认为人工智能将在未来五年内深刻改变医疗服务的形态但数据安全与患者隐私仍是"
    "必须解决的问题监管部门正在制定相关标准以规范算法的临床应用研究团队发布的论文显示模型在肺结节"
    "检测任务上的准确率已接近资深放射科医生水平同时也有学者提醒不应过度依赖自动化工具"
)
_ZH_PUNCT = "，。；、"
_EN_ADJ = _words(
    "clinical digital remote mobile open federated generative predictive precision personal "
    "public global rural urban neural quantum smart secure private virtual wearable cloud "
    "edge real-time large small early chronic acute mental cardiac genomic robotic surgical "
    "medical visual spoken multimodal synthetic automated explainable"
)
_EN_NOUN = _words(
    "health imaging diagnosis screening trials care records models agents devices sensors "
    "networks policy funding startups research ethics privacy safety data analytics triage "
    "pathology radiology oncology cardiology genomics pharmacy nursing hospitals insurance "
    "regulation standards benchmarks datasets chips robots surgery therapy vaccines"
)
_EN_TEXT = _words(
    "the of and a to in is that for on with as was by at from hospital model patients doctors "
    "study data system results clinical trial researchers said new accuracy approval health "
    "image diagnosis early detection risk care team report year million percent device "
    "algorithm training public safety privacy regulators announced week launched tool "
    "scan reading workflow outcomes evidence review large language cancer heart"
)
_ZH_NAMES = _words("张伟 王芳 李娜 刘洋 陈静 杨磊 赵敏 黄强 周杰 吴婷 徐明 孙丽")
_EN_NAMES = _words(
    "Alice Chen;Bob Smith;Carol Jones;Dan Brown;Eve Miller;Frank Wu;Grace Lee;Henry Park", ";"
)

TRAPS = [
    "C#", "A/B testing", ".NET", "R&D", "C++", "F#", "Q&A", "TCP/IP", "AT&T", "I/O",
    "Node.js", "ASP.NET", "Wi-Fi", "e-Health", "COVID-19", "5G医疗", "AI制药", "人工智能/AI",
    "Dr. Watson", "<b>bold</b>", "100%", "$100M", "50/50", "what?", "#hashtag", "@mention",
    "~tilde", "under_score", "AI", "ai", "Machine Learning", "machine learning",
    "deep  learning", " padded ", "naïve Bayes", "Ünïcödé", "Москва", "東京", "😀 emoji",
    "CON", "..foo", "x'y\"z", "Tab\there", "plus+sign", "a.b.c", "GPT-4o", "Llama 3",
    "医疗 AI", "医疗AI", "医疗-AI",
]


def category_pool() -> list[str]:
    """The 2,000 item category names: about 850 Chinese, the traps, the rest English."""
    rng = random.Random("bench-category-pool")
    zh = [a + b for a in _ZH_WORDS for b in _ZH_WORDS if a != b]
    rng.shuffle(zh)
    zh = zh[: 850 - sum(1 for t in TRAPS if any("\u4e00" <= c <= "\u9fff" for c in t))]
    en = [f"{a} {b}" for a in _EN_ADJ for b in _EN_NOUN]
    rng.shuffle(en)
    en = [e.title() if i % 5 == 0 else e for i, e in enumerate(en)]
    pool: list[str] = []
    seen: set[str] = set()
    for name in TRAPS + zh + en:
        if name not in seen:
            seen.add(name)
            pool.append(name)
        if len(pool) == POOL_SIZE:
            break
    return pool


def source_categories() -> list[str]:
    """The 50 source categories (``categories:`` in feeds.yaml), half Chinese."""
    zh = [a + b for a, b in zip(_ZH_WORDS[:25], _ZH_WORDS[15:40], strict=True)]
    en = [f"{a}-{b}" for a, b in zip(_EN_ADJ, _EN_NOUN, strict=False)][:25]
    return [x for pair in zip(zh, en, strict=True) for x in pair]


POOL = category_pool()
SOURCE_CATEGORIES = source_categories()


# --- the model -------------------------------------------------------------


@dataclass
class Item:
    feed: int
    n: int
    zh: bool
    title: str
    link: str
    guid: str
    date: dt.datetime
    author: str
    categories: list[str]
    summary: str
    paragraphs: list[str]
    images: list[str]
    ref: tuple[str, str]  # (href, text)

    def html(self) -> str:
        p = self.paragraphs
        href, text = self.ref
        return (
            f"<p>{escape(p[0])}</p>\n"
            f'<p><img src="{self.images[0]}" alt="{escape(self.title)}" width="640"></p>\n'
            f"<p><strong>{escape(p[1][:20])}</strong>{escape(p[1][20:])} "
            f'<a href="{href}">{escape(text)}</a> {escape(p[2])}</p>\n'
            f'<figure><img src="{self.images[1]}" alt=""><figcaption>{escape(p[3][:30])}'
            f"</figcaption></figure>\n"
            f"<ul><li>{escape(p[3][30:80])}</li><li><em>{escape(p[3][80:])}</em></li></ul>\n"
            f"<p>{escape(p[4])}</p>"
        )

    def markdown(self) -> str:
        """The body as the store keeps it (SPEC section 3)."""
        p = self.paragraphs
        href, text = self.ref
        return (
            f"{p[0]}\n\n![{self.title}]({self.images[0]})\n\n"
            f"**{p[1][:20]}**{p[1][20:]} [{text}]({href}) {p[2]}\n\n"
            f"![]({self.images[1]})\n\n{p[3][:30]}\n\n"
            f"- {p[3][30:80].strip()}\n- *{p[3][80:].strip()}*\n\n{p[4]}\n"
        )


@dataclass
class Feed:
    index: int
    fmt: str  # rss2 | atom | rss1
    zh: bool
    title: str
    site: str
    items: list[Item]  # newest first

    @property
    def id(self) -> str:
        return feed_id(self.index)


def feed_id(index: int) -> str:
    return f"f{index:05d}"


def _zh_text(rng: random.Random, n: int) -> str:
    start = rng.randrange(len(_ZH_TEXT))
    out = []
    while sum(len(s) for s in out) < n:
        k = rng.randint(8, 20)
        seg = (_ZH_TEXT * 2)[start : start + k]
        start = (start + k * 7) % len(_ZH_TEXT)
        out.append(seg + rng.choice(_ZH_PUNCT))
    return "".join(out)[:n - 1] + "。"


def _en_text(rng: random.Random, n: int) -> str:
    words = []
    total = 0
    while total < n:
        w = rng.choice(_EN_TEXT)
        words.append(w)
        total += len(w) + 1
    s = " ".join(words)
    return s[0].upper() + s[1 : n - 1] + "."


def feed_format(index: int, seed: int, n_feeds: int) -> str:
    """Exactly 70/25/5 % over the corpus, shuffled by the seed."""
    n_atom = round(n_feeds * 0.25)
    n_rss1 = round(n_feeds * 0.05)
    pos = _position(seed, n_feeds)[index]
    if pos < n_atom:
        return "atom"
    if pos < n_atom + n_rss1:
        return "rss1"
    return "rss2"


_POSITIONS: dict[tuple[int, int], list[int]] = {}


def _position(seed: int, n_feeds: int) -> list[int]:
    key = (seed, n_feeds)
    if key not in _POSITIONS:
        order = list(range(n_feeds))
        random.Random(f"{seed}:formats:{n_feeds}").shuffle(order)
        pos = [0] * n_feeds
        for p, i in enumerate(order):
            pos[i] = p
        _POSITIONS[key] = pos
    return _POSITIONS[key]


def make_item(seed: int, feed: int, n: int, zh: bool, site: str) -> Item:
    rng = random.Random(f"{seed}:{feed}:{n}")
    date = BASE_DATE + dt.timedelta(hours=6 * n, minutes=feed % 360, seconds=rng.randrange(60))
    fid = feed_id(feed)
    if zh:
        title = f"{rng.choice(_ZH_WORDS)}{rng.choice(_ZH_WORDS)}：{_zh_text(rng, 18)}"
        paragraphs = [_zh_text(rng, k) for k in (150, 130, 110, 160, 120)]
        author = rng.choice(_ZH_NAMES)
        ref = (f"https://ref.example.cn/{fid}/{n}", "查看原文报道")
    else:
        title = _en_text(rng, 60).rstrip(".")
        paragraphs = [_en_text(rng, k) for k in (420, 380, 300, 400, 330)]
        author = rng.choice(_EN_NAMES)
        ref = (f"https://ref.example.com/{fid}/{n}?from=rss", "the full report")
    link = f"https://{site}/news/{fid}-{n:04d}.html"
    if n % 7 == 3:
        link += "?utm_source=rss&utm_medium=feed"
    guid = link if n % 2 else f"urn:bench:{fid}:{n}"
    cats = rng.sample(POOL, rng.randint(1, 3))
    images = [
        f"https://img.{site}/{fid}/{n}-1.jpg",
        f"https://img.{site}/{fid}/{n}-2.png",
    ]
    summary = paragraphs[0][:120]
    return Item(feed, n, zh, title, link, guid, date, author, cats, summary, paragraphs,
                images, ref)


def make_feed(seed: int, index: int, n_feeds: int, n_items: int, extra: int = 0) -> Feed:
    zh = index % 2 == 0
    fmt = feed_format(index, seed, n_feeds)
    site = f"site{index % 97}.example.{'cn' if zh else 'org'}"
    rng = random.Random(f"{seed}:{index}:feed")
    if zh:
        title = f"{rng.choice(_ZH_WORDS)}{rng.choice(_ZH_WORDS)}资讯 {index}"
    else:
        title = f"{rng.choice(_EN_ADJ).title()} {rng.choice(_EN_NOUN).title()} News {index}"
    items = [make_item(seed, index, n, zh, site) for n in range(n_items + extra - 1, -1, -1)]
    return Feed(index, fmt, zh, title, site, items)


# --- serialization ---------------------------------------------------------


def _rfc822(d: dt.datetime, zh: bool) -> str:
    d = d.astimezone(CN_TZ if zh else US_TZ)
    return d.strftime("%a, %d %b %Y %H:%M:%S %z")


def _iso(d: dt.datetime, zh: bool) -> str:
    return d.astimezone(CN_TZ if zh else US_TZ).isoformat()


def _cdata(s: str) -> str:
    return "<![CDATA[" + s.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render(feed: Feed, url: str) -> bytes:
    lang = "zh-CN" if feed.zh else "en-US"
    newest = feed.items[0].date if feed.items else BASE_DATE
    out: list[str] = ['<?xml version="1.0" encoding="utf-8"?>\n']
    t = escape(feed.title)
    if feed.fmt == "rss2":
        out.append(
            '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:atom="http://www.w3.org/2005/Atom">\n<channel>\n'
            f"<title>{t}</title>\n<link>https://{feed.site}/</link>\n"
            f"<description>{t} feed</description>\n<language>{lang}</language>\n"
            f'<atom:link href="{url}" rel="self" type="application/rss+xml"/>\n'
            f"<lastBuildDate>{_rfc822(newest, feed.zh)}</lastBuildDate>\n"
            "<generator>aggregator-bench</generator>\n"
        )
        for it in feed.items:
            perma = "true" if it.guid == it.link else "false"
            cats = "".join(f"<category>{escape(c)}</category>" for c in it.categories)
            if feed.zh:  # summary in description, full HTML in content:encoded
                body = (f"<description>{escape(it.summary)}</description>\n"
                        f"<content:encoded>{_cdata(it.html())}</content:encoded>\n")
            else:  # full HTML, escaped, in description
                body = f"<description>{escape(it.html())}</description>\n"
            out.append(
                f"<item>\n<title>{escape(it.title)}</title>\n<link>{escape(it.link)}</link>\n"
                f'<guid isPermaLink="{perma}">{escape(it.guid)}</guid>\n'
                f"<pubDate>{_rfc822(it.date, feed.zh)}</pubDate>\n"
                f"<dc:creator>{escape(it.author)}</dc:creator>\n{cats}\n{body}</item>\n"
            )
        out.append("</channel>\n</rss>\n")
    elif feed.fmt == "atom":
        out.append(
            f'<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="{lang}">\n'
            f"<title>{t}</title>\n<id>urn:bench:feed:{feed.id}</id>\n"
            f'<link rel="self" href="{url}"/>\n<link href="https://{feed.site}/"/>\n'
            f"<updated>{_iso(newest, feed.zh)}</updated>\n"
            f"<author><name>{t}</name></author>\n"
        )
        for it in feed.items:
            cats = "".join(f'<category term="{escape(c)}"/>' for c in it.categories)
            out.append(
                f"<entry>\n<title>{escape(it.title)}</title>\n<id>{escape(it.guid)}</id>\n"
                f'<link rel="alternate" type="text/html" href="{escape(it.link)}"/>\n'
                f"<published>{_iso(it.date, feed.zh)}</published>\n"
                f"<updated>{_iso(it.date, feed.zh)}</updated>\n"
                f"<author><name>{escape(it.author)}</name></author>\n{cats}\n"
                f"<summary>{escape(it.summary)}</summary>\n"
                f'<content type="html">{escape(it.html())}</content>\n</entry>\n'
            )
        out.append("</feed>\n")
    else:  # RSS 1.0
        lis = "".join(f'<rdf:li rdf:resource="{escape(it.link)}"/>' for it in feed.items)
        out.append(
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:content="http://purl.org/rss/1.0/modules/content/">\n'
            f'<channel rdf:about="{url}">\n<title>{t}</title>\n'
            f"<link>https://{feed.site}/</link>\n<description>{t} feed</description>\n"
            f"<dc:language>{lang}</dc:language>\n<dc:date>{_iso(newest, feed.zh)}</dc:date>\n"
            f"<items><rdf:Seq>{lis}</rdf:Seq></items>\n</channel>\n"
        )
        for it in feed.items:
            cats = "".join(f"<dc:subject>{escape(c)}</dc:subject>" for c in it.categories)
            out.append(
                f'<item rdf:about="{escape(it.link)}">\n<title>{escape(it.title)}</title>\n'
                f"<link>{escape(it.link)}</link>\n"
                f"<description>{escape(it.summary)}</description>\n"
                f"<content:encoded>{_cdata(it.html())}</content:encoded>\n"
                f"<dc:date>{_iso(it.date, feed.zh)}</dc:date>\n"
                f"<dc:creator>{escape(it.author)}</dc:creator>\n{cats}\n</item>\n"
            )
        out.append("</rdf:RDF>\n")
    return "".join(out).encode("utf-8")


def _yq(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def store_file(item: Item, source_title: str, source_category: str) -> str:
    """The item as a store file in the format of SPEC section 3."""
    fm = [
        "---",
        f"title: {_yq(item.title)}",
        f"date: {_yq(_iso(item.date, item.zh))}",
        f"summary: {_yq(item.summary)}",
        "categories:",
        f"  - {_yq(source_category)}",
        "lang:",
        f"  - {_yq('zh-CN' if item.zh else 'en-US')}",
        "tags:",
        *[f"  - {_yq(c)}" for c in dict.fromkeys(item.categories)],
        f"thumbnail: {_yq(item.images[0])}",
        f"author: {_yq(item.author)}",
        f"link: {_yq(item.link)}",
        f"source: {_yq(feed_id(item.feed))}",
        f"guid: {_yq(item.guid)}",
        "---",
        "",
        "",
    ]
    return "\n".join(fm) + item.markdown() + f"\n[{source_title}]({item.link})\n"


# --- corpus on disk --------------------------------------------------------


def feed_path(root: Path, index: int) -> Path:
    return root / "feeds" / f"{feed_id(index)}.xml"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _extras(manifest: dict) -> dict[int, int]:
    extra: dict[int, int] = {}
    for gen in manifest["mutations"]:
        for i in gen["feeds"]:
            extra[i] = extra.get(i, 0) + 2
    return extra


def generate(root: Path, n_feeds: int, n_items: int, seed: int, base_url: str = "") -> dict:
    """Write the corpus (unmutated). Files already holding the right bytes are left alone."""
    root = Path(root)
    (root / "feeds").mkdir(parents=True, exist_ok=True)
    old = load_manifest(root)
    old_extra = _extras(old) if old else {}
    total = 0
    for i in range(n_feeds):
        path = feed_path(root, i)
        data = render(make_feed(seed, i, n_feeds, n_items), feed_url(base_url, root, i))
        total += len(data)
        same = (old and old["seed"] == seed and old["feeds"] == n_feeds
                and old["items"] == n_items and old.get("base_url") == base_url
                and i not in old_extra and path.exists())
        if not same:
            _write(path, data)
    for stale in (root / "feeds").glob("f*.xml"):
        if int(stale.stem[1:]) >= n_feeds:
            stale.unlink()
    manifest = {"seed": seed, "feeds": n_feeds, "items": n_items, "base_url": base_url,
                "mutations": [], "bytes": total}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def feed_url(base_url: str, root: Path, index: int) -> str:
    if base_url:
        return f"{base_url.rstrip('/')}/feeds/{feed_id(index)}.xml"
    return feed_path(root, index).resolve().as_uri()


def mutate(root: Path, percent: float) -> list[int]:
    """Add two newest items to ``percent`` % of the feeds; rewrite only those files."""
    root = Path(root)
    m = load_manifest(root)
    if m is None:
        raise SystemExit(f"{root}: no manifest.json; generate the corpus first")
    n = m["feeds"]
    k = round(n * percent / 100)
    gen = len(m["mutations"])
    chosen = sorted(random.Random(f"{m['seed']}:mutate:{gen}").sample(range(n), k))
    m["mutations"].append({"percent": percent, "feeds": chosen})
    extra = _extras(m)
    for i in chosen:
        feed = make_feed(m["seed"], i, n, m["items"], extra.get(i, 0))
        _write(feed_path(root, i), render(feed, feed_url(m["base_url"], root, i)))
    (root / "manifest.json").write_text(json.dumps(m, indent=1))
    return chosen


def corpus_feeds(root: Path, only: list[int] | None = None) -> list[Feed]:
    """The feeds as they are now (with mutations), for building stores and checks."""
    m = load_manifest(root)
    if m is None:
        raise SystemExit(f"{root}: no manifest.json")
    extra = _extras(m)
    return [make_feed(m["seed"], i, m["feeds"], m["items"], extra.get(i, 0))
            for i in (only if only is not None else range(m["feeds"]))]


def write_store(root: Path, store: Path, feeds: list[Feed] | None = None) -> int:
    """Write the corpus as a store directly (no polling): one file per item."""
    feeds = feeds if feeds is not None else corpus_feeds(root)
    n = 0
    for f in feeds:
        d = store / f.id
        d.mkdir(parents=True, exist_ok=True)
        cat = SOURCE_CATEGORIES[f.index % N_CATEGORIES]
        for it in f.items:
            (d / f"{it.n:05d}.md").write_text(store_file(it, f.title, cat), encoding="utf-8")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--feeds", type=int, default=1000)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--base-url", default="", help="URL the corpus dir is served at")
    ap.add_argument("--mutate", type=float, metavar="K", help="add 2 items to K %% of feeds")
    ap.add_argument("--store", type=Path, help="also write the items as a store here")
    a = ap.parse_args(argv)
    if a.mutate is not None:
        chosen = mutate(a.dir, a.mutate)
        print(f"mutated {len(chosen)} feeds (+{2 * len(chosen)} items)")
    else:
        m = generate(a.dir, a.feeds, a.items, a.seed, a.base_url)
        print(f"{m['feeds']} feeds x {m['items']} items, {m['bytes'] / 1e6:.1f} MB")
    if a.store:
        print(f"{write_store(a.dir, a.store)} store files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
