"""Client-supplied text made safe for a log line: no control character reaches it raw.

A request path arrives percent-decoded (``%0d%0a`` is a real CR LF in the
ASGI scope), and a header may carry an escape byte. Written as is, a CR LF
forges a log line and an ESC sequence drives the terminal of whoever reads
the log. Invariant: every place tether writes a client's path or header into
a log record passes it through one of these functions first, whatever the
format (text, JSON, a user's ``--log-config``); the text and JSON formatters
also escape what reaches them raw from elsewhere (an app's exception message).

Control characters here are C0 (``\\x00``-``\\x1f``), DEL and C1
(``\\x80``-``\\x9f``, which some terminals read as escapes too).

Cost: one regular-expression search per value; a value without a control
character (nearly every one) is returned as it is.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL", "printable", "printable_lines", "printable_path"]

#: Every control character a client could send.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The same but newline and tab, which a multi-line record (a traceback) is made of.
_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _backslashed(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))


def printable(text: str) -> str:
    """``text`` with each control character written as ``\\xNN``."""
    if CONTROL.search(text) is None:
        return text
    return CONTROL.sub(_backslashed, text)


def printable_lines(text: str) -> str:
    """``text`` with each control character but newline and tab written as ``\\xNN``."""
    return _IN_LINES.sub(_backslashed, text)


def printable_path(path: str) -> str:
    """A decoded path or query with each control character percent-encoded again, as sent."""
    if CONTROL.search(path) is None:
        return path
    return CONTROL.sub(_percent, path)
