"""One logging configuration for every Tandem process, and the ML-Agents console lines.

Why: people switching from ``mlagents-learn`` read its console: ``[INFO] message`` lines on
stdout (the summary per ``summary_freq``, the hyperparameters, "Exported ...onnx").
Machines read JSON lines. So there are two streams:

* stdout carries the ML-Agents console lines (:func:`console`), in either mode;
* stderr carries Tandem's own logs (structlog key=value events) and those of the libraries
  it uses (stdlib ``logging``): ``[INFO] event key=value`` by default (``<time> INFO
  [component] ...`` at DEBUG, as ML-Agents' debug format adds the time and the source), JSON
  lines with ``--log-json`` (or ``TANDEM_LOG_JSON=1``); the console lines are logged there as
  JSON events too, so that a JSON reader misses nothing.

Configure once, at the entry point (calling again replaces the configuration).
"""

from __future__ import annotations

import json as json_module
import logging
import os
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import structlog

#: the stdlib loggers whose INFO lines are noise for a user: JAX's platform probe reports
#: every backend it could not initialize (``Unable to initialize backend 'tpu'``).
QUIET_LOGGERS = ("jax._src.xla_bridge",)

_configured = False
_json = False
_level = logging.INFO
_write_lock = threading.Lock()


def _write(stream_name: str, text: str) -> None:
    """Writes one line to ``sys.stdout``/``sys.stderr`` as they are *now*.

    Why: loggers are cached on first use; holding the stream object of that moment breaks
    when it is later replaced (test capture, daemonized processes). One write per line,
    under a lock, so that lines from several threads never interleave.
    """
    with _write_lock:
        stream = getattr(sys, stream_name)
        stream.write(text + "\n")
        stream.flush()


class _StderrLogger:
    """structlog's output: each rendered event to the current ``sys.stderr``."""

    def msg(self, message: str) -> None:
        _write("stderr", message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger_factory(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def _field(value: Any) -> str:
    text = str(value)
    return repr(value) if isinstance(value, str) and (not text or " " in text) else text


def _human_renderer(debug: bool):
    """Renders an event as ``[INFO] event key=value ...`` (``<time> INFO [component] ...`` at DEBUG)."""

    def render(_logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
        fields = dict(event_dict)
        event = str(fields.pop("event", ""))
        level = str(fields.pop("level", method_name)).upper()
        timestamp = fields.pop("timestamp", "")
        component = fields.pop("component", "")
        trailer = [str(fields.pop(key)) for key in ("stack", "exception") if fields.get(key)]
        head = f"{timestamp} {level} [{component}] " if debug else f"[{level}] "
        line = head + " ".join([event, *(f"{key}={_field(value)}" for key, value in fields.items())])
        return "\n".join([line, *trailer])

    return render


class _StderrHandler(logging.Handler):
    """The stdlib root handler: writes to the current ``sys.stderr``, like structlog's output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write("stderr", self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _JsonFormatter(logging.Formatter):
    """Stdlib records as the same JSON lines as structlog's events (component, event, level, timestamp)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"component": record.name, "event": record.getMessage()}
        event["level"] = record.levelname.lower()
        event["timestamp"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z")
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json_module.dumps(event)


class _PrintedByItsOwnHandler(logging.Filter):
    """Drops records that a handler on their own logger (or a parent below the root) prints.

    Why: ``mlagents_envs.logging_util.get_logger`` gives every mlagents logger its own
    stdout handler in ML-Agents' ``[INFO] message`` format, and leaves ``propagate`` on: with
    a root handler too, each line came out twice. The human console keeps mlagents' line.
    A library's ``NullHandler`` prints nothing: its records still reach the root handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        root = logging.getLogger()
        while logger is not None and logger is not root:
            if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def configure_logging(json: bool | None = None, level: str | None = None) -> None:
    """Configures structlog and the stdlib root logger (replacing an earlier configuration).

    Args:
        json: JSON lines instead of the human format; defaults to ``TANDEM_LOG_JSON``.
        level: a logging level name; defaults to ``TANDEM_LOG_LEVEL`` or INFO.

    Raises:
        ValueError: an unknown level name.
    """
    global _configured, _json, _level
    if json is None:
        json = os.environ.get("TANDEM_LOG_JSON", "") not in ("", "0", "false")
    level_name = (level or os.environ.get("TANDEM_LOG_LEVEL", "INFO")).upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level_name!r}")
    debug = numeric <= logging.DEBUG
    renderer = structlog.processors.JSONRenderer() if json else _human_renderer(debug)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    if json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s" if debug else "[%(levelname)s] %(message)s")
        )
        handler.addFilter(_PrintedByItsOwnHandler())
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(numeric if debug else max(numeric, logging.WARNING))
    if not debug:
        # gRPC C-core's own INFO lines (e.g. "Got goaway ... Cancelling all calls", which a Unity
        # player's channel prints when mlagents stops its server at close) are not for users;
        # read when gRPC starts, and inherited by the processes started from here
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    _configured, _json, _level = True, bool(json), numeric


def console(message: str, *, component: str, level: int = logging.INFO, **fields: Any) -> None:
    """Prints one ML-Agents console line on stdout: ``[INFO] <message>``.

    Why: the summary per ``summary_freq``, the hyperparameters and "Exported <model>.onnx" are
    what ``mlagents-learn`` users watch, in its words, on stdout. With ``--log-json`` the
    line also goes to stderr as a JSON event (``event=message`` plus ``fields``), so that
    JSON readers keep every field. Below the configured level nothing is printed.

    Args:
        message: the line's text (may span lines, like the hyperparameters).
        component: the JSON event's ``component``.
        level: the stdlib level of the line.
        fields: the JSON event's extra fields.
    """
    if level < _level:
        return
    if _json:
        get_logger(component).log(level, message, **fields)
    _write("stdout", f"[{logging.getLevelName(level)}] {message}")


def get_logger(name: str, **context: object):
    """Returns a lazy structlog logger with ``component=name`` and any extra context.

    Lazy on purpose: module-level loggers are created at import time, before the entry
    point calls :func:`configure_logging`; binding happens on first use, so they still
    get the configured renderer, level and stream.
    """
    return structlog.get_logger(name, component=name, **context)
