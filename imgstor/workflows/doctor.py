"""``imgstor doctor [HOST...] [--local]``: is this frontend ready, and is every host?

zrepl's ``configcheck`` for imgstor: one line per check, exit 0 only if every check
passes (else 9, as ``check``).  On this frontend:

- ``config``: the file loads; it is owned by root (or this user) and nobody else may write
  it (it names the hosts imgstor runs commands on as root);
- ``identity``: ``[ssh] identity`` is set, exists and only its owner may read it;
- ``known_hosts``: readable, nobody else may write it, every line is one this client reads,
  and every host of the config has a key in it (unless ``accept_unknown_host_keys``);
- ``state``: the state file reads (else: restore it, or ``imgstor rebuild``), and its
  directory is one imgstor will write to (owned by this user, not writable by others);
- ``audit log``: ``[log] syslog`` is there to send to (a Unix socket that accepts);
- ``schedule``: a cron line or the systemd timer runs ``imgstor refresh``, and the program it
  names exists;
- ``last refresh``: refresh ran in the last ``REFRESH_MAX_AGE`` seconds (its record of the
  hosts, ``<state>.hosts.json``, is that fresh);
- ``metrics``: ``[state] metrics_path``'s directory is there and writable (the config
  itself refuses a name not ending in ``.prom``);

then, unless ``--local``, on every host (or those named) at once: ``reachable`` (SSH, its
host key, imgstor's node app), ``tools`` (those its role and drivers need, with their
versions), ``pools`` (a NAS's img_zpools, a sync node's vm_container_zpool: present and
ONLINE), ``clock`` (skew against this frontend within ``SKEW_LIMIT`` seconds, allowing for
the round trip).  The columns are STATUS CHECK SUBJECT DETAIL; ``--json`` rows add ``ok``
and ``fix``.
"""
from __future__ import annotations

import os
import socket
import stat
import time
from typing import Any

from imgstor.errors import ImgstorError
from imgstor.exitcodes import DIFFERS
from imgstor.output import Output
from imgstor.workflows.context import Ctx

__all__ = ["doctor", "CRON_PLACES", "TIMER_PLACES", "REFRESH_MAX_AGE", "SKEW_LIMIT",
           "needed_tools"]

# Where a cron line or an enabled systemd timer for `imgstor refresh` may be (tests point
# these at their own files).
CRON_PLACES = ["/etc/cron.d", "/etc/crontab", "/var/spool/cron/crontabs/root"]
TIMER_PLACES = ["/etc/systemd/system/timers.target.wants/imgstor-refresh.timer",
                "/lib/systemd/system/timers.target.wants/imgstor-refresh.timer"]
REFRESH_MAX_AGE = 300          # seconds: refresh runs every minute
SKEW_LIMIT = 5.0               # seconds between a host's clock and this frontend's

_COLUMNS: list = [("status", "STATUS"), ("check", "CHECK"), ("subject", "SUBJECT"),
                  ("detail", "DETAIL", lambda r: r["detail"] + (f"; fix: {r['fix']}"
                                                                if r["fix"] else ""))]


def _row(check: str, subject: str, ok: bool, detail: str, fix: str | None = None) -> dict:
    return {"status": "ok" if ok else "FAIL", "check": check, "subject": subject, "ok": ok,
            "detail": detail, "fix": None if ok else fix}


def doctor(ctx: Ctx, hosts: list[str] | None = None, local: bool = False) -> Output:
    from imgstor import validate
    rows = [_config(ctx)]
    if rows[0]["ok"]:
        cfg = ctx.file_config
        names = [validate.host(h) for h in hosts] if hosts else list(cfg.hosts)
        for n in names:
            cfg.host(n)                  # unknown host: NotFound before anything runs
        rows += [_identity(cfg), _known_hosts(cfg, names), _state(ctx), _audit(cfg),
                 _schedule(), _last_refresh(ctx), _metrics(cfg)]
        if not local:
            rows += _hosts(ctx, names)
    bad = [r for r in rows if not r["ok"]]
    footer = [f"{len(rows)} checks: {len(rows) - len(bad)} ok, {len(bad)} failed"]
    return Output(rows, _COLUMNS, footer=footer, exit_code=DIFFERS if bad else 0)


