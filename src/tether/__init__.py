"""tether: run a service's parts together, stop them together, lose nothing.

The public API is re-exported here; see the README for the whole list.
"""

from tether.app import App
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
from tether.serving import HttpServer, ServeOptions

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
    # errors
    "AbandonedWork",
    "AppLoadError",
    "BindError",
    "ConfigError",
    "ShutdownAbandoned",
    "StartupError",
    "TetherError",
]
