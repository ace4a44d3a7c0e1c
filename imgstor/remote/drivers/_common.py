"""Helpers shared by the driver modules (not a public face of its own).

* ``positional`` / ``token``: the last line of defence for values that end up as argv
  elements.  Names are validated upstream (imgstor.validate); these guards only make sure a
  builder can never emit a positional argument that a tool's getopt would read as an
  option, nor a value that would break a space-separated table (dmsetup) or a
  comma-separated option string (qemu).
* ``classify_by_text``: the one matching loop each driver's ``classify`` uses;
  ``run_mapped``: run, and raise a failure as the driver's classified error.
* ``portal``: ``ADDR:PORT`` with IPv6 addresses in brackets.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from imgstor.errors import ImgstorError, RemoteCommandError, UsageError
from imgstor.remote.protocol import ISCSI_PORT, Portal

__all__ = ["positional", "token", "classify_by_text", "run_mapped", "portal", "Rule", "ISCSI_PORT"]


Rule = tuple  # (regex, error class, reason or None)


def positional(value: object, what: str = "argument") -> str:
    """Return ``str(value)`` if it is safe as a positional argv element.

    Refuses empty values, values starting with ``-`` (getopt would take them for an
    option: not every tool here honours ``--``, e.g. zfs-fuse's and tgtadm's parsers are
    only tested by us with options first) and values with NUL or line breaks."""
    text = str(value)
    if not text or text.startswith("-") or any(c in text for c in "\0\n\r"):
        raise UsageError(f"refusing {what} {text!r}: empty, starts with '-' or has a line break",
                         field=what)
    return text


def token(value: object, what: str = "argument") -> str:
    """A value that becomes one word of a space-separated table line (dmsetup)."""
    text = positional(value, what)
    if any(c.isspace() for c in text):
        raise UsageError(f"refusing {what} {text!r}: contains white space", field=what)
    return text


def portal(address: str, port: int = ISCSI_PORT) -> str:
    """``ADDR:PORT``; IPv6 literals get brackets (``[fd00::1]:3260``): protocol.Portal's
    text, the one portal type."""
    return str(Portal(str(address), int(port)))


def run_mapped(ex: Any, argv: list[str],
               classify: Callable[[RemoteCommandError], ImgstorError], **kw: Any) -> Any:
    """``ex.run(argv, **kw)``; a failure is re-raised as the tool's classified error
    (NotFound / AlreadyExists / Conflict …) by that tool driver's ``classify``.  The one
    "run, then classify" of every driver and step."""
    try:
        return ex.run(argv, **kw)
    except RemoteCommandError as e:
        raise classify(e) from e


def classify_by_text(err: RemoteCommandError, rules: Iterable[Rule],
                     hint: str | None = None) -> ImgstorError:
    """First rule whose regex matches stderr (or stdout) wins; else ``err`` itself.

    The new error keeps host, argv, rc and stderr in its details so nothing is lost."""
    text = (err.stderr or "") + "\n" + (getattr(err, "stdout", "") or "")
    for pattern, cls, reason in rules:
        m = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
        if m:
            line = _line_of(text, m.start())
            msg = f"{err.host}: {line}"
            details = {"host": err.host, "argv": list(err.argv), "rc": err.rc,
                       "stderr": err.details.get("stderr", "")}
            if reason:
                details["reason"] = reason
            if cls is RemoteCommandError:
                return RemoteCommandError(err.host, err.argv, err.rc, err.stderr, err.stdout,
                                          message=f"{err.message}\n  hint: {reason}")
            return cls(msg, **details)
    if hint:
        return RemoteCommandError(err.host, err.argv, err.rc, err.stderr, err.stdout,
                                  message=f"{err.message}\n  hint: {hint}")
    return err


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else None].strip()
