"""What the sync gate on this (receiving) host accepts, and the life cycle of the keys that
reach it (issue 18; imgstor/remote/syncgate.py is the gate, imgstor/synctrust.py the
frontend half).

* ``sync.expect``  the frontend announces one copy before it starts it: DATASET (exactly
                   POOL/NAME) from SENDER, KIND (``local-copy`` on a node, ``volume`` on a
                   NAS; ``cancel``: only ``state``/``abort``), TYPE (``volume`` |
                   ``filesystem``), the snapshot's TOGUID and the base: none (a full
                   stream), an explicit FROMGUID, or CANDIDATES (the sender's older
                   snapshots, oldest first: the newest one this host has with the same guid
                   is the base, as the copy job's ``base="auto"`` picks it).  Written as
                   the gate's expectation file, expiring TTL seconds from now on this
                   host's clock.  Facts: ``fromguid``, ``path``, ``expires``.
* ``sync.revoke``  SENDER no longer sends here: its imgstor-tagged authorized_keys line and
                   its expectations go.  On the sender, RECEIVER's pin goes from the key
                   directory's known_hosts, and the key itself once nothing is pinned.
* ``sync.audit``   read-only: the imgstor-tagged authorized_keys lines (sender, options),
                   the installed gate's sha256 and version, the sync key directory's pins.
"""
from __future__ import annotations

import hashlib
import json
import os
import pkgutil
import re
import time

from imgstor.errors import UsageError
from imgstor.remote import locks, syncgate
from imgstor.remote.drivers import zfs
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import step
from imgstor.remote.steps.synckeys import AUTHORIZED_KEYS, GATE_PATH, TAG

__all__ = ["expect", "revoke", "audit", "EXPECT_TTL", "gate_digest"]

EXPECT_TTL = 86400          # seconds; every (re)start of a copy writes it again
_GUID = re.compile(r"^[0-9]{1,20}$", re.ASCII)


def gate_digest(data: bytes | None = None) -> str:
    """sha256 of the gate this code installs (or of DATA)."""
    if data is None:
        data = pkgutil.get_data("imgstor.remote", "syncgate.py") or b""
    return hashlib.sha256(data).hexdigest()


def _guids(ex: Executor, ds: str) -> dict[str, str]:
    """{guid: short name} of DS's snapshots here ({} when DS does not exist)."""
    if not zfs.exists(ex, ds):
        return {}
    snaps = zfs.snapshots_by_age(ex, ds)
    if not snaps:
        return {}
    r = ex.run(["zfs", "get", "-H", "-p", "-o", "name,value", "guid", *snaps],
               read_only=True)
    out = {}
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) == 2:
            out[f[1]] = f[0].split("@", 1)[1]
    return out


@step("sync.expect")
def expect(ex: Executor, *, dataset: str, sender: str, kind: str, type: str = "volume",
           toguid: str = "", fromguid: str | None = None, candidates: list | None = None,
           rollback: bool = False, ttl: int = EXPECT_TTL) -> StepResult:
    """Ensure the gate here accepts SENDER's stream of TOGUID into DATASET (see the module
    docstring).  Runs ``zfs list``/``zfs get guid`` for CANDIDATES; writes one file."""
    if not syncgate.DATASET.fullmatch(str(dataset)) or ".." in dataset:
        raise UsageError(f"bad dataset {dataset!r} (exactly POOL/NAME)")
    if not syncgate.HOST.fullmatch(str(sender)):
        raise UsageError(f"bad sender {sender!r}")
    if kind not in syncgate.KINDS:
        raise UsageError(f"bad kind {kind!r} ({', '.join(syncgate.KINDS)})")
    if not isinstance(ttl, int) or not 0 < ttl <= 7 * 86400:
        raise UsageError(f"bad ttl {ttl!r}")
    exp: dict = {"dataset": dataset, "sender": sender, "kind": kind,
                 "expires": round(time.time() + ttl)}
    if kind != "cancel":
        if type not in syncgate.TYPES:
            raise UsageError(f"bad type {type!r} (volume or filesystem)")
        if not _GUID.fullmatch(str(toguid)):
            raise UsageError(f"bad toguid {toguid!r}")
        if candidates is not None:
            have = _guids(ex, dataset)
            fromguid = "0"
            for c in reversed(candidates):
                if not (isinstance(c, list | tuple) and len(c) == 2
                        and _GUID.fullmatch(str(c[1]))):
                    raise UsageError(f"bad candidate {c!r}")
                if str(c[1]) in have:
                    fromguid = str(c[1])
                    break
        fromguid = fromguid or "0"
        if not _GUID.fullmatch(str(fromguid)):
            raise UsageError(f"bad fromguid {fromguid!r}")
        exp.update(type=type, toguid=str(toguid), fromguid=str(fromguid),
                   rollback=bool(rollback) and fromguid != "0")
    name = syncgate.expect_name(sender, exp.get("fromguid", "-"), exp.get("toguid", "-"))
    path = os.path.join(syncgate.EXPECT_DIR, dataset.replace("/", "%"), name)
    try:
        old = json.loads((ex.fs.read_bytes(path) or b"{}").decode())
    except ValueError:
        old = {}
    if isinstance(old, dict) and {k: v for k, v in old.items() if k != "expires"} == \
            {k: v for k, v in exp.items() if k != "expires"} and \
            float(old.get("expires") or 0) >= time.time() + ttl / 2:
        return StepResult(False, {"path": path, "fromguid": exp.get("fromguid"),
                                  "expires": old["expires"]},
                          f"{dataset}: {kind} from {sender} is expected already")
    for d in (os.path.dirname(syncgate.EXPECT_DIR), syncgate.EXPECT_DIR,
              os.path.dirname(path)):
        if not ex.fs.is_dir(d):
            ex.run(["mkdir", "-m", "0700", "-p", d])
    ex.write_file(path, json.dumps(exp, sort_keys=True).encode(), mode=0o600)
    return StepResult(True, {"path": path, "fromguid": exp.get("fromguid"),
                             "expires": exp["expires"]},
                      f"{dataset}: expecting {kind} from {sender}")


