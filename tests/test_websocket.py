"""The websocket protocol imported at the first upgrade (tether._websocket).

A recording loader stands for the engine's import; that a serving process
never imports a websocket library before its first upgrade is
``test_startup_imports.py``'s, and real upgrades are ``test_frameworks.py``'s.
"""

from __future__ import annotations

from typing import Any

import pytest

import tether._websocket
from tether._websocket import LazyProtocol


class Loader:
    """Records each import asked for; the class it gives records how it was built."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, name: str) -> Any:
        self.loaded.append(name)

        class Protocol:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        return Protocol


def test_the_protocol_is_imported_at_the_first_upgrade_and_only_once() -> None:
    """Nothing is loaded when configured; the first call loads, later calls reuse it."""
    load = Loader()
    protocol = LazyProtocol.of("websockets", load)
    assert protocol is not None and load.loaded == []
    first = protocol(config="c", server_state="s")
    second = protocol(config="c2")
    assert load.loaded == ["websockets"]
    assert first.kwargs == {"config": "c", "server_state": "s"}
    assert type(first) is type(second) and second.kwargs == {"config": "c2"}


def test_none_and_auto_without_a_library_refuse_websockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--ws none: refused; auto: refused only when neither websockets nor wsproto is installed."""
    load = Loader()
    assert LazyProtocol.of("none", load) is None
    auto = LazyProtocol.of("auto", load)
    assert auto is not None and auto.name == "auto"  # the suite installs websockets
    monkeypatch.setattr(tether._websocket, "find_spec", lambda name: None)
    assert LazyProtocol.of("auto", load) is None
    named = LazyProtocol.of("wsproto", load)
    assert named is not None and named.name == "wsproto"  # a named one is the user's choice
    assert load.loaded == []
