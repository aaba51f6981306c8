"""The websocket protocol for ``--ws NAME``, imported at the first websocket upgrade.

A websocket library costs every process that loads it (websockets: about
8 ms and 1.5 MiB), and most services never serve a websocket. An engine
given a protocol class needs the library loaded; an engine that calls what
it is given once per upgrade, as uvicorn's ``Config`` does with anything
called like a protocol class, can be given a :class:`LazyProtocol` instead,
which imports the library on the first upgrade.

Invariant: nothing is imported before the first upgrade, and at most once;
``none``, and ``auto`` when neither websockets nor wsproto is installed,
refuse upgrades (as uvicorn's ``auto``). The engine says how a protocol is
imported (``load``), so this module imports no engine.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from typing import Any

__all__ = ["LazyProtocol"]


class LazyProtocol:
    """Called like the protocol class for ``name``; ``load(name)`` gives the class, once."""

    def __init__(self, name: str, load: Callable[[str], Any]) -> None:
        self.name = name
        self._load = load
        self._protocol: Any = None

    @classmethod
    def of(cls, name: str, load: Callable[[str], Any]) -> LazyProtocol | None:
        """The protocol for ``--ws NAME``; None when websockets are refused."""
        if name == "none":
            return None
        if name == "auto" and find_spec("websockets") is None and find_spec("wsproto") is None:
            return None
        return cls(name, load)

    def __call__(self, **kwargs: Any) -> Any:
        if self._protocol is None:
            self._protocol = self._load(self.name)
        return self._protocol(**kwargs)
