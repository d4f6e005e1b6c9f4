"""The ingest's worker processes.

A single-threaded caller on Linux forks them: they start at once, with every module the caller has
imported (the parsing code is imported first, so that no worker imports it again). A caller with
threads of its own must not fork (a lock a thread holds at that moment stays held in the child):
its workers fork from a server that imports the parsing code once.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import threading

# Not pandas: pyarrow imports it (0.4 s) at its first conversion of Python objects, which the
# vectorized path avoids; a worker that falls back to the reference validator imports it then.
PRELOAD = ["rluf.data.parse", "rluf.data.fastpath"]


def context():
    if _single_threaded():
        for name in PRELOAD:
            importlib.import_module(name)
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD + _main_module())
    return ctx


def _single_threaded() -> bool:
    """Whether this process runs no Python thread but the main one. The native threads NumPy's BLAS
    and Arrow's allocator start at import are fork-safe (they reset themselves in the child)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def _main_module() -> list[str]:
    """Workers import the caller's main script again (as `__mp_main__`): the server can do it once.

    Only for a script, such as the `rluf` console script; a `python -m` module is left to the
    workers (preloading it by name makes runpy warn in each of them).
    """
    main = sys.modules.get("__main__")
    return ["__main__"] if getattr(main, "__spec__", None) is None and getattr(main, "__file__", None) else []
