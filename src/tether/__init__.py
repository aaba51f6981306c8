"""tether: run a service's parts together, stop them together, lose nothing.

The public API is re-exported here; see the README for the whole list.
"""

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
