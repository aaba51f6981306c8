"""tether: run a service's parts together, stop them together, lose nothing.

The public API is re-exported here; see the README for the whole list.
"""

from tether.errors import (
    AbandonedWork,
    AppLoadError,
    BindError,
    ConfigError,
    ShutdownAbandoned,
    StartupError,
    TetherError,
)

__all__ = [
    "AbandonedWork",
    "AppLoadError",
    "BindError",
    "ConfigError",
    "ShutdownAbandoned",
    "StartupError",
    "TetherError",
]