# ------------------------------------------------------------------ this frontend
def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _owner(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _not_others(path: str, what: str, check: str, *, mask: int = 0o022) -> dict | None:
    """A row if ``path`` belongs to someone else or others may write (``mask``) it."""
    st = os.stat(path)
    if st.st_uid not in (0, os.geteuid()):
        return _row(check, path, False, f"{what} is owned by {_owner(st.st_uid)}",
                    f"chown root {path}")
    if st.st_mode & mask:
        return _row(check, path, False, f"{what} has mode {_mode(st)}: others may "
                    f"{'write' if mask == 0o022 else 'read'} it",
                    f"chmod go-{'w' if mask == 0o022 else 'rwx'} {path}")
    return None


def _config(ctx: Ctx) -> dict:
    from imgstor.config import config_path
    path = config_path(ctx.config_path)
    try:
        cfg = ctx.file_config
    except ImgstorError as e:
        return _row("config", path, False, e.message, "fix the file (imgstor.toml, "
                    "`man 8 imgstor`)")
    bad = _not_others(cfg.path, "the config", "config")
    if bad:
        return bad
    st = os.stat(cfg.path)
    return _row("config", cfg.path, True, f"{len(cfg.hosts)} hosts; owner "
                f"{_owner(st.st_uid)}, mode {_mode(st)}")


def _identity(cfg) -> dict:
    path = cfg.ssh.identity
    if not path:
        return _row("identity", "[ssh] identity", False, "not set: imgstor offers no key",
                    "set [ssh] identity to root's private key (e.g. /root/.ssh/id_ed25519)")
    try:
        bad = _not_others(path, "the SSH key", "identity", mask=0o077)
    except OSError as e:
        return _row("identity", path, False, f"cannot read it: {e.strerror}",
                    "ssh-keygen -t ed25519 -f PATH, and put PATH.pub in each host's "
                    "/root/.ssh/authorized_keys")
    if bad:
        return bad
    if not os.access(path, os.R_OK):
        return _row("identity", path, False, "not readable by this user", "run as root")
    return _row("identity", path, True, f"mode {_mode(os.stat(path))}")


def _known_hosts(cfg, names: list[str]) -> dict:
    from imgstor import hostkeys
    path, pin = cfg.ssh.known_hosts, cfg.ssh.accept_unknown_host_keys
    if pin and path and not os.path.exists(path):
        return _row("known_hosts", path, True, "absent: made on first use "
                    "(accept_unknown_host_keys)")
    try:
        kh = hostkeys.load_known_hosts(path, missing_ok=False)
        bad = _not_others(path, "known_hosts", "known_hosts")
    except (ImgstorError, OSError) as e:
        return _row("known_hosts", path or "[ssh] known_hosts", False,
                    getattr(e, "message", None) or str(e),
                    "ssh-keyscan each host, verify each fingerprint, add the lines")
    if bad:
        return bad
    missing = []
    for n in names:
        hc = cfg.host(n)
        name = hc.address if hc.port == 22 else f"[{hc.address}]:{hc.port}"
        if kh.keys.lookup(name) is None:
            missing.append(n)
    warn = "; ".join(kh.warnings)
    if missing and not pin:
        return _row("known_hosts", path, False, f"no key for {', '.join(missing)}"
                    + (f"; {warn}" if warn else ""),
                    "ssh-keyscan them, verify each fingerprint, add the lines")
    detail = f"a key for {len(names) - len(missing)} of {len(names)} hosts"
    if missing:
        detail += f" (pinned on first use: {', '.join(missing)})"
    return _row("known_hosts", path, not warn, detail + (f"; {warn}" if warn else ""),
                "fix or remove those lines")


def _state(ctx: Ctx) -> dict:
    store = ctx.store
    path, d = store.path, os.path.dirname(store.path)
    rebuild = "restore it from a backup, or make it again: imgstor rebuild --force"
    try:
        st = store.read()
    except ImgstorError as e:
        return _row("state", path, False, e.message, rebuild)
    if not os.path.isdir(d):
        parent = os.path.dirname(d)
        ok = os.access(parent, os.W_OK)
        return _row("state", path, ok, "absent, and its directory too (made by the first "
                    "change; lost? imgstor rebuild)", f"mkdir -m 0700 {d}")
    bad = _not_others(d, "the state directory", "state")
    if bad:
        return bad
    if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return _row("state", path, False, "not writable by this user", "run as root")
    if not os.path.exists(path):
        return _row("state", path, True, "absent (made by the first change; lost? "
                    "imgstor rebuild)")
    bad = _not_others(path, "the state file", "state", mask=0o077)
    if bad:
        return bad
    return _row("state", path, True, f"{len(st.vms)} VMs, {len(st.volumes)} volumes, "
                f"{len(st.jobs)} jobs; mode {_mode(os.stat(path))}")


def _audit(cfg) -> dict:
    from imgstor.audit import syslog_address
    spec = cfg.log.syslog
    if not spec:
        return _row("audit log", "[log] syslog", True, "off ([log] syslog = \"\")")
    address = syslog_address(spec)
    if isinstance(address, tuple):
        return _row("audit log", spec, True, "UDP (no answer to check)")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(address)
    except OSError as e:
        return _row("audit log", spec, False, f"cannot send to it: {e.strerror or e}; "
                    "nothing is logged", "start a syslog daemon (rsyslog) or set [log] "
                    "syslog")
    finally:
        s.close()
    return _row("audit log", spec, True, f"facility {cfg.log.facility}")


def _cron_lines() -> list[tuple[str, str]]:
    found = []
    for place in CRON_PLACES:
        files = [place]
        if os.path.isdir(place):
            files = sorted(os.path.join(place, f) for f in os.listdir(place))
        for f in files:
            try:
                with open(f, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except OSError:
                continue
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "imgstor" in line \
                        and "refresh" in line.split():
                    found.append((f, line))
    return found


def _schedule() -> dict:
    timers = [t for t in TIMER_PLACES if os.path.exists(t)]
    if timers:
        return _row("schedule", timers[0], True, "systemd timer enabled")
    lines = _cron_lines()
    if not lines:
        return _row("schedule", "refresh", False, "no cron line and no enabled timer runs "
                    "imgstor refresh: monitors are not restarted, pulls not started",
                    "install -m 0644 contrib/imgstor.cron /etc/cron.d/imgstor, or enable "
                    "contrib/imgstor-refresh.timer")
    where, line = lines[0]
    prog = next((w for w in line.split() if w.rsplit("/", 1)[-1] == "imgstor"), "")
    if prog.startswith("/") and not os.access(prog, os.X_OK):
        return _row("schedule", where, False, f"the cron line runs {prog}, which is not "
                    "there", f"install imgstor as {prog} or fix the line")
    return _row("schedule", where, True, line)


def _last_refresh(ctx: Ctx) -> dict:
    from imgstor.workflows.probe import record_path
    path = record_path(ctx)
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return _row("last refresh", path, False, "refresh never ran (no record of it)",
                    "imgstor refresh, and schedule it (above)")
    ok = age <= REFRESH_MAX_AGE
    return _row("last refresh", path, ok, f"{age:.0f} s ago",
                "is cron or the timer running it? try imgstor refresh by hand")


def _metrics(cfg) -> dict:
    path = cfg.metrics_path
    if not path:
        return _row("metrics", "[state] metrics_path", True, "not configured")
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        return _row("metrics", path, False, f"no directory {d}",
                    f"mkdir -p {d} (node_exporter's --collector.textfile.directory)")
    if not os.access(d, os.W_OK):
        return _row("metrics", path, False, f"{d} is not writable by this user",
                    "run as root")
    return _row("metrics", path, True, "directory writable")


# ------------------------------------------------------------------ the hosts
def needed_tools(hc) -> list[str | tuple[str, ...]]:
    """The tools host ``hc``'s role and drivers need (a tuple: any one of them)."""
    if hc.role == "nas":
        need: list[str | tuple[str, ...]] = ["zfs", "zpool"]
        need.append(("targetcli", "rtslib") if hc.target_driver == "lio" else "tgtadm")
        return need
    need = ["iscsiadm" if hc.initiator == "iscsiadm" else "iscsi-inq"]
    need.append("dmsetup" if hc.overlay == "dm" else "qemu-img")
    if hc.img_sync:
        need += ["zfs", "zpool"]
    return need


def _hosts(ctx: Ctx, names: list[str]) -> list[dict]:
    try:
        cfg = ctx.config            # with the attributes set by command (img_zpools…)
    except ImgstorError:            # an unreadable state (its own row says so)
        cfg = ctx.__dict__["config"] = ctx.file_config
    cl = ctx.cluster

    def one(h: str) -> tuple[Any, float, float, float]:
        facts = cl.step(h, "probe", versions=True).facts
        t0 = time.time()
        r = cl.exec(h, ["date", "+%s.%N"], timeout=cfg.ssh.connect_timeout)
        t1 = time.time()
        try:
            remote = float(r.stdout.strip())
        except ValueError:
            remote = float("nan")
        return facts, remote, t0, t1

    got = cl.parallel(names, one)
    rows = []
    for h in names:
        res, hc = got[h], cfg.host(h)
        if isinstance(res, BaseException):
            msg = getattr(res, "message", None) or repr(res)
            rows.append(_row("reachable", h, False, msg, "see `imgstor ping " + h + "`"))
            continue
        facts, remote, t0, t1 = res
        rows.append(_row("reachable", h, True, f"{hc.role} at {hc.address}:{hc.port}, "
                         f"python {facts.get('python')}, kernel {facts.get('kernel')}"))
        rows += [_tools(h, hc, facts), _pools(h, hc, facts), _clock(h, remote, t0, t1)]
    return rows


def _tools(h: str, hc, facts) -> dict:
    import re
    have = set(facts.get("tools") or {})
    if facts.get("rtslib"):
        have.add("rtslib")
    versions = facts.get("versions") or {}
    missing, shown = [], []
    for need in needed_tools(hc):
        options = need if isinstance(need, tuple) else (need,)
        found = [t for t in options if t in have]
        if not found:
            missing.append(" or ".join(options))
            continue
        m = re.search(r"[0-9]+(\.[0-9]+)+", versions.get(found[0], ""))
        shown.append(f"{found[0]} {m.group()}" if m else found[0])
    if missing:
        return _row("tools", h, False, f"missing {', '.join(missing)} (has: "
                    f"{', '.join(sorted(have)) or 'none'})",
                    "install them (README: node prerequisites)")
    return _row("tools", h, True, ", ".join(shown))


def _pools(h: str, hc, facts) -> dict:
    pools = {p.get("name"): p for p in facts.get("pools") or []}
    want = list(hc.img_zpools) if hc.role == "nas" else \
        [hc.vm_container_zpool] if hc.img_sync else []
    if not want:
        return _row("pools", h, True, "none needed (no img_sync)")
    bad = []
    for p in want:
        if p not in pools:
            bad.append(f"{p} missing")
        elif pools[p].get("health") != "ONLINE":
            bad.append(f"{p} {pools[p].get('health')}")
    shown = ", ".join(f"{p} {pools[p].get('free')} free" for p in want if p in pools)
    if bad:
        return _row("pools", h, False, "; ".join(bad) + (f" ({shown})" if shown else ""),
                    "create or import the pool, or change img_zpools / vm_container_zpool")
    return _row("pools", h, True, shown)


def _clock(h: str, remote: float, t0: float, t1: float) -> dict:
    if remote != remote:             # NaN: no answer to read
        return _row("clock", h, False, "could not read its clock (date +%s.%N)",
                    "check the host's coreutils")
    skew = remote - (t0 + t1) / 2
    slack = (t1 - t0) / 2
    ok = abs(skew) - slack <= SKEW_LIMIT
    return _row("clock", h, ok, f"skew {skew:+.2f} s (+/- {slack:.2f})",
                "run NTP (chrony, systemd-timesyncd) on both")
