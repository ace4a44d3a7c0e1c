"""The frontend's log: one tree of ``logging`` loggers under ``imgstor``, set up in one place.

A module that logs takes ``logging.getLogger(__name__)`` (``imgstor.transport``,
``imgstor.workflows.storagemap.sync``…): every logger is a child of ``imgstor``, so what is
set here applies to all of them.  ``-v``/``--debug`` shows DEBUG and up on stderr
(``[imgstor.transport] [nas-0-0] $ python3 -I …``); without it nothing is shown.  The user's
output (rows, messages, ``SKIP>`` lines of a dry run, warnings) is not logging: it is
printed, with or without ``-v``.

:func:`setup` is the only place where handlers are attached; ``cli.run`` calls it once a
command's flags are known (and ``imgstorageadmin``'s dialogue, which parses its own).  The
audit trail of changes is a child of this tree: the ``imgstor.audit`` logger, with a
syslog handler of its own that imgstor/audit.py sets up at its first line, whatever the
verbosity (with ``-v`` its lines show on stderr too).

Start-up: ``import logging`` is ~5 ms (it brings threading, traceback, weakref, string);
``imgstor list host vm nas`` on 10,000 VMs takes ~60.  So this module imports it only when
there is something to set up, and the modules on a listing's path do not log
(tests/unit/test_cli_vms.py asserts that a listing imports no ``logging``).
"""
from __future__ import annotations

import sys

__all__ = ["ROOT", "FORMAT", "setup"]

ROOT = "imgstor"                 # the root of the tree: every module's __name__ is under it
FORMAT = "[%(name)s] %(message)s"


def setup(verbosity: int = 0) -> None:
    """Configure the ``imgstor`` loggers for this process: ``verbosity`` 0 shows nothing,
    1 (``-v``) DEBUG and up on stderr.  Called again (commands run in one process: tests,
    a batch's items) it replaces what it set before, never adds a second handler."""
    if verbosity <= 0 and "logging" not in sys.modules:
        return                   # nothing set up before, nothing to set up: no import
    import logging
    root = logging.getLogger(ROOT)
    for h in [h for h in root.handlers if h.get_name() == _STDERR]:
        root.removeHandler(h)
    if verbosity <= 0:
        root.setLevel(logging.NOTSET)
        return
    h = logging.StreamHandler(_StderrNow())
    h.set_name(_STDERR)
    h.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(h)
    root.setLevel(logging.DEBUG)


_STDERR = "imgstor-stderr"       # the name of the handler setup() adds


class _StderrNow:
    """The ``sys.stderr`` of the moment of each write, not the one at set-up (tests and
    pytest's capture replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
