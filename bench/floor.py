"""Parse floor: parse every feed of a corpus, from bytes already in memory.

    floor.py feedparser CORPUS_DIR
    floor.py lxml CORPUS_DIR

Reads all ``feeds/*.xml`` first, then parses each with ``feedparser.parse``
or ``lxml.etree.fromstring``. Timed as a whole process (start-up and reading
included), this is the least any poller that parses with these libraries
can cost, with no network, no store and no output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    which, root = sys.argv[1], Path(sys.argv[2])
    blobs = [p.read_bytes() for p in sorted((root / "feeds").glob("*.xml"))]
    entries = 0
    if which == "feedparser":
        import feedparser

        for b in blobs:
            entries += len(feedparser.parse(b).entries)
    elif which == "lxml":
        from lxml import etree

        for b in blobs:
            root_el = etree.fromstring(b)
            entries += sum(1 for el in root_el.iter() if isinstance(el.tag, str)
                           and el.tag.rsplit("}", 1)[-1] in ("item", "entry"))
    else:
        raise SystemExit(f"unknown parser {which!r}")
    print(json.dumps({"feeds": len(blobs), "entries": entries,
                      "bytes": sum(len(b) for b in blobs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
