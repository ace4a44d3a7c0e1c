"""One exception tree for imgstor.

Every error a person can act on is an ``ImgstorError`` child with an exit code and a
message.  The CLI catches ``ImgstorError`` only; anything else is a bug and keeps its
traceback.  The node side (imgstor.remote) uses the same classes and sends them back to the
frontend as ``{"ok": false, "error": {"code": NAME, "message": ...}}``; ``from_wire`` turns
that back into the same class, so a ``NotFound`` on a NAS is a ``NotFound`` on the frontend.

This module imports nothing but the standard library: it is shipped to nodes.
"""
from __future__ import annotations

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = [
    "ImgstorError", "UsageError", "ConfigError", "StateError", "BusyError",
    "LockTimeout", "NotFound", "AlreadyExists", "Conflict", "RemoteCommandError",
    "TransportError", "HostKeyError", "StepError", "Interrupted", "from_wire",
]


class ImgstorError(Exception):
    """Base of every error a person can act on."""

    exit_code = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict:
        return {"code": type(self).__name__, "message": self.message,
                "details": {k: _jsonable(v) for k, v in self.details.items()}}


class UsageError(ImgstorError):
    """Bad command line or bad input (a hostile name, a negative size)."""

    exit_code = 2


class ConfigError(ImgstorError):
    """The config file is missing, unreadable or has an unknown key or bad value."""

    exit_code = 3


class StateError(ImgstorError):
    """The state store is unreadable, of an unknown schema, or says this can't be done."""

    exit_code = 4


class BusyError(StateError):
    """Another operation holds the volume (or the store lock)."""

    exit_code = 5


class LockTimeout(BusyError):
    """The store lock was not acquired in time."""


class NotFound(ImgstorError):
    """A host, VM, volume, target, pool or session does not exist."""

    exit_code = 6


class AlreadyExists(ImgstorError):
    """Something to create exists already (drivers map the tool's text to this)."""

    exit_code = 7


class Conflict(ImgstorError):
    """The request contradicts what is there (volume mapped to another host...)."""

    exit_code = 8


class RemoteCommandError(ImgstorError):
    """A command on a host failed: host, argv, exit code and the last lines of stderr."""

    exit_code = 10

    def __init__(self, host: str, argv: list[str] | tuple[str, ...], rc: int,
                 stderr: str = "", stdout: str = "", message: str | None = None) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        if message is None:
            import shlex
            message = f"{host}: command failed with exit code {rc}: {shlex.join(argv)}"
            if tail:
                message += "\n" + "\n".join("  | " + line for line in tail.splitlines())
        super().__init__(message, host=host, argv=list(argv), rc=rc, stderr=tail)
        self.host, self.argv, self.rc, self.stderr, self.stdout = host, list(argv), rc, stderr, stdout


class TransportError(ImgstorError):
    """A host could not be reached (DNS, refused, timeout, auth)."""

    exit_code = 11


class HostKeyError(TransportError):
    """The host's SSH key is unknown or does not match known_hosts."""

    exit_code = 12


class StepError(ImgstorError):
    """A node step failed in a way none of the other classes describes."""

    exit_code = 13


class Interrupted(ImgstorError):
    """Ctrl-C (SIGINT): the command stopped where it was; what was done stays done."""

    exit_code = 130


def from_wire(err: dict, *, host: str | None = None) -> ImgstorError:
    """Rebuild the exception a node step raised from its JSON form."""
    code = err.get("code", "StepError")
    message = err.get("message", "unknown error")
    details = err.get("details")
    details = dict(details) if isinstance(details, dict) else {}
    if not isinstance(message, str):
        message = str(message)
    if host and not message.startswith(host + ":"):
        message = f"{host}: {message}"
    if code == "RemoteCommandError":
        rc = details.get("rc")
        argv = details.get("argv")
        return RemoteCommandError(str(details.get("host") or host or "?"),
                                  [str(a) for a in argv] if isinstance(argv, list) else [],
                                  rc if isinstance(rc, int) and not isinstance(rc, bool) else -1,
                                  str(details.get("stderr", "")), message=message)
    cls = _all_subclasses().get(str(code), StepError)
    details.pop("message", None)             # a crafted detail must not break the call
    return cls(message, **details)


def _all_subclasses() -> dict[str, type[ImgstorError]]:
    out: dict[str, type[ImgstorError]] = {}
    todo = [ImgstorError]
    while todo:
        c = todo.pop()
        out[c.__name__] = c
        todo.extend(c.__subclasses__())
    return out


def _jsonable(v: object) -> object:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
