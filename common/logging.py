"""One structlog configuration for every Tandem process.

Why: every process (gateway, trainer, stand-in) logs key=value events through
structlog; humans get a readable console by default, machines get JSON lines with
``--log-json`` (or ``TANDEM_LOG_JSON=1``). Configure once, at the entry point.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


class _StderrLogger:
    """Writes each rendered event to whatever ``sys.stderr`` is *now*.

    Why: loggers are cached on first use; holding the stream object of that moment
    breaks when it is later replaced (test capture, daemonized processes).
    """

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger_factory(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(json: bool | None = None, level: str | None = None) -> None:
    """Configures structlog and the stdlib root logger once per process.

    Args:
        json: JSON lines instead of the console renderer; defaults to ``TANDEM_LOG_JSON``.
        level: a logging level name; defaults to ``TANDEM_LOG_LEVEL`` or INFO.
    """
    global _configured
    if json is None:
        json = os.environ.get("TANDEM_LOG_JSON", "") not in ("", "0", "false")
    level_name = (level or os.environ.get("TANDEM_LOG_LEVEL", "INFO")).upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level_name!r}")
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
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
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    _configured = True


def get_logger(name: str, **context: object):
    """Returns a lazy structlog logger with ``component=name`` and any extra context.

    Lazy on purpose: module-level loggers are created at import time, before the entry
    point calls :func:`configure_logging`; binding happens on first use, so they still
    get the configured renderer, level and stream.
    """
    return structlog.get_logger(name, component=name, **context)
