"""What the toolkit prints while it works: progress bars, per-epoch lines, diagnostics.

Results go to stdout (the CLI prints them); everything else goes through the ``speechxfer``
logger to stderr, so ``speechxfer eval --json > r.json`` stays parseable and a log file gets
one line per epoch instead of thousands of progress-bar fragments:

- progress bars only when stderr is a terminal (tqdm's ``disable=None``), never when quiet;
- INFO: one line per epoch, skipped clips; DEBUG (``--verbose``): timings and other detail;
- ``--quiet``: errors only, so only the results are printed;
- Ctrl-C: one line and exit status 130, not a traceback (the CLI's ``main``; ``run_script`` for
  recipes and benchmarks).

As a library the logger stays silent below WARNING until the application configures logging
(``configure()`` or ``logging.basicConfig(level=logging.INFO)``).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

LOGGER = logging.getLogger("speechxfer")
LOGGER.addHandler(logging.NullHandler())

QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.ERROR, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
_quiet = False  # set by configure(); bars follow it, whatever the logger's level


class _BarSafeHandler(logging.Handler):
    """Writes through ``tqdm.write`` to the current stderr, so a live bar is not torn apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never crash the caller
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


_handler = _BarSafeHandler()
_handler.setFormatter(_Formatter())


def configure(verbosity: int = NORMAL) -> None:
    """Print the ``speechxfer`` logger to stderr at ``verbosity`` (QUIET, NORMAL or VERBOSE).

    Idempotent: calling it again only changes the level.
    """
    global _quiet
    if verbosity not in _LEVELS:
        raise ValueError(f"unknown verbosity {verbosity!r}; choose from {sorted(_LEVELS)}")
    _quiet = verbosity == QUIET
    LOGGER.setLevel(_LEVELS[verbosity])
    if _handler not in LOGGER.handlers:
        LOGGER.addHandler(_handler)


def progress(iterable: Iterable, desc: str, **kwargs) -> tqdm:
    """A transient progress bar over ``iterable``: drawn on a terminal only, never when quiet."""
    return tqdm(iterable, desc=desc, leave=False, disable=True if _quiet else None, **kwargs)


def run_script(main: Callable[[], object]) -> None:
    """Run a recipe's or benchmark's ``main`` and end a Ctrl-C as the ``speechxfer`` command does:
    one line naming the script, exit status 130. Scripts write their results only when done (a
    cut run's ``*_partial`` files aside), so the folders hold what they held before."""
    try:
        main()
    except KeyboardInterrupt:
        script = os.path.relpath(inspect.getfile(main))
        if script.startswith(".."):  # run from elsewhere: the full path says which script
            script = os.path.abspath(script)
        print(f"{script}: interrupted; finished results are as they were",
              file=sys.stderr)
        raise SystemExit(130) from None
