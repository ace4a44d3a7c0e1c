"""``imgstor rebuild [--force]``: make the state file again from the hosts when it is lost.

Every NAS and compute node of the config is asked once, all in parallel
(``nas.inventory``: imgstor's volumes with the ``imgstor:`` properties the map wrote and
the live targets; ``compute.inventory``: the node's temp-write and local-copy datasets,
their overlays, the initiator's sessions).  ``records_from_facts`` (pure, unit-tested)
turns those facts into the state; what it could not restore is said, row by row.

Rules (docs/DESIGN.md "rebuild"):

- a NAS volume marked ``imgstor:role=volume`` without ``imgstor:host``: ``unmapped``;
- direct, ``imgstor:host`` set: ``mapped`` (a missing live target is noted: ``imgstor
  repair`` puts it back from the record);
- sync, no target (pivoted) and the node holds the local copy: ``mapped`` on it (also a
  sync back that was under way: the unmap does it again from the start);
- sync with a target: the overlay merging or merged -> ``merging`` with a ``sync-in`` job
  at phase ``merged`` (owner none: ``imgstor refresh`` starts its monitor); otherwise
  ``NAS->VM`` without a job (the copy's job is not on any host: ``remove host storagemap``
  cancels it, the VM's writes merging into the NAS volume);
- anything the facts contradict (sync mapped, no local copy on the node; an unknown
  mode): ``error`` with the reason; a node that cannot be reached: its volumes from the
  NAS's facts alone, said; a NAS that cannot be reached: its volumes are missing, said.

Not restored (not on any host): jobs other than the one above, busy markers, the
attributes ``set host attr`` kept, VMs whose disk is unmapped, TIME (since = now).
The CHAP credentials are files beside the state (``chap/NAS/VOL.json``): rebuild reads
only their user name, and never writes them.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from imgstor.errors import Conflict, ImgstorError
from imgstor.output import Output
from imgstor.state.model import Job, State, Vm, Volume, volume_key
from imgstor.workflows.context import Ctx

__all__ = ["rebuild", "records_from_facts", "Rebuilt", "EXIT_PARTIAL"]

EXIT_PARTIAL = 9          # written, but something could not be restored (as check's exit)
MERGING = ("merging", "merged", "pivoted")


@dataclass
class Rebuilt:
    state: State
    notes: list[tuple[str, str]] = field(default_factory=list)    # (subject, what)
    partial: bool = False            # something could not be restored

    def note(self, subject: str, what: str, *, partial: bool = False) -> None:
        self.notes.append((subject, what))
        self.partial |= partial


def _int(v: Any) -> int | None:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return None


def records_from_facts(nas_facts: dict[str, dict | None], node_facts: dict[str, dict | None],
                       *, nas_info: dict[str, dict], node_info: dict[str, dict],
                       chap_users: dict[str, str] | None = None,
                       now: float = 0.0) -> Rebuilt:
    """The state the facts prove (pure).  ``nas_facts[nas]`` / ``node_facts[host]``: the
    inventory step's facts, None when the host could not be reached.  ``nas_info[nas]``:
    ``{"driver", "portal"}`` (its target driver and default portal); ``node_info[host]``:
    ``{"pool", "overlay"}`` (its vm_container_zpool and overlay driver).
    ``chap_users[key]``: the CHAP user of a volume whose credentials file exists."""
    out = Rebuilt(State())
    chap_users = chap_users or {}
    used: set[tuple[str, str]] = set()                  # (host, node dataset) accounted for
    for nas in sorted(nas_facts):
        facts = nas_facts[nas]
        if facts is None:
            out.note(nas, "NAS unreachable: its volumes are not in the rebuilt state",
                     partial=True)
            continue
        for pool in facts.get("missing_pools", ()):
            out.note(f"{nas}:{pool}", "zpool not found on the NAS")
        info = nas_info.get(nas, {})
        live = {str(t["iqn"]).lower(): t for t in facts.get("targets", ())}
        for row in facts.get("volumes", ()):
            if row.get("role") != "volume":
                continue                 # not imgstor's: never recorded, never touched
            v = _volume(out, nas, row, info, live, node_facts, node_info, chap_users, used,
                        now)
            out.state.volumes[v.key] = v
            _vm(out.state, v, row["props"])
        prefix = f"iqn.2001-04.com.{nas}-".lower()
        wanted = {str(v.target).lower() for v in out.state.volumes.values()
                  if v.nas == nas and v.target}
        for iqn in sorted(live):
            if iqn.startswith(prefix) and iqn not in wanted:
                out.note(f"{nas}:{iqn}", "target of no imgstor volume mapped (orphan): "
                         "`imgstor repair` removes it")
    for host in sorted(node_facts):
        facts = node_facts[host]
        if facts is None:
            out.note(host, "compute node unreachable: its sync volumes are recorded from "
                     "the NAS's facts alone", partial=True)
            continue
        for d in facts.get("datasets", ()):
            if (host, d["name"]) not in used:
                out.note(f"{host}:{d['name']}", f"imgstor:role={d['role']} of no volume "
                         "mapped to this node: not recorded, left as it is", partial=True)
    return out


def _volume(out: Rebuilt, nas: str, row: dict, info: dict, live: dict,
            node_facts: dict, node_info: dict, chap_users: dict, used: set,
            now: float) -> Volume:
    p = row["props"]
    vol = row["vol"]
    key = volume_key(nas, vol)
    v = Volume(nas=nas, zpool=row["pool"], vol=vol, size=_int(p.get("size")), since=now,
               extra={"marked": True})
    host = p.get("host")
    if not host:
        return v
    iqn = p.get("target")
    target = live.get(str(iqn).lower()) if iqn else None
    initiator = p.get("initiator") or (target["acls"][0] if target and target.get("acls")
                                       else None)
    v.host, v.target, v.mode = host, iqn, p.get("mode")
    v.extra.update({"initiator": initiator, "portal": p.get("portal") or info.get("portal"),
                    "lun": 0 if info.get("driver") == "lio" else 1})
    if chap_users.get(key):
        v.extra["chap_user"] = chap_users[key]
    v.extra = {k: val for k, val in v.extra.items() if val is not None}
    if v.mode == "direct":
        v.state = "mapped"
        if target is None:
            out.note(key, f"mapped to {host} but the NAS has no target {iqn}: recorded "
                     "mapped; `imgstor repair` puts the target back", partial=True)
        nf = node_facts.get(host)
        d = (nf or {}).get("direct", {}).get(str(iqn)) or {}
        v.device = d.get("device")
        for k in ("qemu_json",):
            if d.get(k):
                v.extra[k] = d[k]
        if d.get("session") is False:
            out.note(key, f"{host} has no iSCSI session to {iqn}: map it again to the same "
                     "host to log in")
        return v
    if v.mode != "sync":
        v.state, v.error = "error", f"rebuilt: unknown imgstor:mode {v.mode!r}"
        out.note(key, v.error, partial=True)
        return v
    ni = node_info.get(host)
    pool = ni["pool"] if ni else None
    v.extra.update({"local_pool": pool, "overlay": ni["overlay"]} if ni else {})
    nf = node_facts.get(host) if ni else None
    if nf is None:
        v.state = "NAS->VM" if target else "mapped"
        out.note(key, f"{host} not reached (or not a compute node of the config): "
                 f"recorded {v.state} from the NAS alone", partial=True)
        return v
    roles = {d["name"]: d["role"] for d in nf.get("datasets", ())}
    local, tw = f"{pool}/{vol}", f"{pool}/{vol}-temp-write"
    for name in (local, tw):
        if name in roles:
            used.add((host, name))
    ovl = nf.get("overlays", {}).get(vol) or {}
    if ovl.get("exists") and ovl.get("device"):
        v.device = ovl["device"]
        if ovl.get("origin"):
            v.extra["origin"] = ovl["origin"]
    has_local = roles.get(local) == "local-copy"
    if target is None and not iqn:
        if has_local:
            v.state = "mapped"
            if not ovl.get("exists"):
                out.note(key, f"mapped on {host}'s local copy, no overlay running there "
                         "(a reboot?): unmap brings its data back to the NAS")
        else:
            v.state = "error"
            v.error = (f"rebuilt: the NAS says sync-mapped to {host}, which has no local "
                       f"copy {local}: see `imgstor check`")
            out.note(key, v.error, partial=True)
        return v
    if target is None:
        out.note(key, f"the NAS has no target {iqn}: `imgstor repair` puts it back",
                 partial=True)
    if ovl.get("phase") in MERGING and ovl.get("into", "local") == "local" and has_local:
        v.state = "merging"
        job = Job(id=f"sync-in-{uuid.uuid4().hex[:12]}", kind="sync-in", volume=key,
                  phase="merged", created=now, updated=now)
        out.state.jobs[job.id] = job
        out.note(key, f"merging on {host}: its sync-in job made again at phase merged "
                 "(`imgstor refresh` starts its monitor)")
    else:
        v.state = "NAS->VM"
        out.note(key, f"copy to {host} was under way; its job is on no host and is not "
                 "restored: `remove host storagemap` cancels it (the VM's writes merge "
                 "into the NAS volume), then map again", partial=True)
    return v


def _vm(st: State, v: Volume, props: dict) -> None:
    name, container = props.get("vm"), props.get("vm_container")
    if v.host and name and container and name not in st.vms:
        st.vms[name] = Vm(name=name, container=container, nas=v.nas, zpool=v.zpool)


# ---------------------------------------------------------------------- the command
_COLUMNS = [("what", "WHAT"), ("subject", "SUBJECT"), ("host", "HOST"), ("state", "STATE"),
            ("found", "FOUND")]


def _rows(out: Rebuilt) -> list[dict[str, Any]]:
    """One row per rebuilt volume (with what was noted about it), then the other notes."""
    by_key: dict[str, list[str]] = {}
    for s, w in out.notes:
        by_key.setdefault(s, []).append(w)
    rows = [{"what": "volume", "subject": k, "host": v.host, "state": v.state,
             "mode": v.mode, "zpool": v.zpool, "target": v.target,
             "found": "; ".join(by_key.pop(k, ())) or None}
            for k, v in out.state.volumes.items()]
    rows.sort(key=lambda r: r["subject"] or "")
    rows += [{"what": "vm", "subject": n, "host": vm.container, "state": None, "mode": None,
              "zpool": vm.zpool, "target": None, "found": f"disk on {vm.nas}"}
             for n, vm in sorted(out.state.vms.items())]
    rows += [{"what": "note", "subject": s, "host": None, "state": None, "mode": None,
              "zpool": None, "target": None, "found": w}
             for s, ws in by_key.items() for w in ws]
    return rows


def _gather(ctx: Ctx) -> tuple[dict, dict, dict, dict, dict]:
    cfg = ctx.config
    nases = sorted(n for n, h in cfg.hosts.items() if h.role == "nas")
    nodes = sorted(n for n, h in cfg.hosts.items() if h.role == "compute")
    from imgstor.workflows.storagemap.common import portal_of
    nas_info = {n: {"driver": cfg.host(n).target_driver, "portal": portal_of(cfg.host(n))}
                for n in nases}
    node_info = {n: {"pool": cfg.host(n).vm_container_zpool, "overlay": cfg.host(n).overlay,
                     "initiator": cfg.host(n).initiator} for n in nodes}
    cl = ctx.cluster

    def one(h: str, direct: list[dict] | None = None):
        if h in nas_info:
            c = cfg.host(h)
            return cl.step(h, "nas.inventory", pools=list(c.img_zpools),
                           driver=c.target_driver).facts
        i = node_info[h]
        return cl.step(h, "compute.inventory", pool=i["pool"], overlay=i["overlay"],
                       initiator=i["initiator"], direct=direct or []).facts

    # Two rounds, each host of a round at once: the NASes, then the nodes (each is told
    # the direct mappings the NASes say it has, to describe their devices).
    got = cl.parallel(nases, one) if nases else {}
    direct: dict[str, list[dict]] = {}
    for n in nases:
        for row in (got[n] if not isinstance(got[n], ImgstorError) else {}).get("volumes", ()):
            p = row["props"]
            if p.get("host") in node_info and p.get("mode") == "direct" and p.get("target"):
                direct.setdefault(p["host"], []).append(
                    {"iqn": p["target"], "lun": 0 if nas_info[n]["driver"] == "lio" else 1,
                     "portal": p.get("portal") or nas_info[n]["portal"]})
    got.update(cl.parallel(nodes, lambda h: one(h, direct.get(h, []))) if nodes else {})
    errors = {h: r for h, r in got.items() if isinstance(r, ImgstorError)}
    nas_facts = {n: None if n in errors else got[n] for n in nases}
    node_facts = {n: None if n in errors else got[n] for n in nodes}
    return nas_facts, node_facts, nas_info, node_info, errors


def _chap_users(ctx: Ctx, nas_facts: dict) -> dict[str, str]:
    from imgstor import chap as chapstore
    from imgstor.workflows.storagemap.common import state_path
    users = {}
    for nas, f in nas_facts.items():
        for row in (f or {}).get("volumes", ()):
            try:
                creds = chapstore.load(state_path(ctx), nas, row["vol"])
            except ImgstorError:
                creds = None
            if creds:
                users[volume_key(nas, row["vol"])] = creds.user
    return users


def rebuild(ctx: Ctx, force: bool = False) -> Output:
    """Rebuild the state file from the hosts; refused (Conflict, exit 8) when one exists,
    unless ``force`` (the old file is kept beside it as ``…before-rebuild-<time>``)."""
    path = ctx.store.path
    if os.path.exists(path) and not force:
        raise Conflict(f"state file {path} exists: imgstor rebuild replaces it only with "
                       "--force (the old one is kept beside it)", path=path)
    nas_facts, node_facts, nas_info, node_info, errors = _gather(ctx)
    out = records_from_facts(nas_facts, node_facts, nas_info=nas_info, node_info=node_info,
                             chap_users=_chap_users(ctx, nas_facts), now=time.time())
    for h, e in sorted(errors.items()):
        out.notes.insert(0, (h, f"unreachable: {e}"))
    st = out.state
    rows = _rows(out)
    summary = (f"{len(st.volumes)} volumes ({sum(1 for v in st.volumes.values() if v.host)} "
               f"mapped), {len(st.vms)} VMs, {len(st.jobs)} jobs")
    if ctx.dry_run:
        import json
        footer = [f"dry run: would write {path}: {summary}",
                  json.dumps(st.to_dict(), indent=1)]
        return Output(rows, _COLUMNS, footer=footer, json_extra=["mode", "zpool", "target"],
                      exit_code=EXIT_PARTIAL if out.partial else 0)
    kept = ctx.store.replace_all(st, force=force)     # checks again under the lock
    footer = [f"wrote {path}: {summary}"] + ([f"the old file is kept as {kept}"] if kept
                                              else [])
    return Output(rows, _COLUMNS, footer=footer, json_extra=["mode", "zpool", "target"],
                  exit_code=EXIT_PARTIAL if out.partial else 0)
