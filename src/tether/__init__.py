"""tether: run a service's parts together, stop them together, lose nothing.

The public API is re-exported here lazily (PEP 562): a name is imported from
its module on first use, so ``import tether.notify`` (every worker, the
master, ``tether ctl``) loads no HTTP engine. See the README for the list.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether._walk import AsyncWalk, Walk, WalkError, awalk, walk
    from tether.app import App
    from tether.config import HttpOptions
    from tether.errors import (
        AbandonedWork,
        AppLoadError,
        BindError,
        ConfigError,
        ShutdownAbandoned,
        StartupError,
        TetherError,
    )
    from tether.group import Group, GroupReport, MemberExitedEarly, StopToken
    from tether.leaks import LeakError
    from tether.serving import HttpServer, ServeOptions
    from tether.tracker import (
        NoCurrentTracker,
        Tracker,
        TrackerClosed,
        TrackerFull,
        TrackerReport,
        TrackerStats,
        current_tracker,
        install_adoption,
        no_adoption,
        request_scope,
        spawn,
    )

#: Where each public name lives.
_HOME = {
    "Group": "tether.group",
    "GroupReport": "tether.group",
    "StopToken": "tether.group",
    "MemberExitedEarly": "tether.group",
    "App": "tether.app",
    "HttpServer": "tether.serving",
    "ServeOptions": "tether.serving",
    "HttpOptions": "tether.config",
    "spawn": "tether.tracker",
    "current_tracker": "tether.tracker",
    "Tracker": "tether.tracker",
    "TrackerReport": "tether.tracker",
    "TrackerStats": "tether.tracker",
    "install_adoption": "tether.tracker",
    "request_scope": "tether.tracker",
    "no_adoption": "tether.tracker",
    "TrackerClosed": "tether.tracker",
    "TrackerFull": "tether.tracker",
    "NoCurrentTracker": "tether.tracker",
    "walk": "tether._walk",
    "awalk": "tether._walk",
    "Walk": "tether._walk",
    "AsyncWalk": "tether._walk",
    "WalkError": "tether._walk",
    "LeakError": "tether.leaks",
    "AbandonedWork": "tether.errors",
    "AppLoadError": "tether.errors",
    "BindError": "tether.errors",
    "ConfigError": "tether.errors",
    "ShutdownAbandoned": "tether.errors",
    "StartupError": "tether.errors",
    "TetherError": "tether.errors",
}

__all__ = [
    # running things together
    "Group",
    "GroupReport",
    "StopToken",
    "MemberExitedEarly",
    # serving
    "App",
    "HttpServer",
    "ServeOptions",
    "HttpOptions",
    # background work
    "spawn",
    "current_tracker",
    "Tracker",
    "TrackerReport",
    "TrackerStats",
    "install_adoption",
    "request_scope",
    "no_adoption",
    "TrackerClosed",
    "TrackerFull",
    "NoCurrentTracker",
    # walking directories
    "walk",
    "awalk",
    "Walk",
    "AsyncWalk",
    "WalkError",
    # errors
    "LeakError",
    "AbandonedWork",
    "AppLoadError",
    "BindError",
    "ConfigError",
    "ShutdownAbandoned",
    "StartupError",
    "TetherError",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    home = _HOME.get(name)
    if home is None:
        msg = f"module 'tether' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
