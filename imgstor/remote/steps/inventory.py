"""Read-only inventories for ``imgstor rebuild`` (and anything else that must learn what a
host holds without a state store): one round trip per host.

``nas.inventory``: imgstor's volumes on the NAS's pools with their ``imgstor:`` user
properties (what the map wrote: host, target, mode, initiator, portal, vm…) and the live
targets.  ``compute.inventory``: the node's datasets marked ``imgstor:role`` (temp-write,
local-copy), the overlay of each such volume and the initiator's live sessions.
"""
from __future__ import annotations

from imgstor.errors import ImgstorError, NotFound
from imgstor.remote import overlays, targets
from imgstor.remote.drivers import zfs
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.nas import MARK, PROP_PREFIX
from imgstor.remote.steps.registry import step

__all__ = ["nas_inventory", "compute_inventory", "NAS_PROPS"]

# The properties a NAS volume carries (written by the map, cleared by the unmap), read
# back by rebuild.  ``size``: promised bytes; the rest describe the mapping.
NAS_PROPS = ("size", "host", "target", "mode", "initiator", "portal", "vm", "vm_container")
TEMP_WRITE = "-temp-write"


def _children(ex: Executor, pool: str, columns: tuple[str, ...]) -> list[dict]:
    rows = zfs.list_columns(ex, pool, columns, types="filesystem,volume")
    return [r for r in rows if str(r["name"]).count("/") == 1]     # the pool's own children


@step("nas.inventory", read_only=True)
def nas_inventory(ex: Executor, *, pools: list[str], driver: str) -> StepResult:
    """Read-only: every dataset directly under POOLS with its type and ``imgstor:``
    properties (``zfs list -H -o name,type,imgstor:… -t filesystem,volume -r POOL``), and
    the target driver's live targets (LUN paths, ACLs, sessions).  A missing pool is
    reported in ``missing_pools``, not an error."""
    cols = ("name", "type", MARK) + tuple(PROP_PREFIX + p for p in NAS_PROPS)
    vols: list[dict] = []
    missing: list[str] = []
    for pool in pools:
        try:
            rows = _children(ex, pool, cols)
        except NotFound:
            missing.append(pool)
            continue
        for r in rows:
            pool_, _, vol = str(r["name"]).partition("/")
            vols.append({"pool": pool_, "vol": vol, "type": r["type"], "role": r[MARK],
                         "props": {p: r[PROP_PREFIX + p] for p in NAS_PROPS}})
    tg = targets.get(driver).facts(ex)
    return StepResult(False, {"volumes": vols, "targets": tg, "missing_pools": missing},
                      f"{len(vols)} datasets, {len(tg)} targets")


def _direct(ex: Executor, initiator: str, wanted: list[dict], sessions: list[str]) -> dict:
    """What a VM opens for each direct mapping in WANTED ({iqn, lun, portal}), without
    logging in: userspace -- the iscsi:// URL and qemu specs under this node's initiator
    name; iscsiadm -- the by-path device of the session, if there is one."""
    from imgstor.remote.drivers import iscsiadm, userspace
    from imgstor.remote.protocol import Portal
    from imgstor.remote.steps.compute import _initiator
    out: dict[str, dict] = {}
    me = _initiator(ex) if wanted and initiator == "userspace" else ""
    for w in wanted:
        iqn, lun = str(w["iqn"]), int(w.get("lun", 1))
        addr, port = Portal.parse(w["portal"])
        if initiator == "userspace":
            out[iqn] = {"session": None, "device": userspace.url(addr, iqn, lun, port),
                        "qemu_json": userspace.json_spec(addr, iqn, me, lun, port),
                        "image_opts": userspace.image_opts(addr, iqn, me, lun, port)}
        else:
            link = iscsiadm.by_path(addr, iqn, lun, port)
            out[iqn] = {"session": iqn in sessions,
                        "device": ex.fs.realpath(link) if ex.fs.exists(link) else None}
    return out


