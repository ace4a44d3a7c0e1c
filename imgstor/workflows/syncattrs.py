"""The roll's sync attributes, per volume and per NAS (kept in the state store):

    set host zvolattr NAS VOL ATTR VALUE        list host zvolattr NAS [VOL]
    set host storageattr NAS ATTR VALUE         list host storageattr [NAS...]
    remove host zvolattr NAS VOL ATTR           remove host storageattr NAS ATTR
    (``attr=ATTR value=VALUE`` also; VALUE ``None`` unsets, as in the roll)

ATTR is one of:

- ``frequency``: seconds between the periodic pulls of a mapped sync volume (``refresh``):
  an integer of seconds or with a unit, ``90``, ``90s``, ``10m``, ``2h``, ``1d`` (>= 1 s;
  cron runs ``refresh`` once a minute, so less than 60 s means "at every refresh").
- ``uploadspeed``: the limit of the NAS->node copy (the roll's "upload", NAS->VM: the copy
  of a sync map), bytes per second written like ``sync_bwlimit``: ``10M`` = 10 MiB/s,
  ``500K``, ``1G``, a plain number of bytes; ``0`` = no limit.
- ``downloadspeed``: the limit of the node->NAS copies (the roll's "download", NAS<-VM: the
  periodic pulls and the sync back at unmap), same units.

Precedence (``effective``): the volume's value, else its NAS's (storageattr), else the
config: ``sync_frequency`` of the NAS for ``frequency``; ``sync_bwlimit`` of the sending
host for the speeds (the NAS for uploadspeed, the node for downloadspeed).  Every value is
checked before anything is saved; nothing runs on any host.  A volume's attributes live in
the store's ``zvolattrs`` keyed NAS/VOL, apart from its record: as in the roll, they may be
set before the volume exists and they survive its unmap and removal (``remove host
zvolattr`` drops them).
"""
from __future__ import annotations

import re
from typing import Any

from imgstor import validate
from imgstor.errors import UsageError
from imgstor.output import Output, When, when_cell
from imgstor.state.model import SYNC_ATTR_NAMES, State, SyncAttrs, Volume, volume_key
from imgstor.workflows.context import Ctx

__all__ = ["parse_frequency", "parse_speed", "parse_value", "effective", "bwlimit",
           "frequency", "due", "fmt_rate", "shown_value", "set_zvolattr", "set_storageattr",
           "list_zvolattr",
           "list_storageattr", "remove_zvolattr", "remove_storageattr"]

