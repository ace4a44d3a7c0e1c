"""Small helpers the node steps share."""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, TypeVar

from imgstor.errors import Conflict, ImgstorError, NotFound, RemoteCommandError, UsageError
from imgstor.remote.drivers import zfs
from imgstor.remote.drivers._common import run_mapped
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import INITIATOR_NAME_FILE, no_initiator_name, parse_initiator_name

__all__ = ["run_mapped", "wait_path", "wait_until", "retry", "initiator_name",
           "require_initiator_name", "chap_pair", "mask_error", "run_secret", "MASK",
           "CHAP_USER"]

MASK = "***"


def wait_path(ex: Executor, path: str, *, timeout: float = 30.0, why: str = "") -> None:
    """Wait (bounded) for a device node or link that udev makes asynchronously: zvols after
    `zfs create -V` / `zfs receive`, /dev/mapper after `dmsetup create`, iSCSI by-path
    links after a login.  `udevadm settle` first; nothing to wait for in a dry run."""
    if ex.dry_run:
        return
    ex.run(["udevadm", "settle", f"--timeout={int(timeout)}"], read_only=True, check=False)
    if not wait_until(ex, lambda: ex.fs.exists(path), timeout=timeout, interval=0.1):
        raise NotFound(f"{ex.host}: {why}{path} did not appear within {timeout:.0f}s")


def initiator_name(ex: Executor) -> str | None:
    """This node's iSCSI initiator name (protocol.INITIATOR_NAME_FILE), None if none."""
    return parse_initiator_name(ex.fs.read_text(INITIATOR_NAME_FILE) or "")


def require_initiator_name(ex: Executor) -> str:
    name = initiator_name(ex)
    if not name:
        raise no_initiator_name(ex.host)
    return name


# ------------------------------------------------------------------ waiting and retrying
T = TypeVar("T")


def wait_until(ex: Executor, ready: Callable[[], Any], *, timeout: float,
               interval: float) -> Any:
    """``ready()`` until it answers something true (returned) or ``timeout`` seconds have
    passed (its last answer returned), ``interval`` apart, on the executor's clock."""
    deadline = ex.fs.monotonic() + timeout
    while True:
        got = ready()
        if got or ex.fs.monotonic() > deadline:
            return got
        ex.fs.sleep(interval)


def retry(ex: Executor, fn: Callable[[], T], *, tries: int, delay: float,
          on: type[BaseException] | tuple[type[BaseException], ...],
          when: Callable[[Any], bool] = lambda e: True) -> T:
    """``fn()``, again after ``delay`` seconds while it raises one of ``on`` for which
    ``when(error)`` holds, ``tries`` times in all; the last error is raised (os-brick's
    ``utils.retry``).  Sleeps on the executor's clock."""
    for i in range(tries):
        try:
            return fn()
        except on as e:
            if i == tries - 1 or not when(e):
                raise
            ex.fs.sleep(delay)
    raise ValueError("retry needs tries >= 1")


DESTROY_TRIES = 20


def destroy_dataset(ex: Executor, name: str) -> None:
    """``zfs destroy NAME`` (never ``-r``).  zfs-fuse quirk (seen in the lab): right after
    use it says "dataset is busy" for a second or two, and may still complete a moment
    later: retried while busy (DESTROY_TRIES, 0.5 s apart); "does not exist" is done."""
    def once() -> None:
        try:
            run_mapped(ex, zfs.destroy(name), zfs.classify)
        except NotFound:
            pass
    retry(ex, once, tries=DESTROY_TRIES, delay=0.5, on=Conflict,
          when=lambda e: e.details.get("reason") == zfs.REASON_BUSY)


# ------------------------------------------------------------------ CHAP secrets
# Always ``fullmatch``: with ``match``, ``$`` also matches before a trailing newline
# (audit L5).
CHAP_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_CHAP_PASSWORD = re.compile(r"^[A-Za-z0-9]{12,64}$")


def chap_pair(chap: dict | None) -> tuple[str, str] | None:
    """``{"user", "password"}`` from the frontend (JSON on stdin) -> (user, password), or
    None.  The password is never quoted in an error."""
    if not chap:
        return None
    user, password = chap.get("user"), chap.get("password")
    if not isinstance(user, str) or not CHAP_USER.fullmatch(user):
        raise UsageError(f"bad CHAP user {user!r}", field="chap.user")
    if not isinstance(password, str) or not _CHAP_PASSWORD.fullmatch(password):
        raise UsageError("bad CHAP password (12-64 characters of [A-Za-z0-9]; not shown)",
                         field="chap.password")
    return user, password


def _mask(value: Any, secrets: Iterable[str]) -> Any:
    if isinstance(value, str):
        for s in secrets:
            if s:
                value = value.replace(s, MASK)
        return value
    if isinstance(value, (list, tuple)):
        return [_mask(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v, secrets) for k, v in value.items()}
    return value


def mask_error(e: ImgstorError, secrets: Iterable[str]) -> ImgstorError:
    """The same error with every secret replaced by ``***`` (message and details)."""
    secrets = [s for s in secrets if s]
    if isinstance(e, RemoteCommandError):
        return RemoteCommandError(e.host, _mask(e.argv, secrets), e.rc, _mask(e.stderr, secrets),
                                  _mask(e.stdout or "", secrets),
                                  message=_mask(e.message, secrets))
    return type(e)(_mask(e.message, secrets), **_mask(e.details, secrets))


def run_secret(ex: Executor, argv: list[str], secrets: Iterable[str],
               classify: Callable[[RemoteCommandError], ImgstorError], **kw):
    """``ex.run(argv)`` for a command that carries a secret in its argv (tgtadm, iscsiadm
    and targetcli take a CHAP password on the command line only: it is visible in ``ps`` on
    the node while the command runs).  What the executor logs for it (``--debug``, the
    ``SKIP>`` lines of a dry run) and any error show ``***`` instead."""
    secrets = [s for s in secrets if s]
    nlog, nskip = len(ex.log), len(ex.skipped)
    try:
        return ex.run(argv, **kw)
    except RemoteCommandError as e:
        raise mask_error(classify(e), secrets) from None
    finally:
        ex.log[nlog:] = _mask(ex.log[nlog:], secrets)
        ex.skipped[nskip:] = _mask(ex.skipped[nskip:], secrets)