@step("compute.inventory", read_only=True)
def compute_inventory(ex: Executor, *, pool: str, overlay: str, initiator: str,
                      direct: list[dict] | None = None) -> StepResult:
    """Read-only: the datasets under POOL marked ``imgstor:role`` (``temp-write``,
    ``local-copy``), the overlay of every volume that has one of them (the overlay
    driver's ``status``), the iSCSI sessions' target names (none with the userspace
    initiator: a VM's qemu logs in itself), and for each of ``direct`` ({iqn, lun,
    portal}: the direct mappings the NAS says this node has) its device, no login made."""
    from imgstor.remote.steps.compute import INITIATORS
    try:
        rows = _children(ex, pool, ("name", "type", MARK))
    except NotFound:
        rows = None
    sessions = sorted(INITIATORS[initiator].sessions(ex)) if initiator in INITIATORS else []
    dev = _direct(ex, initiator, list(direct or ()), sessions)
    if rows is None:
        return StepResult(False, {"pool_missing": True, "datasets": [], "overlays": {},
                                  "sessions": sessions, "direct": dev}, f"no zpool {pool}")
    datasets = [{"name": str(r["name"]), "type": r["type"], "role": r[MARK]}
                for r in rows if r[MARK]]
    vols = sorted({d["name"].split("/", 1)[1].removesuffix(TEMP_WRITE) for d in datasets})
    ovl: dict[str, dict] = {}
    for vol in vols:
        try:
            ovl[vol] = overlays.get(overlay, ex, pool=pool, vol=vol).status().facts()
        except ImgstorError as e:
            ovl[vol] = {"exists": False, "error": str(e)}
    return StepResult(False, {"pool_missing": False, "datasets": datasets, "overlays": ovl,
                              "sessions": sessions, "direct": dev},
                      f"{len(datasets)} marked datasets, {len(sessions)} sessions")


def _nbd_clients(ex: Executor, sock: str) -> int:
    """Connections accepted on unix socket SOCK: lines of /proc/net/unix (this network
    namespace; read through ``ex.fs``) in state 03 (connected) whose path is SOCK -- the
    server's side of each connection carries the listener's path, the listener itself is
    state 01.  An unreadable /proc/net/unix counts none."""
    try:
        text = ex.fs.read_text("/proc/net/unix")
    except OSError:
        return 0
    n = 0
    for ln in (text or "").splitlines()[1:]:
        parts = ln.split()
        if len(parts) >= 8 and parts[5] == "03" and parts[7] == sock:
            n += 1
    return n


def overlay_users(ex: Executor, driver: str, pool: str, vol: str) -> list[str]:
    """Who uses VOL's overlay device now, in words (the one-writer check before the node's
    copy is discarded); [] = nobody.  dm: holders and openers of /dev/mapper/VOL-snap
    (drivers/blockdev, as the unmap's check); qcow2: NBD clients connected to the
    daemon's export socket."""
    from imgstor.remote.drivers import blockdev, qsd
    if driver == "qcow2":
        sock = qsd.paths(vol).nbd
        n = _nbd_clients(ex, sock)
        return [f"{n} NBD client(s) connected to {sock} (a VM?)"] if n else []
    dev = f"/dev/mapper/{vol}-snap"
    return blockdev.users(ex.fs.realpath(dev)) if ex.fs.exists(dev) else []


@step("node.sync_facts", read_only=True)
def sync_facts(ex: Executor, *, pool: str, vol: str, since: str | None = None,
               overlay: str | None = None) -> StepResult:
    """Read-only: POOL/VOL's snapshots oldest first with their guids (``zfs list -H -o
    name,guid -t snapshot -s createtxg -d 1``), with ``since`` the bytes written after that
    snapshot (``zfs get -Hp written@SINCE``; None where zfs has no such property:
    zfs-fuse), the ``VOL-temp-write`` dataset's ``used`` (writes not merged), and with
    ``overlay`` (a driver) who uses the overlay's device now."""
    name = f"{pool}/{vol}"
    argv = ["zfs", "list", "-H", "-o", "name,guid", "-t", "snapshot", "-s", "createtxg",
            "-d", "1", name]
    facts: dict = {"exists": True, "snapshots": [], "written": None, "temp_write": None,
                   "users": []}
    if zfs.exists(ex, name):
        out = ex.run(argv, read_only=True).stdout
        for ln in out.splitlines():
            snap, _, guid = ln.partition("\t")
            if snap.startswith(name + "@"):
                facts["snapshots"].append({"name": snap.split("@", 1)[1], "guid": guid})
        if since and any(s["name"] == since for s in facts["snapshots"]):
            r = ex.run(["zfs", "get", "-H", "-p", "-o", "value", f"written@{since}", name],
                       read_only=True, check=False)
            facts["written"] = zfs.parse_size(r.stdout.strip()) if r.rc == 0 else None
        ref = zfs.get_props(ex, name, ["referenced"]).get("referenced")
        facts["referenced"] = ref.as_int() if ref is not None else None
    else:
        facts["exists"] = False
    try:
        tw = zfs.get_props(ex, f"{name}{TEMP_WRITE}", ["used", MARK])
        used = tw.get("used")
        facts["temp_write"] = {"used": used.as_int() if used is not None else None,
                               "role": tw[MARK].value if MARK in tw else None}
    except NotFound:
        pass
    if overlay:
        facts["users"] = overlay_users(ex, overlay, pool, vol)
    return StepResult(False, facts, f"{name}: {len(facts['snapshots'])} snapshots")
