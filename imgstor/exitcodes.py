"""imgstor's exit codes: the one table that ``--help``, the man page and the README print.

Each code of the error tree (imgstor.errors) is here with what it means to a person; the
codes no exception carries (1, 9, 70, 130) are named constants.  tests/unit/test_docs.py
checks that every ``ImgstorError`` subclass's code is in the table and that the README's
table is the one ``table_text`` makes.
"""
from __future__ import annotations

__all__ = ["EXIT_CODES", "OK", "FAILED", "DIFFERS", "INTERNAL", "INTERRUPTED", "table_text"]

OK = 0
FAILED = 1            # a batch item, one VM of several, an action of imgstorageadmin failed
DIFFERS = 9           # check, list --verify, doctor found a problem; rebuild incomplete
INTERNAL = 70         # a batch item hit a bug (EX_SOFTWARE; its traceback on stderr)
INTERRUPTED = 130     # Ctrl-C (SIGINT) or end of input at a prompt: 128 + 2, as a shell says

EXIT_CODES: list[tuple[int, str]] = [
    (OK, "success (\"already done\" is success: a re-run of a finished command)"),
    (FAILED, "some of several things failed: a batch item, one VM of `start|stop host vm "
             "VM...`, an imgstorageadmin action (each one's own code is on its line)"),
    (2, "bad input (UsageError): nothing ran anywhere"),
    (3, "config file missing, unreadable or wrong (ConfigError)"),
    (4, "state file unreadable, of another schema, or the state forbids it (StateError)"),
    (5, "busy: another operation holds the volume or the store lock (BusyError; "
        "`imgstorageadmin unbusy NAS VOL` if its process is gone)"),
    (6, "not found: a host, VM, volume, target, pool or job (NotFound)"),
    (7, "exists already (AlreadyExists)"),
    (8, "conflict: e.g. mapped to another host, a disk in use (Conflict)"),
    (DIFFERS, "differences found: check, list host storagemap --verify, doctor; rebuild "
              "could not restore everything"),
    (10, "a command on a host failed: host, command, exit code, stderr "
         "(RemoteCommandError)"),
    (11, "a host could not be reached (TransportError)"),
    (12, "a host's SSH key is unknown or changed (HostKeyError)"),
    (13, "a node step failed otherwise, or the node refused imgstor's node app "
         "(StepError)"),
    (INTERNAL, "a batch item hit a bug in imgstor (its traceback on stderr)"),
    (INTERRUPTED, "interrupted: Ctrl-C, or end of input at a prompt; what was done "
                  "stays done"),
]


def table_text(width: int = 78, indent: str = "  ") -> str:
    """The table as text lines ``CODE  meaning`` wrapped to ``width`` columns."""
    import textwrap
    lines = []
    for code, text in EXIT_CODES:
        head = f"{indent}{code:<5}"
        lines += textwrap.wrap(text, width, initial_indent=head,
                               subsequent_indent=" " * len(head))
    return "\n".join(lines)
