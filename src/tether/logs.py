"""How every log line of a tether process is written: text, JSON lines, or the user's config.

One function, :func:`setup_logging`, configures the root logger once per
process (the CLI calls it; a master's workers call it with the same options,
passed on their command line). Every record goes through it: tether's own,
uvicorn's, the app's, and the access log (logger ``tether.access``).

- ``text``: ``TIME [PID] LEVEL LOGGER: MESSAGE`` on stderr.
- ``json``: one object per line on stderr, with ``time`` (UTC, ISO 8601),
  ``level``, ``logger``, ``message``, ``pid``; access records add
  ``method``, ``path``, ``query``, ``status``, ``duration_ms``, ``bytes``,
  ``client`` and ``user_agent``; a record with an exception adds ``exc_info``;
  with OpenTelemetry traces on, a record written inside a span (an access
  record, a drain's records) adds ``trace_id`` and ``span_id``.
- ``--log-config PATH``: ``logging.config.dictConfig`` from JSON (``.json``)
  or YAML (``.yaml``/``.yml``, with PyYAML installed), else
  ``logging.config.fileConfig`` (INI). The file decides handlers, formats and
  levels; loggers it does not name keep working (``disable_existing_loggers``
  is false unless the file says otherwise). :class:`JsonFormatter` can be
  named in it (``"()": "tether.logs.JsonFormatter"``).

Error handling: a config file that cannot be read or applied is a
:class:`~tether.errors.ConfigError` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any

from tether._logsafe import printable, printable_lines
from tether.errors import ConfigError

__all__ = ["JsonFormatter", "set_trace_ids", "setup_logging"]

#: uvicorn's level below DEBUG (its ``--log-level trace``).
TRACE = 5
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# (trace id, span id) of the span a record is written in; set only when tracing is on.
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_ids(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Where JSON records find the ids of the span they are written in (None: they do not)."""
    global _trace_ids
    _trace_ids = source


class JsonFormatter(logging.Formatter):
    """One JSON object per record; access records carry their request's fields."""

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        if seconds != self._second:  # one strftime per second, not per record
            self._second, self._stamp = (
                seconds,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)),
            )
        obj: dict[str, Any] = {
            "time": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record.args, "fields", None)
        if callable(fields):
            obj.update(fields())
        if _trace_ids is not None and (ids := _trace_ids()) is not None:
            obj["trace_id"], obj["span_id"] = ids
        if record.exc_info:
            obj["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc_info"] = record.exc_text
        if record.stack_info:
            obj["stack_info"] = self.formatStack(record.stack_info)
        line = json.dumps(obj, ensure_ascii=False, default=str)
        # JSON escapes C0 itself; DEL and C1 it leaves raw, and a terminal may act on them.
        return (
            _RAW_IN_JSON.sub(_json_escape, line) if not line.isascii() or "\x7f" in line else line
        )


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` with the time formatted once per second, not once per record.

    A control character other than newline and tab is written as ``\\xNN``:
    whatever a record quotes (an app's exception message naming a path), no
    CR rewrites a line and no escape sequence reaches the reader's terminal.
    """

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(super().format(record))

    def formatException(self, ei: Any) -> str:
        """The traceback, with each exception's own message kept on its line.

        An exception's message is the one part of a traceback a client can
        fill (``RuntimeError(f"cannot serve {path}")``); its newlines, and
        those of its notes, are escaped so that it cannot forge a record.
        """
        text = super().formatException(ei)
        if ei[1] is None:
            return text
        for exc_only in _messages(traceback.TracebackException(*ei)):
            if "\n" in exc_only.rstrip("\n"):
                text = text.replace(exc_only.rstrip("\n"), printable(exc_only.rstrip("\n")))
        return text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        seconds = int(record.created)
        if seconds != self._second:
            self._second = seconds
            self._stamp = super().formatTime(record, datefmt).rsplit(",", 1)[0]
        return f"{self._stamp},{int(record.msecs):03d}"


def _messages(te: traceback.TracebackException) -> Iterator[str]:
    """The exception-only part of ``te`` and of every exception chained to it."""
    seen: set[int] = set()
    todo = [te]
    while todo:
        one = todo.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        yield "".join(one.format_exception_only())
        todo.extend(x for x in (one.__cause__, one.__context__) if x is not None)
        todo.extend(one.exceptions or ())


#: What JSON itself leaves raw of the control characters (it escapes C0).
_RAW_IN_JSON = re.compile(r"[\x7f-\x9f]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def level_number(level: str) -> int:
    """``info`` -> 20; ``trace`` is uvicorn's 5."""
    if level.lower() == "trace":
        logging.addLevelName(TRACE, "TRACE")
        return TRACE
    return int(logging.getLevelName(level.upper()))


def setup_logging(level: str = "info", log_format: str = "text", config: str | None = None) -> None:
    """Configure this process's logging once: ``config`` if given, else ``log_format``."""
    if config is not None:
        _apply_file(config)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number(level))


def _apply_file(path: str) -> None:
    import logging.config  # only for --log-config: a master otherwise spawns its workers sooner

    lowered = path.lower()
    if not lowered.endswith((".json", ".yaml", ".yml")):
        _applying(path, lambda: logging.config.fileConfig(path, disable_existing_loggers=False))
        return
    load: Callable[[IO[str]], Any] = json.load
    if not lowered.endswith(".json"):
        try:
            import yaml
        except ImportError:
            msg = (
                f"--log-config {path}: reading YAML needs PyYAML; "
                "`pip install pyyaml`, or give the config as JSON or INI"
            )
            raise ConfigError(msg) from None
        load = yaml.safe_load

    def read() -> Any:
        with open(path, encoding="utf-8") as f:
            return load(f)

    data = _applying(path, read)
    if not isinstance(data, dict):
        msg = f"--log-config {path}: expected a mapping (dictConfig's schema) at the top"
        raise ConfigError(msg)
    data.setdefault("disable_existing_loggers", False)
    data.setdefault("version", 1)
    _applying(path, lambda: logging.config.dictConfig(data))


def _applying(path: str, step: Callable[[], Any]) -> Any:
    try:
        return step()
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}"
        root: BaseException = exc
        while (inner := root.__cause__ or root.__context__) is not None:
            root = inner
        if root is not exc:  # dictConfig says which handler or filter; its cause says why
            what += f" ({type(root).__name__}: {root})"
        msg = f"--log-config {path}: {what}; fix the file or leave it out"
        raise ConfigError(msg) from exc
