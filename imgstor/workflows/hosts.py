"""`imgstor ping` / `imgstor hosts`: reach every configured host at once and show what it has.

The first thing an administrator runs: per host, reachable or the error, the storage tools
found (rtslib among them when importable), pyzfs (its version when the zfs driver uses
libzfs_core there, else "no" or "no /dev/zfs"), the pools and the iSCSI initiator name.
Runs the read-only ``probe`` node step.
"""
from __future__ import annotations

from imgstor.errors import ImgstorError, TransportError
from imgstor.output import Output
from imgstor.workflows.context import Ctx

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["ping"]

_TOOL_ORDER = ("zfs", "zpool", "tgtadm", "targetcli", "iscsiadm", "dmsetup", "qemu-img",
               "iscsi-inq")


def ping(ctx: Ctx, hosts: list[str] | None = None, trust: bool = False) -> Output:
    from imgstor import validate
    from imgstor.errors import UsageError
    cfg = ctx.config
    if trust and not hosts:
        raise UsageError("ping --trust names the hosts whose keys you checked: "
                         "imgstor ping --trust HOST…")
    names = [validate.host(h) for h in hosts] if hosts else list(cfg.hosts)
    for n in names:
        cfg.host(n)                      # unknown host: NotFound before anything runs
    results = ctx.cluster.parallel(names, lambda h: ctx.cluster.step(h, "probe"))
    if trust:
        _confirm(ctx, [n for n in names if not isinstance(results[n], ImgstorError)])
    rows = []
    for n in names:
        r = results[n]
        hc = cfg.host(n)
        row: dict[str, Any] = {"host": n, "role": hc.role, "address": hc.address}
        if isinstance(r, ImgstorError):
            row.update(status="unreachable" if isinstance(r, TransportError) else "error",
                       error=str(r), tools=None, pyzfs=None, pools=None, initiator=None)
        else:
            f = r.facts
            tools = [t for t in _TOOL_ORDER if t in f.get("tools", {})]
            if f.get("rtslib"):
                tools.append("rtslib")
            row.update(status="ok", error=None, tools=",".join(tools) or None,
                       pyzfs=f.get("pyzfs"),
                       pools=",".join(f"{p['name']}({p['health']})" for p in f.get("pools", []))
                       or None, initiator=f.get("initiator"), python=f.get("python"),
                       kernel=f.get("kernel"))
        rows.append(row)
    bad = [r for r in rows if r["status"] != "ok"]
    footer = [f"{r['host']}: {r['error']}" for r in bad]
    out = Output(rows, [("host", "HOST"), ("role", "ROLE"), ("status", "STATUS"),
                        ("tools", "TOOLS"), ("pyzfs", "PYZFS"), ("pools", "POOLS"),
                        ("initiator", "INITIATOR")],
                 footer=footer)
    if bad:
        out.exit_code = 11      # some host unreachable: scripts can tell
    return out


def _confirm(ctx: Ctx, names: list[str]) -> None:
    """``--trust``: the keys pinned on first use for NAMES (just reached, so the key in the
    file is the one each presents) lose their ``imgstor-unconfirmed`` comment; each
    confirmed key's fingerprint is printed on stderr."""
    import sys

    from imgstor import hostkeys
    cfg = ctx.config
    lookups = []
    for n in names:
        hc = cfg.host(n)
        port = hc.port or cfg.ssh.port
        lookups.append(hc.address if port == 22 else f"[{hc.address}]:{port}")
    if ctx.dry_run:
        return
    for line in hostkeys.confirm(cfg.ssh.known_hosts, lookups):
        print(f"imgstor: confirmed {line.split()[0]} {line.split()[1]} "
              f"{hostkeys.fingerprint_of(line)}", file=sys.stderr)
