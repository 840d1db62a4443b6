"""full_text: true — the linked article's main text replaces a summary-only entry, once."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import poll_json, read_store, write_config

ARTICLE = """<!doctype html><html><head><title>Full story</title></head><body>
<nav>Home | News | About | Contact | Login</nav>
<article><h1>Hospital deploys a triage model</h1>
<p>{marker} The regional hospital began using a triage model in its emergency department
this week. Nurses see a suggested urgency level next to each patient and can override it.</p>
<p>During a three-month trial the model agreed with senior nurses in most cases, and the
hospital says every suggestion is logged so that disagreements can be reviewed weekly.</p>
<p>The ethics board asked for a public report after one year of use.</p></article>
<footer>Copyright Example Hospital</footer></body></html>"""


def feed(base: str, link: str) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Summaries</title><link>{base}/</link><description>d</description>
<item><title>Hospital deploys a triage model</title><link>{link}</link><guid>t-1</guid>
<pubDate>Fri, 14 Feb 2025 02:00:00 GMT</pubDate><description>Short summary only.</description></item>
</channel></rss>""".encode()


def test_full_text_replaces_the_summary_once(tmp_path: Path, feed_server) -> None:
    base = feed_server.url("").rstrip("/")
    feed_server.route("/feed.xml", body=feed(base, base + "/story"))
    feed_server.route("/story", body=ARTICLE.format(marker="FULLTEXT-MARKER").encode(),
                      content_type="text/html; charset=utf-8")
    config = write_config(tmp_path, [{"id": "ft", "url": base + "/feed.xml",
                                      "full_text": True}])

    poll_json(config, expect=(0,))
    (item,) = read_store(tmp_path / "store").values()
    assert "FULLTEXT-MARKER" in item.body
    assert "Login" not in item.body  # the page's navigation is not the article
    assert item.summary == "Short summary only."

    poll_json(config, force=True, expect=(0,))  # stored: the article is never fetched again
    assert len(feed_server.requests_for("/story")) == 1


def test_full_text_refuses_pages_of_our_own_network(tmp_path: Path, feed_server) -> None:
    """An entry linking to another host on this machine (localhost is not the feed's
    127.0.0.1) must not make us fetch and publish it."""
    base = feed_server.url("").rstrip("/")
    secret = base.replace("127.0.0.1", "localhost") + "/admin"
    feed_server.route("/feed.xml", body=feed(base, secret))
    feed_server.route("/admin", body=ARTICLE.format(marker="INTERNAL-SECRET").encode(),
                      content_type="text/html; charset=utf-8")
    config = write_config(tmp_path, [{"id": "ft", "url": base + "/feed.xml",
                                      "full_text": True}])

    poll_json(config, expect=(0,))
    (item,) = read_store(tmp_path / "store").values()
    assert "INTERNAL-SECRET" not in item.body
    assert "Short summary only." in item.body
    assert feed_server.requests_for("/admin") == []


def test_a_stored_full_text_is_not_replaced_by_the_summary(tmp_path: Path, feed_server) -> None:
    base = feed_server.url("").rstrip("/")
    feed_server.route("/feed.xml", body=feed(base, base + "/story"))
    feed_server.route("/story", body=ARTICLE.format(marker="FULLTEXT-MARKER").encode(),
                      content_type="text/html; charset=utf-8")
    config = write_config(tmp_path, [{"id": "ft", "url": base + "/feed.xml",
                                      "full_text": True}])
    poll_json(config, expect=(0,))
    # The feed changes its summary: the item keeps the article it was given.
    feed_server.route("/feed.xml", body=feed(base, base + "/story").replace(
        b"Short summary only.", b"A new summary."))
    poll_json(config, force=True, expect=(0,))
    (item,) = read_store(tmp_path / "store").values()
    assert "FULLTEXT-MARKER" in item.body
