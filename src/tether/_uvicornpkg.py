"""uvicorn's package without its command line, for a process that only serves.

Importing any of uvicorn's modules runs ``uvicorn/__init__.py`` first, and
that imports ``uvicorn.main``: click, uvicorn's option declarations, its
reloaders (watchfiles) and multiprocessing's spawn. A tether worker uses none
of them (tether's own command line is the master's, and a worker is handed its
resolved config), yet paid for them on every start: 10 ms of a hello worker's
start to its first answer, measured with ``benchmarks/bench_start.py``.

So when this module is imported, which tether's engine does before it imports
uvicorn's modules, :func:`defer_init` puts uvicorn's package in
``sys.modules`` with its ``__init__`` not yet run (a :class:`_Deferred`
module). The package's names come on first use: ``Config``, ``Server`` and
``__version__`` from the module that defines each (what ``__init__`` itself
imports them from); any other name (``uvicorn.run``, ``uvicorn.main``,
``__all__``, a name a later uvicorn adds, or one it never had) runs the real
``__init__`` then, once, and the package becomes a plain module. Importing
the submodule ``uvicorn.main`` runs it too, so that ``uvicorn.main`` is the
command, as ``__init__`` binds it, and not the submodule. An app that
imports uvicorn sees the package it always did.

Invariants: the real ``__init__`` runs at most once, under a lock (a thread
that asks meanwhile waits for it and sees its names); one that fails leaves
the package deferred, to be tried again at the next name, as a failed import
is. Nothing is deferred when uvicorn is imported already (an app that
another server runs imports tether) or is not a plain package on the path.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

__all__ = ["defer_init"]

#: The names ``uvicorn/__init__.py`` binds, each from the module that defines it.
_DEFINED_IN = {
    "Config": "uvicorn.config",
    "Server": "uvicorn.server",
    "__version__": "uvicorn._version",
}
#: Names ``__init__`` binds over a submodule of the same name (the command ``main``).
_OVER_SUBMODULES = frozenset({"main"})

_lock = threading.RLock()
_initialising = False  # read and written only with _lock held


class _Deferred(ModuleType):
    """uvicorn's package before its ``__init__`` has run (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:  # only for a name the package lacks
        if name in _DEFINED_IN:
            value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
            ModuleType.__setattr__(self, name, value)
            return value
        _run_init(self)
        return ModuleType.__getattribute__(self, name)  # an AttributeError as a module's

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OVER_SUBMODULES and isinstance(value, ModuleType):
            # The import system binds a submodule it loaded; __init__ binds the command.
            _run_init(self)
            if type(self) is not _Deferred:
                return
        ModuleType.__setattr__(self, name, value)


def _run_init(package: ModuleType) -> None:
    """Run the real ``__init__`` in ``package``, once; then it is a plain module."""
    global _initialising
    with _lock:
        if type(package) is not _Deferred or _initialising:
            return  # done already, or running now in this thread (__init__'s own imports)
        spec = package.__spec__
        assert spec is not None and spec.loader is not None
        _initialising = True
        try:
            spec.loader.exec_module(package)
        finally:
            _initialising = False
        package.__class__ = ModuleType  # type: ignore[assignment]  # a plain module again


def defer_init() -> None:
    """Put uvicorn's package in ``sys.modules`` with its ``__init__`` run on first need."""
    if "uvicorn" in sys.modules:
        return
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    package.__class__ = _Deferred
    sys.modules["uvicorn"] = package


defer_init()
