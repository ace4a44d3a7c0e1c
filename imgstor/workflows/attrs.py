"""Storage attributes per host, as the Rocks guide sets them:

    set host attr HOST... ATTR [value=]VALUE      (also attr=ATTR value=VALUE)
    list host attr [HOST...] [ATTR...] [attr=ATTR]
    remove host attr HOST... ATTR                 (also attr=ATTR)

``img_sync`` and ``vm_container_zpool`` belong to compute hosts (VM containers),
``img_zpools`` to NAS hosts (zpools separated by ``,`` or ``:``), ``ib_net`` (also spelled
``IB_net``) to any host.  A value set here is kept in the state store (``attrs``) and
overrides the config file for that host: ``ctx.config`` applies it, so every workflow sees
it from the next command on.  A mapping already made keeps what it recorded (its mode, its
portal); the change applies to the next map.  Zpools are checked live: each must exist on
the host (the read-only ``probe`` step's pool list) before it is recorded.
"""
from __future__ import annotations

import re
from typing import Any

from imgstor import validate
from imgstor.config import HostConfig
from imgstor.errors import NotFound, UsageError
from imgstor.output import Lines, Output
from imgstor.state.model import HOST_ATTR_NAMES, HostAttrs
from imgstor.workflows.context import Ctx

__all__ = ["set_attr", "list_attrs", "remove_attr", "dump_attrs", "attr_name", "parse_value",
           "ROLES"]

# Which hosts an attribute belongs to (None: any).
ROLES: dict[str, str | None] = {"img_sync": "compute", "vm_container_zpool": "compute",
                                "img_zpools": "nas", "ib_net": None, "vm_runner": "compute"}
_BOOL = {"yes": True, "true": True, "1": True, "on": True,
         "no": False, "false": False, "0": False, "off": False}


def attr_name(name: str) -> str:
    """``IB_net`` -> ``ib_net``; anything not a storage attribute is a UsageError."""
    n = name.lower()
    if n not in HOST_ATTR_NAMES:
        raise UsageError(f"{name!r:.60} is not a storage attribute imgstor keeps; it keeps "
                         f"{', '.join(HOST_ATTR_NAMES)} (IB_net is ib_net)", field="attr")
    return n


def _is_attr(word: str) -> bool:
    return word.lower() in HOST_ATTR_NAMES


def parse_value(attr: str, text: str) -> Any:
    """The value of ``attr`` given on the command line, as the store keeps it."""
    if attr == "img_sync":
        v = _BOOL.get(text.strip().lower())
        if v is None:
            raise UsageError(f"img_sync: expected true or false, got {text!r:.60}",
                             field="value")
        return v
    if attr == "vm_container_zpool":
        return validate.zpool(text.strip(), "vm_container_zpool")
    if attr == "img_zpools":
        pools = [p.strip() for p in re.split(r"[,:]", text)]
        if not any(pools):
            raise UsageError("img_zpools: give one or more zpools, separated by ',' or ':'",
                             field="value")
        out: list[str] = []
        for p in pools:
            if not p:
                raise UsageError(f"img_zpools: empty zpool name in {text!r:.60}", field="value")
            validate.zpool(p, "img_zpools entry")
            if p not in out:
                out.append(p)
        return out
    if attr == "vm_runner":
        from imgstor.remote.naming import VM_RUNNERS
        if text.strip() not in VM_RUNNERS:
            raise UsageError(f"vm_runner: expected one of {', '.join(VM_RUNNERS)}, got "
                             f"{text!r:.60}", field="value")
        return text.strip()
    # ib_net: the storage network's domain; host h is reached for data as h.<ib_net>
    text = text.strip()
    if not text:
        raise UsageError("ib_net: empty; `remove host attr HOST ib_net` goes back to the "
                         "config's value", field="value")
    return validate.host(text, "ib_net")


def _shown(attr: str, value: Any) -> str | None:
    if value is None or value == "" or value == ():
        return None
    if attr == "img_sync":
        return "true" if value else "false"
    if attr == "img_zpools":
        return ",".join(value)
    return str(value)


def _split(args: list[str], attr: str | None, value: str | None, *, verb: str,
           want_value: bool) -> tuple[list[str], str, str | None]:
    """Rocks' argument shapes: HOST... ATTR [VALUE] | HOST... attr=ATTR [value=VALUE]."""
    args = list(args)
    if want_value and value is None and attr is None and len(args) >= 3:
        value = args.pop()
    elif want_value and value is None and attr is not None and len(args) >= 2:
        value = args.pop()
    if attr is None:
        if len(args) < 2:
            raise UsageError(f"{verb} host attr: give HOST and ATTR "
                             f"(e.g. {verb} host attr nas-0-0 img_zpools"
                             f"{' value=tank1,tank2' if want_value else ''})")
        attr = args.pop()
    if not args:
        raise UsageError(f"{verb} host attr: give the HOST")
    if want_value and value is None:
        raise UsageError(f"{verb} host attr: value=VALUE is required")
    hosts = [validate.host(h, "host") for h in args]
    return hosts, attr_name(attr), value


def _check_role(hc: HostConfig, attr: str, path: str) -> None:
    role = ROLES[attr]
    if role is not None and hc.role != role:
        what = "compute hosts (VM containers)" if role == "compute" else "NAS hosts"
        raise UsageError(f"{attr} belongs to {what}; {hc.name} is a {hc.role} host in {path}")


