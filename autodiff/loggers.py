"""autodiff's loggers: one hierarchy under "autodiff", silent unless asked.

(Not `log.py`: a submodule of that name would shadow the function `autodiff.log`.)

    autodiff.passes   the graph after each pass (debug), pass timings (info)
    autodiff.fusion   kernels before and after fusion
    autodiff.alloc    the memory plan: arena, lower bound, strategy
    autodiff.build    device builds: groups, cache hits, compiler logs (debug)
    autodiff.run      runs of compiled programs

A library must not print: the "autodiff" logger gets a NullHandler (so Python's
last-resort handler stays quiet too) and nothing else, unless the environment variable
AUTODIFF_LOG=info|debug (or warning, error) asks for a stderr handler. The standard
`logging` configuration works as usual: a handler on "autodiff" or the root sees it all.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

ROOT = "autodiff"
CHANNELS = ("passes", "fusion", "alloc", "build", "run")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(name)s %(levelname)s: %(message)s"

_configured_handler: logging.Handler | None = None


class StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment, not the one at set-up (pytest's capsys
    and `contextlib.redirect_stderr` replace it after autodiff is imported)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def get_logger(channel: str) -> logging.Logger:
    """The logger of one part of the compiler ("passes", "fusion", ...)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown log channel '{channel}'; choose one of {CHANNELS}")
    return logging.getLogger(f"{ROOT}.{channel}")


def configure(level: str | None = None) -> None:
    """Set up autodiff's logging once: a NullHandler always, a stderr handler at
    `level` (default: AUTODIFF_LOG) when one is asked for. Called at import."""
    global _configured_handler
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    level = (level if level is not None else os.environ.get("AUTODIFF_LOG", "")).strip().lower()
    if not level or level in ("0", "off", "none"):
        return
    if level not in LEVELS:
        raise ValueError(f"autodiff log level {level!r}: choose one of {list(LEVELS)} (AUTODIFF_LOG)")
    if _configured_handler is None:
        _configured_handler = StderrHandler()
        root.addHandler(_configured_handler)
    _configured_handler.setLevel(LEVELS[level])
    root.setLevel(LEVELS[level])


@contextmanager
def pass_dumps(on: bool) -> Iterator[logging.Logger]:
    """The "autodiff.passes" logger; with `on` (AUTODIFF_DUMP_PASSES, dump_passes=True) its
    debug records reach stderr for the duration even when AUTODIFF_LOG is not set."""
    passes = get_logger("passes")
    if not on or (passes.isEnabledFor(logging.DEBUG) and _reaches_a_handler(passes)):
        yield passes
        return
    handler = StderrHandler()
    # only the dumps: info records still go (once) to AUTODIFF_LOG's handler, if any
    handler.addFilter(lambda record: record.levelno <= logging.DEBUG)
    level = passes.level
    passes.setLevel(logging.DEBUG)
    passes.addHandler(handler)
    try:
        yield passes
    finally:
        passes.removeHandler(handler)
        passes.setLevel(level)


def _reaches_a_handler(logger: logging.Logger) -> bool:
    """True when a record of `logger` meets a real (not Null) handler at debug level."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) and h.level <= logging.DEBUG for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _configure_from_environment() -> None:
    """At import: a misspelt AUTODIFF_LOG warns instead of making autodiff unimportable."""
    try:
        configure()
    except ValueError as error:
        import warnings
        warnings.warn(str(error), stacklevel=2)


_configure_from_environment()