def _without_tag(text: str, sender: str) -> tuple[str, bool]:
    tag = f" {TAG}{sender}"
    lines = text.splitlines()
    keep = [ln for ln in lines if not ln.rstrip().endswith(tag)]
    return ("\n".join(keep) + "\n" if keep else ""), len(keep) != len(lines)


@step("sync.revoke")
def revoke(ex: Executor, *, sender: str | None = None, receiver: str | None = None,
           authorized_keys: str = AUTHORIZED_KEYS,
           key_dir: str = "/root/.ssh/imgstor-sync") -> StepResult:
    """SENDER given (this host receives): its ``imgstor-sync:SENDER`` authorized_keys line
    and its expectations here go.  RECEIVER given (this host sends): the
    ``imgstor-RECEIVER`` pin in KEY_DIR/known_hosts goes, and KEY_DIR's key and
    known_hosts once no pin is left.  Runs ``rm``; writes authorized_keys/known_hosts (under
    the node's sync-keys lock, as install_key and authorize do)."""
    with locks.sync_keys(dry_run=ex.dry_run):
        return _revoke(ex, sender, receiver, authorized_keys, key_dir)


def _revoke(ex: Executor, sender: str | None, receiver: str | None, authorized_keys: str,
            key_dir: str) -> StepResult:
    changed, what = False, []
    if sender is not None:
        if not syncgate.HOST.fullmatch(str(sender)):
            raise UsageError(f"bad sender {sender!r}")
        have = (ex.fs.read_bytes(authorized_keys) or b"").decode(errors="replace")
        text, dropped = _without_tag(have, sender)
        if dropped:
            ex.write_file(authorized_keys, text.encode(),
                          mode=(ex.fs.mode(authorized_keys) or 0o600) & ~0o022)
            changed = True
            what.append(f"{sender}'s authorization")
        for ds in (ex.fs.listdir(syncgate.EXPECT_DIR) if ex.fs.is_dir(syncgate.EXPECT_DIR)
                   else []):
            d = os.path.join(syncgate.EXPECT_DIR, ds)
            for n in (ex.fs.listdir(d) if ex.fs.is_dir(d) else []):
                if n.split("@", 1)[0] == sender:
                    ex.run(["rm", "-f", "--", os.path.join(d, n)])
                    changed = True
    if receiver is not None:
        if not syncgate.HOST.fullmatch(str(receiver)):
            raise UsageError(f"bad receiver {receiver!r}")
        kh = os.path.join(key_dir, "known_hosts")
        pins = (ex.fs.read_bytes(kh) or b"").decode(errors="replace").splitlines()
        keep = [ln for ln in pins if ln.strip()
                and ln.split(" ", 1)[0] != f"imgstor-{receiver}"]
        if len(keep) != len([ln for ln in pins if ln.strip()]):
            changed = True
            what.append(f"the pin of {receiver}")
            if keep:
                ex.write_file(kh, ("\n".join(keep) + "\n").encode(), mode=0o600)
        if not keep and (ex.fs.exists(kh) or ex.fs.exists(os.path.join(key_dir, "id_ed25519"))):
            ex.run(["rm", "-f", "--", kh, os.path.join(key_dir, "id_ed25519")])
            changed = True
            what.append("the sync key")
    return StepResult(changed, {"revoked": what},
                      ("revoked " + ", ".join(what)) if what else "nothing to revoke")


_OPTS = re.compile(r'^restrict,from="([^"]*)",command="([^"]*)" ')


@step("sync.audit", read_only=True)
def audit(ex: Executor, *, authorized_keys: str = AUTHORIZED_KEYS,
          gate_path: str = GATE_PATH, key_dir: str = "/root/.ssh/imgstor-sync") -> StepResult:
    """Read-only: imgstor's authorized_keys lines here (``imgstor-sync:`` tag), the
    installed gate (sha256, whether it is this code's) and KEY_DIR's pins."""
    lines = []
    ak = (ex.fs.read_bytes(authorized_keys) or b"").decode(errors="replace")
    for n, ln in enumerate(ak.splitlines(), 1):
        m = re.search(r" " + re.escape(TAG) + r"(\S+)\s*$", ln)
        if not m:
            continue
        o = _OPTS.match(ln)
        cmd: list[str] = o.group(2).split() if o else []
        lines.append({"line": n, "sender": m.group(1), "restricted": o is not None,
                      "from": o.group(1).split(",") if o else None,
                      "gate": cmd[2] if len(cmd) > 2 else None,
                      "names_sender": "--sender" in cmd})
    gate = ex.fs.read_bytes(gate_path)
    pins = sorted({ln.split(" ", 1)[0][len("imgstor-"):]
                   for ln in (ex.fs.read_bytes(os.path.join(key_dir, "known_hosts"))
                              or b"").decode(errors="replace").splitlines()
                   if ln.startswith("imgstor-")})
    facts = {"lines": lines, "gate": gate_path if gate is not None else None,
             "gate_current": gate is not None and gate_digest(gate) == gate_digest(),
             "pins": pins}
    return StepResult(False, facts, f"{len(lines)} imgstor sync key line(s)")