def _pools_exist(ctx: Ctx, host: str, pools: list[str]) -> None:
    """Each of ``pools`` exists on ``host``, asked live (the read-only probe step)."""
    facts = ctx.cluster.step(host, "probe").facts
    have = [p["name"] for p in facts.get("pools", [])]
    missing = [p for p in pools if p not in have]
    if missing:
        raise NotFound(f"{host} has no zpool {', '.join(missing)} (its pools: "
                       f"{', '.join(have) or 'none'}); create it first or name another",
                       host=host)


def set_attr(ctx: Ctx, args: list[str], attr: str | None = None, value: str | None = None) -> str:
    """Set a storage attribute on hosts; recorded only once every host checks out."""
    hosts, attr, text = _split(args, attr, value, verb="set", want_value=True)
    assert text is not None                    # want_value: _split refused a missing one
    parsed = parse_value(attr, text)
    cfg = ctx.file_config
    for h in hosts:
        _check_role(cfg.host(h), attr, cfg.path)
    if attr in ("img_zpools", "vm_container_zpool"):
        pools = parsed if attr == "img_zpools" else [parsed]
        for h in hosts:
            _pools_exist(ctx, h, pools)
    with ctx.transaction() as st:
        for h in hosts:
            a = st.attrs.get(h) or HostAttrs()
            setattr(a, attr, parsed)
            st.attrs[h] = a
    msg = "; ".join(f"{h}: {attr} = {_shown(attr, parsed)}" for h in hosts)
    note = " (applies to the next map; live mappings keep what they recorded)"
    return f"dry run, nothing saved: {msg}" if ctx.dry_run else msg + note


def remove_attr(ctx: Ctx, args: list[str], attr: str | None = None) -> str:
    """Drop what ``set host attr`` set: the config's value applies again."""
    hosts, attr, _ = _split(args, attr, None, verb="remove", want_value=False)
    cfg = ctx.file_config
    kept = ctx.store.read_attrs()
    for h in hosts:                   # a host neither configured nor kept: NotFound first
        if h not in kept:
            cfg.host(h)
    removed, absent = [], []
    with ctx.transaction() as st:
        for h in hosts:
            a = st.attrs.get(h)
            if a is None or getattr(a, attr) is None:
                absent.append(h)
                continue
            setattr(a, attr, None)
            if not a.values():
                del st.attrs[h]
            removed.append(h)
    lines = []
    for h in removed:
        back = ""
        if h in cfg.hosts:
            back = (f"; now {_shown(attr, getattr(cfg.hosts[h], attr)) or '(empty)'} "
                    f"({cfg.source(h, attr)})")
        lines.append(f"{h}: removed {attr}{back}")
    for h in absent:
        lines.append(f"{h}: {attr} was not set by command ({cfg.source(h, attr)} applies)")
    text = "\n".join(lines)
    return f"dry run, nothing saved: {text}" if ctx.dry_run and removed else text


def list_attrs(ctx: Ctx, args: list[str] | None = None, attr: str | None = None) -> Output:
    """Columns HOST ATTR VALUE SOURCE: each storage attribute of each host (those that
    belong to its role) and where its value comes from."""
    args = list(args or [])
    names = [attr_name(a) for a in args if _is_attr(a)]
    if attr is not None:
        names.append(attr_name(attr))
    hosts = [validate.host(h, "host") for h in args if not _is_attr(h)]
    cfg = ctx.config
    for h in hosts:
        cfg.host(h)
    rows = []
    for h in hosts or list(cfg.hosts):
        hc = cfg.hosts[h]
        for a in names or HOST_ATTR_NAMES:
            if ROLES[a] not in (None, hc.role):
                continue
            rows.append({"host": h, "attr": a, "value": _shown(a, getattr(hc, a)),
                         "source": cfg.source(h, a)})
    gone = sorted(set(ctx.store.read_attrs()) - set(cfg.hosts))
    footer = [f"note: the store keeps attributes for {h}, which is not in {cfg.path} "
              f"(`imgstor remove host attr {h} ATTR` drops them)" for h in gone]
    return Output(rows, [("host", "HOST"), ("attr", "ATTR"), ("value", "VALUE"),
                         ("source", "SOURCE")], footer=footer)



def dump_attrs(ctx: Ctx, hosts: list[str] | None = None) -> Lines:
    """The ``imgstor set host attr|storageattr|zvolattr …`` lines that recreate every
    attribute set by command (of ``hosts``, or all), which ``imgstor batch`` reads back.
    Attributes that come from the config file are not dumped: the file keeps them."""
    import shlex

    from imgstor.workflows.syncattrs import shown_value
    want = {validate.host(h, "host") for h in hosts or ()}
    st = ctx.store.read()
    lines = []

    def add(*argv: str) -> None:
        lines.append(shlex.join(["imgstor", "set", "host", *argv]))
    for host, a in st.attrs.items():
        if want and host not in want:
            continue
        for attr, value in a.values().items():
            add("attr", host, attr, f"value={_shown(attr, value)}")
    for nas, sa in st.storageattrs.items():
        if not want or nas in want:
            for attr, value in sa.values().items():
                add("storageattr", nas, attr, str(shown_value(attr, value)))
    for key, sa in st.zvolattrs.items():
        nas, _, vol = key.partition("/")
        if not want or nas in want:
            for attr, value in sa.values().items():
                add("zvolattr", nas, vol, attr, str(shown_value(attr, value)))
    return Lines(lines)
