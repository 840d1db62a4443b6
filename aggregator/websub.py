"""WebSub: tell the hub which published feeds changed, so subscribers get pushes.

Feeds advertise the hub (``site.websub_hub``) with ``<link rel="hub">``; after a
publish that changed feeds, the hub is pinged once per changed topic URL
(``hub.mode=publish``, as WebSub hubs and PubSubHubbub expect).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import requests

from aggregator.fetch import USER_AGENT

log = logging.getLogger("aggregator.websub")
MAX_PINGS = 200  # a publish that touched every tag still sends a bounded number of requests


def ping_hub(hub: str, topics: Iterable[str], *, timeout: float = 10.0) -> tuple[int, list[str]]:
    """POST one publish notification per topic; (sent, errors). Never raises."""
    sent = 0
    errors: list[str] = []
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        for topic in list(dict.fromkeys(topics))[:MAX_PINGS]:
            try:
                response = session.post(hub, data={"hub.mode": "publish", "hub.url": topic},
                                        timeout=timeout)
            except requests.RequestException as e:
                errors.append(f"{hub}: {type(e).__name__} for {topic}")
                continue
            if response.status_code >= 300:
                errors.append(f"{hub}: HTTP {response.status_code} for {topic}")
            else:
                sent += 1
    for error in errors:
        log.warning("WebSub ping failed: %s", error)
    return sent, errors
