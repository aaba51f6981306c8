"""Checks of option values that both the CLI's options and code-level callers take.

A number of seconds reaches tether two ways: as a flag (``--graceful-timeout``,
read by :mod:`tether.config`) and as an argument (``Group(graceful_timeout=...)``,
``Tracker.shutdown(timeout=...)``). Both paths refuse the same bad values with
the same one-line message. The check lives here, below :mod:`tether.config`,
so that the primitives at the bottom of the import graph (:mod:`tether.group`,
:mod:`tether.tracker`) need nothing from the options layer above them.
"""

from __future__ import annotations

import math

from tether.errors import ConfigError

__all__ = ["check_timeout"]


def check_timeout(flag: str, value: float, *, allow_zero: bool = True) -> float:
    """Return ``value`` if it is a usable number of seconds, else raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{flag} must be a number of seconds, got {value!r}"
        raise ConfigError(msg)
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        msg = f"{flag} must be a number of seconds {bound}, got {value!r}"
        raise ConfigError(msg)
    return float(value)
