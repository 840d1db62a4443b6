"""WebSub: feeds advertise the hub, and the hub is pinged after a publish that changed them."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from lxml import etree

from tests.helpers import run_cli, write_config

ROOT = Path(__file__).resolve().parents[1]


class HubStandIn(ThreadingHTTPServer):
    """Records hub.mode=publish pings, answers 204 as a WebSub hub does."""

    daemon_threads = True

    def __init__(self) -> None:
        self.pings: list[dict[str, list[str]]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                with server.lock:
                    server.pings.append(form)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = self
        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    server = HubStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_feeds_carry_the_hub_and_changed_feeds_are_pinged(tmp_path: Path, hub: HubStandIn) -> None:
    hub_url = f"http://127.0.0.1:{hub.server_address[1]}/"
    shutil.copytree(ROOT / "examples" / "feeds", tmp_path / "feeds")
    config = write_config(tmp_path, [{"id": "rss2", "url": "feeds/rss2.xml"}],
                          websub_hub=hub_url)
    assert run_cli("poll", config=config).returncode == 0
    assert run_cli("publish", config=config).returncode == 0

    rss = etree.parse(str(tmp_path / "public" / "index.xml"))
    hubs = rss.xpath("//atom:link[@rel='hub']/@href",
                     namespaces={"atom": "http://www.w3.org/2005/Atom"})
    assert hubs == [hub_url]
    atom = etree.parse(str(tmp_path / "public" / "atom.xml"))
    assert atom.xpath("//a:feed/a:link[@rel='hub']/@href",
                      namespaces={"a": "http://www.w3.org/2005/Atom"}) == [hub_url]
    topics = {form["hub.url"][0] for form in hub.pings}
    assert all(form["hub.mode"] == ["publish"] for form in hub.pings)
    assert "http://127.0.0.1:8000/index.xml" in topics
    assert "http://127.0.0.1:8000/sources/rss2/atom.xml" in topics

    before = len(hub.pings)
    assert run_cli("publish", config=config).returncode == 0  # nothing changed
    assert len(hub.pings) == before
