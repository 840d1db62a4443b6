"""Anchor: lemon24's ``reader``, run by the python of its own venv.

    reader_anchor.py setup DB URLS_FILE   # create the database, add every feed
    reader_anchor.py update DB [--workers N]

``update`` calls ``update_feeds_iter(scheduled=False)`` (every feed, whatever
its schedule) and prints JSON with the counts of new and modified entries,
feeds not modified (304) and errors, like ``aggregator poll --json``.
"""

from __future__ import annotations

import argparse
import json
import sys

from reader import make_reader


def setup(db: str, urls_file: str) -> dict:
    reader = make_reader(db)
    with open(urls_file, encoding="utf-8") as f:
        urls = [u.strip() for u in f if u.strip()]
    for url in urls:
        reader.add_feed(url, exist_ok=True)
    reader.close()
    return {"feeds": len(urls)}


def update(db: str, workers: int) -> dict:
    reader = make_reader(db)
    new = modified = not_modified = 0
    errors: list[str] = []
    for result in reader.update_feeds_iter(scheduled=False, workers=workers):
        value = result.value
        if value is None:
            not_modified += 1
        elif isinstance(value, Exception):
            errors.append(f"{result.url}: {value}")
        else:
            new += value.new
            modified += value.modified
    reader.close()
    return {"new": new, "updated": modified, "not_modified": not_modified,
            "errors": len(errors), "first_errors": errors[:3]}


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("db")
    s.add_argument("urls_file")
    u = sub.add_parser("update")
    u.add_argument("db")
    u.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    out = setup(a.db, a.urls_file) if a.cmd == "setup" else update(a.db, a.workers)
    print(json.dumps(out))
    return 1 if out.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
