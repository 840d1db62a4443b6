"""Worker processes for CPU-bound stages (parsing feeds, rendering store files).

Workers come from a forkserver (never fork a process that runs threads) and end
themselves when the process that started them is gone: a poll killed with -9 (the
OOM killer, a timeout) used to leave its parse workers, the forkserver and
multiprocessing's resource tracker running for good, holding their memory, because a
worker blocked on its task queue never sees the parent's end.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PARENT_CHECK = 1.0  # seconds between a worker's looks for its parent


def worker_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_end_with, initargs=(os.getpid(),))


def _end_with(parent: int) -> None:
    """In each worker: exit as soon as ``parent`` no longer runs."""
    threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # another user's process took the pid: ours is gone
            os._exit(1)
