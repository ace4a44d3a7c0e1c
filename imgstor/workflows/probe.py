"""Reachability of every configured host: what ``imgstor refresh`` learns first.

``start(ctx)`` probes every host of the config at once, in the background, over the
command's one connection pool (``ctx.cluster``: at most ``[ssh] max_connections`` open at
a time): one cheap command per host, ``cat /proc/sys/kernel/random/boot_id``, whose
answer also tells a reboot apart from a host that was merely unreachable.  The
connection stays in the pool, so any later step of the same run on that host reuses it.
A host that cannot be reached costs at most its connect timeout (``[ssh]
connect_timeout``, for the TCP connect, the banner and the authentication) plus the same
for the command: the probe never waits on anything longer.

``Probing.wait()`` gives one ``HostProbe`` per host; ``record()`` keeps the last run's
answer per host in ``<state file>.hosts.json`` (0600, replaced atomically; only refresh,
under its flock, writes it): up or down, since when, the last time it answered, its boot
id and the error; ``rows()`` says per host what changed since the last run.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from imgstor.errors import ImgstorError
from imgstor.output import When

__all__ = ["BOOT_ID", "HostProbe", "Probing", "start", "probe_one", "record", "rows",
           "record_path"]

BOOT_ID = "/proc/sys/kernel/random/boot_id"   # a new random UUID at every boot (Linux)


@dataclass
class HostProbe:
    host: str
    role: str
    up: bool
    seconds: float                 # to the answer, or to the failure
    boot_id: str | None = None
    error: str | None = None
    since: float | None = None     # when the host went up / down (record())
    last_up: float | None = None   # the last time it answered (record())
    rebooted: bool = False         # its boot id differs from the recorded one (record())
    changed: bool = False          # up/down differs from the recorded state (record())
    went_down: bool = False        # down now, and up or unknown before (record())


def probe_one(cluster: Any, host: str, role: str, timeout: float) -> HostProbe:
    """Reach ``host`` through the pool and read its boot id; never raises ImgstorError."""
    t = time.monotonic()
    try:
        r = cluster.exec(host, ["cat", BOOT_ID], timeout=timeout)
    except ImgstorError as e:
        return HostProbe(host, role, False, time.monotonic() - t, error=str(e))
    # It answered over SSH: up, even if it has no boot id to show (not Linux).
    boot = r.stdout.strip() if r.rc == 0 else ""
    return HostProbe(host, role, True, time.monotonic() - t, boot_id=boot or None)


class Probing:
    """Probes running in a background thread; ``wait()`` returns them in config order."""

    def __init__(self, cluster: Any, hosts: list[tuple[str, str]], timeout: float) -> None:
        self._out: list[HostProbe] = []
        self._error: BaseException | None = None
        self._hosts = hosts
        self._thread = threading.Thread(target=self._run, args=(cluster, timeout),
                                        daemon=True)
        self._thread.start()

    def _run(self, cluster: Any, timeout: float) -> None:
        try:
            if not self._hosts:
                return
            roles = dict(self._hosts)
            got = cluster.parallel(roles, lambda h: probe_one(cluster, h, roles[h], timeout))
            self._out = [got[h] for h, _ in self._hosts]
        except BaseException as e:  # a bug: raised again by wait() in the caller's thread
            self._error = e

    def wait(self) -> list[HostProbe]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


def start(ctx: Any) -> Probing:
    """Start probing every configured host (NAS first, then compute nodes, by name)."""
    from imgstor.state.model import natural_key
    hosts = sorted(ctx.config.hosts.values(), key=lambda h: (h.role != "nas",
                                                              natural_key(h.name)))
    # ctx's lazy parts are built here, in the caller's thread
    return Probing(ctx.cluster, [(h.name, h.role) for h in hosts],
                   ctx.config.ssh.connect_timeout)


def record_path(ctx: Any) -> str:
    return ctx.store.path + ".hosts.json"


def _load(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return {}        # none yet, or unreadable: this run starts the record again
    return d if isinstance(d, dict) else {}


def record(ctx: Any, probes: list[HostProbe], *, now: float | None = None) -> None:
    """Fill ``since``, ``last_up``, ``rebooted``, ``changed`` and ``went_down`` from the
    last run's record, then (not in a dry run) replace the record with this run's answers.
    Hosts no longer in the config drop out of it."""
    from imgstor import atomicfile
    now = time.time() if now is None else now
    path = record_path(ctx)
    old = _load(path)
    new: dict[str, dict] = {}
    for p in probes:
        prev = old.get(p.host)
        o: dict = prev if isinstance(prev, dict) else {}
        known = "up" in o
        p.changed = known and bool(o["up"]) != p.up
        p.went_down = not p.up and (p.changed or not known)
        p.since = o.get("since") if known and not p.changed else now
        p.last_up = now if p.up else o.get("last_up")
        p.rebooted = bool(p.up and p.boot_id and o.get("boot_id")
                          and o["boot_id"] != p.boot_id)
        new[p.host] = {"up": p.up, "since": p.since, "checked": now, "last_up": p.last_up,
                       "boot_id": p.boot_id or o.get("boot_id"), "error": p.error,
                       "seconds": round(p.seconds, 3)}
    if ctx.dry_run:
        return
    try:
        atomicfile.replace(path, (json.dumps(new, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass             # the record is a convenience: the run's rows still say it all


def _when(t: float | None) -> str:
    return time.strftime("%a %H:%M:%S", time.localtime(t)) if t else "?"


def rows(probes: list[HostProbe]) -> list[dict]:
    """One refresh row per host (``what`` = host); ``--json`` adds role, up, seconds,
    boot_id, since, rebooted and error."""
    out = []
    for p in probes:
        if p.up:
            action = f"up ({p.seconds * 1000:.0f} ms)"
            if p.rebooted:
                action += ", rebooted since the last refresh"
            elif p.changed:
                action += ", reachable again"
        else:
            action = f"DOWN since {_when(p.since)}: {p.error}"
        d = asdict(p)
        d.pop("host")
        d.pop("changed")
        d.pop("went_down")
        d["seconds"] = round(p.seconds, 3)
        for k in ("since", "last_up"):         # --json: ISO 8601
            d[k] = When(d[k]) if d[k] else None
        out.append({"what": "host", "host": p.host, "volume": None, "job": None,
                    "action": action, **d})
    return out
