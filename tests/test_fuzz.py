"""A bounded, seeded mutation fuzz of parse -> store -> publish (SPEC §6).

About 40 files of feedparser's well-formed corpus (../shared, skipped when absent)
and the shipped examples/feeds/ are mutated byte-wise (bits flipped, ranges deleted
or duplicated, '<', '&', ']]>', NUL, random UTF-8 and GBK bytes inserted) into 300
local sources of one config. One in-process poll and one publish: nothing raises, no
report says "internal error", every store file reads back, every published XML feed
parses with lxml and feedparser without complaint, and every JSON feed loads.

FUZZ_SEED=<n> replays another seed and FUZZ_MUTANTS=<n> makes more mutants; a failure
names the mutant's source id, its base file and its mutations, and the mutants are
left in the test's tmp_path.
"""

from __future__ import annotations

import logging
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.config import load_config
from aggregator.pipeline import Workspace, poll
from aggregator.publish import publish
from tests.helpers import CORPUS, REPO, read_store, write_config
from tests.test_hostile import output_problems

SEED = int(os.environ.get("FUZZ_SEED", "1729"))
BASE_FILES = 40
MUTANTS = int(os.environ.get("FUZZ_MUTANTS", "300"))
WELLFORMED = CORPUS / "wellformed"
EXAMPLES = REPO / "examples" / "feeds"

pytestmark = [
    pytest.mark.skipif(not WELLFORMED.is_dir(), reason=f"feedparser corpus not at {WELLFORMED}"),
    pytest.mark.timeout(180),
]

TOKENS = [b"<", b"&", b"]]>", b"\x00", b"<![CDATA[", b"&#0;", b"&#xD800;", b"&amp;",
          b"</item>", b"<item>", b"</entry>", b'"', b"'", b"\r\n", b"\xef\xbb\xbf",
          b"\xc0\xaf", b"\xed\xa0\x80", b"\xff\xfe", "医疗大模型".encode("gbk"),
          b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>', b"&a;", b"<script>alert(1)</script>",
          b"\\u0000", b'{"', b"]", b"}", b"null"]


def _random_text(rng: random.Random) -> bytes:
    """A few characters from ranges that trip parsers up, as UTF-8 or GBK."""
    ranges = [(0x20, 0x7E), (0x80, 0x9F), (0xA0, 0x24F), (0x4E00, 0x9FFF), (0x200B, 0x202E),
              (0xFFF0, 0xFFFF), (0x1F600, 0x1F64F), (0x0300, 0x036F)]
    chars = []
    for _ in range(rng.randint(1, 8)):
        low, high = rng.choice(ranges)
        chars.append(chr(rng.randint(low, high)))
    text = "".join(chars)
    if rng.random() < 0.3:
        return text.encode("gbk", "ignore")
    return text.encode("utf-8", "surrogatepass")


def _mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """1-4 random mutations of data; the bytes and what was done (for a failure message)."""
    done = []
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(buf) + 1)
        kind = rng.choice(["flip", "delete", "duplicate", "token", "text", "bytes"])
        if kind == "flip" and buf:
            at = min(at, len(buf) - 1)
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == "delete":
            length = rng.randint(1, 64)
            del buf[at:at + length]
            kind += f"[{length}]"
        elif kind == "duplicate":
            length = rng.randint(1, 256)
            buf[at:at] = buf[at:at + length]
            kind += f"[{length}]"
        elif kind == "token":
            token = rng.choice(TOKENS)
            buf[at:at] = token
            kind += f"[{token!r}]"
        elif kind == "text":
            text = _random_text(rng)
            buf[at:at] = text
            kind += f"[{text!r}]"
        else:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        done.append(f"{kind}@{at}")
    return bytes(buf), done


def _bases(rng: random.Random) -> list[Path]:
    """~40 corpus files that hold entries, plus the examples (weighted: they are the
    realistic ones, and the only JSON Feed)."""
    candidates = sorted(p for p in WELLFORMED.rglob("*") if p.is_file()
                        and (b"<item" in (data := p.read_bytes()) or b"<entry" in data))
    chosen = rng.sample(candidates, min(BASE_FILES, len(candidates)))
    examples = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".xml", ".json"))
    return chosen + examples * 4


def test_mutated_feeds_go_through_poll_and_publish(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(SEED)
    bases = _bases(rng)
    mutants = tmp_path / "mutants"
    mutants.mkdir()
    recipe: dict[str, str] = {}
    sources = []
    for n in range(MUTANTS):
        base = rng.choice(bases)
        data, done = _mutate(base.read_bytes(), rng)
        source_id = f"m{n:03d}"
        path = mutants / f"{source_id}{base.suffix}"
        path.write_bytes(data)
        recipe[source_id] = f"{source_id} (seed {SEED}): {base.name} {' '.join(done)}"
        sources.append({"id": source_id, "url": path.as_uri(), "tags": ["fuzz"],
                        "categories": [base.parent.name]})
    config = load_config(write_config(tmp_path, sources))

    def clock() -> datetime:
        return datetime.now(UTC)

    caplog.set_level(logging.WARNING)
    with Workspace(config) as ws:
        reports = poll(ws, config.sources, clock)
        result = publish(ws)

    assert len(reports) == MUTANTS
    bugs = [f"{recipe[r.id]}: {r.error}" for r in reports if "internal error" in (r.error or "")]
    assert not bugs, "\n".join(bugs)
    logged = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()
              or r.exc_info]
    assert not logged, "\n".join(logged)
    ok = [r for r in reports if r.status == "ok"]
    assert len(ok) > MUTANTS // 3, "the mutations left too few readable feeds to test"
    items = read_store(tmp_path / "store")  # every stored file reads back
    assert items
    assert result.broken == [] and result.failed == [], (result.broken, result.failed)
    assert result.items == len(items)
    problems = output_problems(tmp_path / "public")
    assert not problems, "\n".join(problems[:20])
