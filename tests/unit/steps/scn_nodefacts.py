"""Scenarios for host.facts and host.destroy_marked (imgstor/remote/steps/nodefacts.py):
what check/repair and refresh read of a host, and the destroy of an orphan dataset."""
from __future__ import annotations

from scn_common import IQN1, ISCSIADM_SESSIONS, cmd, ia_session_line

DM_TABLE = ["dmsetup", "table"]
ZTREE = ["zfs", "get", "-H", "-p", "-o", "name,property,value,source", "-r",
         "type,imgstor:role", "tank"]


def tree(*rows: tuple[str, str, str | None, str]) -> str:
    """``zfs get -r`` lines for (name, type, role, role source)."""
    out = ""
    for name, kind, role, source in rows:
        out += f"{name}\ttype\t{kind}\t-\n"
        out += (f"{name}\timgstor:role\t{role}\t{source}\n" if role
                else f"{name}\timgstor:role\t-\t-\n")
    return out


ZTREE_OUT = tree(("tank", "filesystem", None, "-"),
                 ("tank/vm1-vol", "volume", "local-copy", "local"),
                 ("tank/vm1-vol@imgstor-in-1", "snapshot", "snapshot", "local"),
                 ("tank/vm1-vol@auto-1", "snapshot", None, "-"),
                 ("tank/vm1-vol-temp-write", "volume", "temp-write", "local"),
                 ("tank/other", "volume", None, "-"),
                 ("tank/planted-temp-write", "volume", "temp-write", "received"),
                 ("tank/child", "volume", "local-copy", "inherited from tank/x"))
TW = "tank/old-temp-write"
LC = "tank/old"
ZGET = ["zfs", "get", "-H", "-p", "-o", "name,property,value,source", "imgstor:role,type"]


def zget(name: str, role: str | None, kind: str, source: str = "local") -> dict:
    lines = f"{name}\ttype\t{kind}\t-\n"
    lines += (f"{name}\timgstor:role\t{role}\t{source}\n" if role
              else f"{name}\timgstor:role\t-\t-\n")
    return cmd(ZGET + [name], stdout=lines)


SCENARIOS = [
    # ------------------------------------------------------------------ host.facts
    dict(id="facts-dm-node", step="host.facts", tags=["read"],
         args={"pools": ["tank"], "initiator": "iscsiadm", "overlay": "dm"},
         script=[cmd(ISCSIADM_SESSIONS, stdout=ia_session_line(1, IQN1)),
                 cmd(DM_TABLE, stdout="vm1-vol-snap: 0 131072 snapshot 254:1 254:2 P 8\n"
                                          "other: 0 2048 linear 8:16 0\n"),
                 cmd(ZTREE, stdout=ZTREE_OUT)],
         facts={"sessions": [{"iqn": IQN1, "address": "127.0.0.1", "port": 3261}],
                "overlays": [{"vol": "vm1-vol", "driver": "dm"}],
                "datasets": [{"name": "tank/vm1-vol", "pool": "tank", "role": "local-copy",
                              "type": "volume", "writes": None, "snapshots": 1},
                             {"name": "tank/vm1-vol-temp-write", "pool": "tank",
                              "role": "temp-write", "type": "volume", "writes": None}]},
         message="1 sessions, 1 overlays, 2 marked datasets",
         note="marks count only when set here (received, inherited: not imgstor's); a "
              "local copy's imgstor snapshots are counted"),
    dict(id="facts-nas-dry-run", step="host.facts", tags=["dry-run"], dry_run=True,
         note="read-only: a dry run reads the same",
         args={"pools": ["tank", "gone"]},
         script=[cmd(ZTREE, stdout=tree(("tank", "filesystem", None, "-"),
                                        ("tank/v", "filesystem", "volume", "local"))),
                 cmd(ZTREE[:-1] + ["gone"], rc=1,
                     stderr="cannot open 'gone': dataset does not exist\n")],
         skipped=[], facts_include={"datasets": [{"name": "tank/v", "pool": "tank",
                                                   "role": "volume", "type": "filesystem",
                                                   "writes": None}]}),
    # ------------------------------------------------------------------ host.destroy_marked
    dict(id="destroy-local-copy-forced", step="host.destroy_marked", tags=["changes"],
         args={"name": LC, "role": "local-copy", "force": True},
         script=[zget(LC, "local-copy", "volume"), cmd(["zfs", "destroy", LC])],
         changed=True, mutating=[["zfs", "destroy", LC]], message=f"destroyed {LC}"),
    dict(id="destroy-gone-already", step="host.destroy_marked", tags=["done"],
         args={"name": LC, "role": "local-copy", "force": True},
         script=[cmd(ZGET + [LC], rc=1, stderr=f"cannot open '{LC}': dataset does not "
                                               "exist\n")],
         changed=False, mutating=[], message=f"{LC} is gone already"),
    dict(id="destroy-dry-run", step="host.destroy_marked", tags=["dry-run"], dry_run=True,
         args={"name": LC, "role": "local-copy", "force": True},
         script=[zget(LC, "local-copy", "volume")], skipped=[["zfs", "destroy", LC]],
         changed=True),
    dict(id="destroy-unmarked-refused", step="host.destroy_marked", tags=["error"],
         note="never anything without imgstor's mark set on it (inherited is not set)",
         args={"name": LC, "role": "local-copy", "force": True},
         script=[zget(LC, "local-copy", "volume", source="inherited from tank")],
         raises=("Conflict", "does not carry imgstor:role=local-copy")),
    dict(id="destroy-local-copy-unforced-refused", step="host.destroy_marked",
         tags=["error"], args={"name": LC, "role": "local-copy"},
         script=[zget(LC, "local-copy", "volume")],
         raises=("Conflict", "may be newer than the NAS")),
    dict(id="destroy-dm-temp-write-unforced-refused", step="host.destroy_marked",
         tags=["error"], note="a dm COW zvol's writes cannot be told: only when forced",
         args={"name": TW, "role": "temp-write"}, script=[zget(TW, "temp-write", "volume")],
         raises=("Conflict", "may hold writes")),
    dict(id="destroy-nas-volume-refused", step="host.destroy_marked", tags=["error"],
         args={"name": "tank/v", "role": "volume", "force": True}, script=[],
         raises=("UsageError", "not 'volume'")),
]
