"""feedparser's sanitizer corpus, end to end: hostile HTML never reaches a published feed.

Every file of ../shared/corpus/feedparser/wellformed/sanitize/ (scripts, event
handlers, javascript: URLs, styles, iframes, embeds... in every element that can
carry HTML) becomes a local source of one config; one `poll`, one `publish`, then
every item's HTML in every published RSS, Atom and JSON feed is parsed with
lxml.html and must hold no dangerous element, attribute or URL. The feeds must also
stay well-formed: feedparser reads them without complaint and Atom passes RFC
4287's schema. Skipped when ../shared is absent (a user's own clone).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import feedparser
import pytest

from tests.publish_helpers import (
    SHARED,
    content_fragments,
    jing_errors,
    output_files,
    run_cli,
    unsafe_html,
    write_config,
)

CORPUS = SHARED / "corpus" / "feedparser" / "wellformed" / "sanitize"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(),
                                reason=f"feedparser's corpus is not here ({CORPUS})")


def _source_id(path: Path, seen: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-") or "case"
    source_id, n = base, 2
    while source_id in seen:
        source_id, n = f"{base}-{n}", n + 1
    seen.add(source_id)
    return source_id


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sanitize-corpus")
    seen: set[str] = set()
    files = sorted(CORPUS.iterdir())
    sources = [{"id": _source_id(f, seen), "url": f.as_uri(), "tags": ["corpus"]}
               for f in files if f.is_file()]
    config = write_config(root, sources, keep_items=50)
    polled = run_cli(config, "poll", "--json", timeout=600)
    assert polled.returncode in (0, 1), polled.stderr[-3000:]
    for text in (polled.stdout, polled.stderr):
        assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    published = run_cli(config, "publish", timeout=600)
    assert published.returncode == 0, published.stderr[-3000:]
    return root / "public"


def test_the_cases_were_published(output: Path) -> None:
    # Far fewer feeds than cases, rightly: cases with no entry (hostile feed-level
    # elements only) or none left once sanitized are skipped, and the many entries
    # that sanitize to the same "safe description" are one item listed by each source.
    sources = {f.split("/")[1] for f in output_files(output) if f.startswith("sources/")}
    assert len(sources) >= 50


def test_no_dangerous_html_in_any_published_content(output: Path) -> None:
    problems: Counter[str] = Counter()
    examples: dict[str, str] = {}
    fragments = 0
    for rel, where, html in content_fragments(output):
        fragments += 1
        for problem in unsafe_html(html):
            key = f"{problem} in {where}"
            problems[key] += 1
            examples.setdefault(key, f"{rel}: {html[:300]!r}")
    assert fragments > 500
    assert not problems, "\n".join(f"{n} x {k}\n    e.g. {examples[k]}"
                                   for k, n in problems.most_common(20))


def test_every_feed_is_still_well_formed(output: Path) -> None:
    bozo = []
    for rel in output_files(output):
        if rel.rsplit("/", 1)[-1] in ("index.xml", "atom.xml"):
            parsed = feedparser.parse((output / rel).read_bytes())
            if parsed.bozo:
                bozo.append(f"{rel}: {parsed.get('bozo_exception')}")
    assert not bozo, bozo[:20]


def test_atom_feeds_match_rfc4287_schema(output: Path) -> None:
    atoms = [output / rel for rel in output_files(output) if rel.endswith("atom.xml")]
    errors = jing_errors(atoms)
    assert not errors, errors[:5000]
