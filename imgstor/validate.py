"""Strict checks for every name and size that may reach a command on a host.

Each check returns the value unchanged when it is good and raises ``UsageError`` (exit 2)
naming the field and the bad value otherwise.  Patterns are matched with ``re.fullmatch``
and ``re.ASCII`` so a trailing newline or a unicode look-alike digit never slips through.
Run these before anything is written to the store or sent to a host.

Standard library only.  Frontend only: it is not shipped to nodes (the node app holds
imgstor/errors.py and imgstor/remote/**), whose steps check what they are given with their
own patterns (steps/snapshot.py, copypipe.py) and guards (drivers/_common.positional).
"""
from __future__ import annotations

import re

from imgstor.errors import UsageError

__all__ = ["host", "vm", "zpool", "volume", "iqn", "parse_size", "MAX_SIZE", "bad"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_ZPOOL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", re.ASCII)
# zpool(8): names beginning with these are reserved vdev keywords / device names.
_ZPOOL_RESERVED = re.compile(r"(?:mirror|raidz|draid|spare|log|c[0-9])", re.ASCII)
_VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", re.ASCII)
_IQN_RE = re.compile(r"iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+(?::[A-Za-z0-9._:-]+)?", re.ASCII)
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1024 ** 3, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4,
          "P": 1024 ** 5}
MAX_SIZE = 2 ** 63 - 1           # what truncate(1) and zfs can make


def bad(field: str, value: object, why: str) -> UsageError:
    """The UsageError for a refused value: names the field and shows the value (truncated)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return UsageError(f"invalid {field} {text}: {why}", field=field)


def _str(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise bad(field, value, "must be a string")
    return value


def host(value: object, field: str = "host name") -> str:
    """A host name: lower-case DNS labels (``compute-0-1``, ``nas-0-0.ibnet``)."""
    s = _str(field, value)
    if len(s) > 253 or not _HOST_RE.fullmatch(s):
        raise bad(field, s, "use lower-case letters, digits and '-' "
                            "(dot-separated labels of at most 63 characters)")
    return s


def vm(value: object, field: str = "VM name") -> str:
    """A VM name: same rules as a host name (it becomes one)."""
    return host(value, field)


def zpool(value: object, field: str = "zpool") -> str:
    """A ZFS pool name as zpool(8) accepts it, minus the reserved prefixes."""
    s = _str(field, value)
    if not _ZPOOL_RE.fullmatch(s):
        raise bad(field, s, "must start with a letter and contain only letters, digits, "
                            "'_', '.', '-' (at most 64 characters)")
    if ".." in s:
        raise bad(field, s, "must not contain '..'")
    if _ZPOOL_RESERVED.match(s):
        raise bad(field, s, "must not start with mirror, raidz, draid, spare, log or c<digit>")
    return s


def volume(value: object, field: str = "volume") -> str:
    """A volume (dataset leaf) name such as ``vm1-vol``; never a path."""
    s = _str(field, value)
    if not _VOLUME_RE.fullmatch(s):
        raise bad(field, s, "must start with a letter or digit and contain only letters, "
                            "digits, '_', '.', ':', '-' (at most 128 characters)")
    if ".." in s:
        raise bad(field, s, "must not contain '..'")
    return s


def iqn(value: object, field: str = "IQN") -> str:
    """An iSCSI qualified name ``iqn.YYYY-MM.reversed.domain[:suffix]`` (RFC 3720)."""
    s = _str(field, value)
    if len(s) > 223 or not _IQN_RE.fullmatch(s):
        raise bad(field, s, "expected iqn.YYYY-MM.domain[:name], at most 223 characters")
    return s


def parse_size(value: object, field: str = "size") -> int:
    """Size to bytes.  A plain number is GiB (Rocks semantics): ``"10"`` is 10 GiB;
    ``"512M"``, ``"10G"``, ``"1T"``, ``"100K"`` carry their unit (powers of 1024).
    Decimals are allowed when they come out as whole bytes (``"1.5G"``)."""
    if isinstance(value, bool):
        raise bad(field, value, "must be a number with an optional unit K, M, G, T")
    if isinstance(value, int):
        value = str(value)
    s = _str(field, value)
    m = _SIZE_RE.fullmatch(s) if len(s) <= 40 else None
    if not m:
        raise bad(field, s, "expected a positive number with an optional unit K, M, G, T "
                            "(no unit means GiB), e.g. 10 or 512M")
    from decimal import Decimal, InvalidOperation, localcontext  # lazy: only sizes need it
    try:
        with localcontext() as dc:
            dc.prec = 80             # exact for 40 digits x 2**50: no silent rounding
            n = Decimal(m.group(1)) * _UNITS[m.group(2).upper()]
    except InvalidOperation:  # pragma: no cover - the regex admits only digits
        raise bad(field, s, "not a number") from None
    if n != n.to_integral_value():
        raise bad(field, s, "is not a whole number of bytes")
    size = int(n)
    if size <= 0:
        raise bad(field, s, "must be greater than zero")
    if size > MAX_SIZE:
        raise bad(field, s, "is too large (2**63 bytes or more)")
    return size