_FREQ = re.compile(r"([0-9]+)\s*([smhd]?)", re.ASCII | re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_UNSET = ("none", "null", "")


def parse_frequency(text: str) -> int:
    """``frequency``: seconds (``300``, ``300s``) or ``10m``/``2h``/``1d``; >= 1 s."""
    m = _FREQ.fullmatch(str(text).strip())
    if not m:
        raise UsageError(f"frequency: expected seconds or a number with s, m, h or d "
                         f"(e.g. 300 or 10m), got {text!r:.60}", field="value")
    secs = int(m.group(1)) * _UNIT[m.group(2).lower()]
    if secs < 1:
        raise UsageError("frequency: at least 1 second", field="value")
    return secs


def parse_speed(attr: str, text: str) -> int:
    """``uploadspeed``/``downloadspeed``: bytes per second like ``sync_bwlimit`` (``10M`` =
    10 MiB/s; pv's suffixes, which the roll passed to ``pv -L``); 0 = no limit."""
    from imgstor.remote.protocol import parse_rate
    try:
        return parse_rate(str(text).strip())
    except UsageError:
        raise UsageError(f"{attr}: expected bytes per second, e.g. 10M (MiB/s), 500K, "
                         f"1G or a number of bytes; 0 = no limit; got {text!r:.60}",
                         field="value") from None


def attr_name(name: str) -> str:
    n = str(name).lower()
    if n not in SYNC_ATTR_NAMES:
        raise UsageError(f"{name!r:.60} is not a sync attribute imgstor keeps; it keeps "
                         f"{', '.join(SYNC_ATTR_NAMES)}", field="attr")
    return n


def parse_value(attr: str, text: str) -> int | None:
    """The value of ``attr`` as stored; None for ``None`` (unset, as in the roll)."""
    if str(text).strip().lower() in _UNSET:
        return None
    return parse_frequency(text) if attr == "frequency" else parse_speed(attr, text)


def fmt_rate(rate: int | None) -> str | None:
    """Bytes per second as written: 10485760 -> ``10M``; 0 -> ``0`` (no limit)."""
    if rate is None:
        return None
    for suffix, n in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if rate and rate % n == 0:
            return f"{rate // n}{suffix}"
    return str(rate)


def shown_value(attr: str, value: int | None) -> int | str | None:
    """Seconds as a number (frequency), a rate as the user writes it (10M)."""
    return value if value is None or attr == "frequency" else fmt_rate(value)


_shown = shown_value


# ------------------------------------------------------------------ precedence
def effective(st: State, config: Any, nas: str, vol: str, attr: str,
              host: str | None = None) -> tuple[int, str]:
    """(value, where it comes from) of sync attribute ``attr`` for volume NAS/VOL: the
    volume's (``zvolattr``), else the NAS's (``storageattr``), else the config's
    (``sync_frequency`` of the NAS; ``sync_bwlimit`` of the sending host: the NAS for
    uploadspeed, HOST, the node, for downloadspeed)."""
    own = st.zvolattrs.get(volume_key(nas, vol))
    if own is not None and getattr(own, attr) is not None:
        return getattr(own, attr), "zvolattr"
    nas_own = st.storageattrs.get(nas)
    if nas_own is not None and getattr(nas_own, attr) is not None:
        return getattr(nas_own, attr), "storageattr"
    if attr == "frequency":
        return int(config.host(nas).sync_frequency), "config sync_frequency"
    sender = nas if attr == "uploadspeed" else host
    if sender is None or sender not in config.hosts:
        return 0, "config sync_bwlimit"
    return int(getattr(config.host(sender), "sync_bwlimit", 0) or 0), \
        f"config sync_bwlimit of {sender}"


def frequency(st: State, config: Any, nas: str, vol: str) -> int:
    """Seconds between the periodic pulls of NAS/VOL."""
    return effective(st, config, nas, vol, "frequency")[0]


def due(v: Volume, freq: float, now: float) -> float | None:
    """Seconds until sync volume ``v``'s next pull (<= 0: due), or None when it gets none
    (not a mapped sync volume on its local copy)."""
    if v.mode != "sync" or v.state != "mapped" or v.target:
        return None
    last = float(v.extra.get("last_pull") or v.since or 0)
    return last + freq - now


def bwlimit(st: State, config: Any, v: Any, direction: str) -> int:
    """The copy limit (bytes/s, 0 none) of volume ``v``: ``up`` (NAS->node) or ``down``
    (node->NAS, the pulls and the sync back)."""
    attr = {"up": "uploadspeed", "down": "downloadspeed"}[direction]
    return effective(st, config, v.nas, v.vol, attr, host=v.host)[0]


# ------------------------------------------------------------------ commands
def _split(args: list[str], attr: str | None, value: str | None, *, verb: str, noun: str,
           n_names: int, want_value: bool) -> tuple[list[str], str, str | None]:
    """NAS [VOL] ATTR [VALUE], or with attr=ATTR [value=VALUE]."""
    args = list(args)
    shape = (("NAS VOL" if n_names == 2 else "NAS") + " ATTR" + (" VALUE" if want_value
                                                                  else ""))
    want = n_names + (attr is None) + (want_value and value is None)
    if len(args) != want:
        raise UsageError(f"{verb} host {noun}: expected {shape} (ATTR: "
                         f"{'|'.join(SYNC_ATTR_NAMES)}), got {len(args)} argument(s)")
    if want_value and value is None:
        value = args.pop()
    if attr is None:
        attr = args.pop()
    return args, attr_name(attr), value


def _nas(ctx: Ctx, nas: str) -> str:
    nas = validate.host(nas, "NAS")
    ctx.config.host(nas, role="nas", what="NAS")
    return nas


def _set(ctx: Ctx, section: str, key: str, attr: str, value: int | None) -> None:
    with ctx.transaction() as st:
        sect = getattr(st, section)
        a = sect.get(key) or SyncAttrs()
        setattr(a, attr, value)
        if a.values():
            sect[key] = a
        else:
            sect.pop(key, None)


def set_zvolattr(ctx: Ctx, args: list[str], attr: str | None = None,
                 value: str | None = None) -> str:
    """``set host zvolattr NAS VOL ATTR VALUE``: checked, then kept in the store."""
    (nas, vol), attr, text = _split(args, attr, value, verb="set", noun="zvolattr",
                                    n_names=2, want_value=True)
    assert text is not None              # want_value: _split took it
    nas, vol = _nas(ctx, nas), validate.volume(vol)
    parsed = parse_value(attr, text)
    key = volume_key(nas, vol)
    _set(ctx, "zvolattrs", key, attr, parsed)
    shown = _shown(attr, parsed)
    msg = f"{key}: {attr} = {shown}" if parsed is not None else f"{key}: {attr} unset"
    if key not in ctx.store.read().volumes:
        msg += " (no such volume in the store yet: applies once it is mapped)"
    return f"dry run, nothing saved: {msg}" if ctx.dry_run else msg


def set_storageattr(ctx: Ctx, args: list[str], attr: str | None = None,
                    value: str | None = None) -> str:
    """``set host storageattr NAS ATTR VALUE``: the NAS's value for its volumes."""
    (nas,), attr, text = _split(args, attr, value, verb="set", noun="storageattr",
                                n_names=1, want_value=True)
    assert text is not None              # want_value: _split took it
    nas = _nas(ctx, nas)
    parsed = parse_value(attr, text)
    _set(ctx, "storageattrs", nas, attr, parsed)
    msg = f"{nas}: {attr} = {_shown(attr, parsed)}" if parsed is not None else \
        f"{nas}: {attr} unset"
    return f"dry run, nothing saved: {msg}" if ctx.dry_run else msg


def remove_zvolattr(ctx: Ctx, args: list[str], attr: str | None = None) -> str:
    (nas, vol), attr, _ = _split(args, attr, None, verb="remove", noun="zvolattr",
                                 n_names=2, want_value=False)
    nas, vol = validate.host(nas, "NAS"), validate.volume(vol)
    return _remove(ctx, "zvolattrs", volume_key(nas, vol), attr)


def remove_storageattr(ctx: Ctx, args: list[str], attr: str | None = None) -> str:
    (nas,), attr, _ = _split(args, attr, None, verb="remove", noun="storageattr",
                             n_names=1, want_value=False)
    return _remove(ctx, "storageattrs", validate.host(nas, "NAS"), attr)


def _remove(ctx: Ctx, section: str, key: str, attr: str) -> str:
    """Unset ATTR of KEY (a volume's key, or a NAS) in the store's SECTION."""
    a = getattr(ctx.store.read(), section).get(key)
    if a is None or getattr(a, attr) is None:
        return f"{key}: {attr} was not set"
    _set(ctx, section, key, attr, None)
    msg = f"{key}: removed {attr}"
    return f"dry run, nothing saved: {msg}" if ctx.dry_run else msg


def list_zvolattr(ctx: Ctx, nas: str, vol: str | None = None) -> Output:
    """The roll's columns NAS ZVOL FREQUENCY NEXTSYNC UPLOADSPEED DOWNLOADSPEED, for each
    volume of NAS the store knows or has attributes for.  A value the volume does not set
    itself is shown in parentheses: the one that applies (the NAS's or the config's)."""
    import time

    nas = _nas(ctx, nas)
    if vol is not None:
        vol = validate.volume(vol)
    st = ctx.store.read()
    names = {v.vol for v in st.volumes.values() if v.nas == nas}
    names |= {k.split("/", 1)[1] for k in st.zvolattrs if k.split("/", 1)[0] == nas}
    if vol is not None:
        names &= {vol}
        if not names:
            names = {vol}
    now = time.time()
    rows = []
    for name in sorted(names):
        key = volume_key(nas, name)
        v = st.volumes.get(key)
        row: dict[str, Any] = {"nas": nas, "zvol": name, "nextsync": None}
        for attr in SYNC_ATTR_NAMES:
            val, src = effective(st, ctx.config, nas, name, attr,
                                 host=v.host if v is not None else None)
            row[attr], row[f"{attr}_source"] = val, src    # seconds, bytes/s: numbers
        if v is not None and not st.jobs_of(key):
            left = due(v, row["frequency"], now)
            if left is not None:
                row["nextsync"] = When(now + left)
        rows.append(row)
    return Output(rows, [("nas", "NAS"), ("zvol", "ZVOL"),
                         ("frequency", "FREQUENCY", _cell("frequency")),
                         ("nextsync", "NEXTSYNC", when_cell("nextsync")),
                         ("uploadspeed", "UPLOADSPEED", _cell("uploadspeed")),
                         ("downloadspeed", "DOWNLOADSPEED", _cell("downloadspeed"))])


def _cell(attr: str):
    """A zvolattr cell: the value as written (10M), in parentheses when inherited."""
    def text(row: dict) -> str:
        shown = _shown(attr, row[attr])
        return str(shown) if row[f"{attr}_source"] == "zvolattr" else f"({shown})"
    return text


def list_storageattr(ctx: Ctx, nases: list[str] | None = None) -> Output:
    """The roll's columns NAS ATTR VALUE, plus SOURCE: each NAS's sync attributes and,
    where it sets none, what applies (downloadspeed: each node's sync_bwlimit)."""
    cfg = ctx.config
    names = ([_nas(ctx, n) for n in nases] if nases
             else [h.name for h in cfg.hosts.values() if h.role == "nas"])
    st = ctx.store.read()
    rows = []
    for nas in names:
        own = st.storageattrs.get(nas) or SyncAttrs()
        for attr in SYNC_ATTR_NAMES:
            val = getattr(own, attr)
            if val is not None:
                rows.append({"nas": nas, "attr": attr, "value": val,
                             "source": "set by command"})
            elif attr == "frequency":
                rows.append({"nas": nas, "attr": attr,
                             "value": cfg.host(nas).sync_frequency,
                             "source": "config sync_frequency"})
            elif attr == "uploadspeed":
                rows.append({"nas": nas, "attr": attr,
                             "value": cfg.host(nas).sync_bwlimit,
                             "source": "config sync_bwlimit"})
            else:
                rows.append({"nas": nas, "attr": attr, "value": None,
                             "source": "each node's config sync_bwlimit"})
    # value: seconds (frequency) or bytes/s, numbers; shown as written (10M)
    return Output(rows, [("nas", "NAS"), ("attr", "ATTR"),
                         ("value", "VALUE", lambda r: r["value"] if r["value"] is None
                          else str(_shown(r["attr"], r["value"]))),
                         ("source", "SOURCE")])
