"""The ingest's worker processes, forked from a server that has already imported the parsing code.

A fork server (rather than forking the caller) is safe even when the caller has threads, and each
worker forks from it without importing anything again. `start_server` boots it early, so that its
imports overlap the caller's own start-up (the `rluf ingest` command calls it first thing).
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing import forkserver

# Not pandas: pyarrow imports it (0.4 s) at its first conversion of Python objects, which the
# vectorized path avoids; a worker that falls back to the reference validator imports it then.
PRELOAD = ["rluf.data.parse", "rluf.data.fastpath"]


def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD + _main_module())
    return ctx


def _main_module() -> list[str]:
    """Workers import the caller's main script again (as `__mp_main__`): the server can do it once.

    Only for a script, such as the `rluf` console script; a `python -m` module is left to the
    workers (preloading it by name makes runpy warn in each of them).
    """
    main = sys.modules.get("__main__")
    return ["__main__"] if getattr(main, "__spec__", None) is None and getattr(main, "__file__", None) else []


def start_server() -> None:
    """Start the fork server now (it imports in the background); a no-op when it runs already."""
    context()
    forkserver.ensure_running()
