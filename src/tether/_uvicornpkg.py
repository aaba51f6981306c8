"""uvicorn's package without its command line, for a process that only serves.

Importing any of uvicorn's modules runs ``uvicorn/__init__.py`` first, and
that imports ``uvicorn.main``: click, uvicorn's option declarations, its
reloaders (watchfiles) and multiprocessing's spawn. A tether worker uses none
of them (tether's own command line is the master's, and a worker is handed its
resolved config), yet paid for them on every start: 10 ms of a hello worker's
start to its first answer, measured with ``benchmarks/bench_start.py``.

So when this module is imported, which tether's engine does before it imports
uvicorn's modules, :func:`defer_init` puts
uvicorn's package in ``sys.modules`` with its ``__init__`` not yet run. The
package's names come on first use: ``Config``, ``Server`` and ``__version__``
from the module that defines each (what ``__init__`` itself imports them
from); any other name (``uvicorn.run``, ``uvicorn.main``, ``__all__``, a name
a later uvicorn adds) runs the real ``__init__`` then, once. An app that
imports uvicorn sees the package it always did.

Nothing is deferred when uvicorn is imported already (an app that another
server runs imports tether) or is not a plain package on the path.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

__all__ = ["defer_init"]

#: The names ``uvicorn/__init__.py`` binds, each from the module that defines it.
_DEFINED_IN = {
    "Config": "uvicorn.config",
    "Server": "uvicorn.server",
    "__version__": "uvicorn._version",
}


def defer_init() -> None:
    """Put uvicorn's package in ``sys.modules`` with its ``__init__`` run on first need."""
    if "uvicorn" in sys.modules:
        return
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def first_use(name: str) -> Any:
        # PEP 562: called only for a name the package does not have yet.
        if name in _DEFINED_IN:
            value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
            setattr(package, name, value)
            return value
        package.__dict__.pop("__getattr__", None)
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = first_use  # type: ignore[method-assign]
    sys.modules["uvicorn"] = package


defer_init()
