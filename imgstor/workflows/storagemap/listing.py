"""``list host storagemap [NAS] [--verify]`` and ``list host storagedev HOST``."""
from __future__ import annotations

import time

from imgstor import chap as chapstore
from imgstor import validate
from imgstor.errors import ImgstorError
from imgstor.names import target_iqn
from imgstor.output import Output, format_duration
from imgstor.workflows.storagemap.common import TRANSITIONAL, portal_of, state_path

__all__ = ["list_maps", "list_devs"]


_MAP_COLUMNS = [("zvol", "ZVOL"), ("host", "HOST"), ("zpool", "ZPOOL"), ("target", "TARGET"),
                ("state", "STATE"), ("time", "TIME")]


def list_maps(ctx, nas: str | None = None, verify: bool = False) -> Output:
    if nas is not None:
        nas = validate.host(nas, "NAS")
        ctx.config.host(nas, role="nas")
    st = ctx.store.read()
    vols = sorted((v for v in st.volumes.values() if nas is None or v.nas == nas),
                  key=lambda v: (v.nas, v.vol))
    now = time.time()
    rows = []
    for v in vols:
        state = v.state
        if v.busy:
            state += f" (busy: {v.busy.op})"
        rows.append({"nas": v.nas, "zvol": v.vol, "host": v.host, "zpool": v.zpool,
                     "target": v.target, "state": state, "raw_state": v.state,
                     "time": format_duration(now - v.since) if v.state in TRANSITIONAL else None,
                     "device": v.device, "error": v.error,
                     "initiator": v.extra.get("initiator")})
    columns = list(_MAP_COLUMNS)
    if nas is None:
        columns.insert(0, ("nas", "NAS"))
    footer = [f"{r['nas']}:{r['zvol']}: last error: {r['error']}" for r in rows if r["error"]]
    exit_code = 0
    if verify:
        columns.append(("live", "LIVE"))
        exit_code = _verify(ctx, rows)
    return Output(rows, columns, footer=footer, exit_code=exit_code)


def _verify(ctx, rows: list[dict]) -> int:
    """Compare each row with the NAS's live targets; mark rows that differ."""
    cl = ctx.cluster
    by_nas: dict[str, list[dict]] = {}
    for r in rows:
        by_nas.setdefault(r["nas"], []).append(r)

    def live(nas: str):
        return cl.step(nas, "nas.target_facts", driver=ctx.config.host(nas).target).facts["targets"]

    found = cl.parallel(list(by_nas), live)
    bad = 0
    for nas, rs in by_nas.items():
        res = found[nas]
        for r in rs:
            if isinstance(res, ImgstorError):
                r["live"] = f"unknown: {res}"
                bad += 1
                continue
            iqn = r["target"] or target_iqn(nas, r["zvol"])
            t = next((t for t in res if t["iqn"] == iqn), None)
            want_ini = r["initiator"]
            if r["raw_state"] == "unmapped":
                r["live"] = "ok" if t is None else f"DIFFERS: target {iqn} exists"
            elif t is None:
                r["live"] = "DIFFERS: no target on the NAS"
            elif want_ini and t["acls"] != [want_ini]:
                r["live"] = f"DIFFERS: ACL is {','.join(t['acls']) or 'empty'}"
            else:
                r["live"] = "ok"
            bad += r["live"] != "ok"
    return 9 if bad else 0


def list_devs(ctx, host: str) -> Output:
    host = validate.host(host, "host")
    host_cfg = ctx.config.host(host, role="compute")
    st = ctx.store.read()
    vols = sorted((v for v in st.volumes.values() if v.host == host), key=lambda v: v.vol)
    targets = []
    for v in vols:
        if not v.target:
            continue
        t = {"iqn": v.target, "portal": portal_of(ctx.config.host(v.nas)),
             "lun": int(v.extra.get("lun", 1))}
        creds = chapstore.load(state_path(ctx), v.nas, v.vol) if v.extra.get("chap_user") else None
        if creds:
            t["chap"] = creds.wire()
        targets.append(t)
    seen = {}
    if targets:
        facts = ctx.cluster.step(host, "compute.devices", kind=host_cfg.initiator,
                                 targets=targets).facts
        seen = {d["iqn"]: d for d in facts["devices"]}
    rows = []
    for v in vols:
        d = seen.get(v.target, {})
        size = d.get("size") or v.size
        rows.append({"zvol": v.vol, "device": d.get("device") or v.device,
                     "status": d.get("status", "absent") if v.target else v.state,
                     "size_gb": round(size / 2**30, 2) if size else None,
                     "block_dev": d.get("device") if host_cfg.initiator == "iscsiadm" else None,
                     "nas": v.nas, "target": v.target, "state": v.state})
    return Output(rows, [("zvol", "ZVOL"), ("device", "DEVICE/LVM"), ("status", "STATUS"),
                         ("size_gb", "SIZE(GB)"), ("block_dev", "BLOCK DEV"), ("nas", "NAS"),
                         ("state", "STATE")])
