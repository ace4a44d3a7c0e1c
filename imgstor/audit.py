"""The audit trail: what imgstor changed, who asked, and how it ended, one syslog line each.

Every command that changes something (``Cmd.audits``: add, set, remove, move, start, stop,
clean, unbusy, repair, rebuild, ``ping --trust``; each batch item; each action of
imgstorageadmin's dialogue) logs one line when it ends, also when it fails; a dry run logs
nothing.  Monitors log each phase of a job and its end; ``refresh`` logs what it did
(a host that went down, came back or rebooted, a monitor or a pull it started, what it
restored, job logs it pruned), not the runs that found nothing to do.  A line is
``key=value`` pairs (values with a space or a quote in double quotes)::

    imgstor[4242]: user=root sudo_user=alice what="add host storagemap"
    target="nas-0-0 tank vol1 compute-0-1 10G" result=ok exit=0 job=-
    message="nas-0-0:vol1 mapped to compute-0-1:/dev/sdc"

They go through the standard ``logging`` module, logger ``imgstor.audit`` (a child of
``imgstor``, so the frontend's own log setup sees them too), to syslog: ``[log] syslog``
in the config is a Unix socket (default ``/dev/log``), ``udp://HOST:PORT`` or ``""``
(none), with ``[log] facility`` (default ``user``).  A missing ``/dev/log`` (no syslog
daemon) logs nothing and says nothing, so a command never fails for its log; ``imgstor
doctor`` reports it.  Any other configured destination that cannot be reached is said on
stderr once.  The handler is set up here, once per process, on the first line.
"""
from __future__ import annotations

import os
import sys
import threading
from contextvars import ContextVar

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import logging
    from typing import Any

__all__ = ["LOGGER", "DEFAULT_SYSLOG", "JOBS", "job_started", "who", "line", "record",
           "command", "syslog_address", "handler"]

LOGGER = "imgstor.audit"
DEFAULT_SYSLOG = "/dev/log"
# The jobs the running command started (jobpool.launch notes them): its audit line names them.
JOBS: ContextVar[list[str] | None] = ContextVar("imgstor_audit_jobs", default=None)
_ready: dict[tuple[str, str], "logging.Handler | None"] = {}
_lock = threading.Lock()       # batch items log from their threads


def job_started(job_id: str) -> None:
    jobs = JOBS.get()
    if jobs is not None:
        jobs.append(job_id)


def who() -> dict[str, str | None]:
    """The user running imgstor (its effective uid's name) and, under sudo, who ran
    sudo."""
    try:
        import pwd
        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.geteuid())
    return {"user": user, "sudo_user": os.environ.get("SUDO_USER") or None}


def _value(v: Any) -> str:
    if v is None or v == "" or v == []:
        return "-"
    if isinstance(v, (list, tuple)):
        v = ",".join(map(str, v))
    s = str(v)
    if any(c in s for c in ' "=\\') or not s.isprintable():
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


def line(fields: dict[str, Any]) -> str:
    """``key=value ...`` (logfmt)."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def syslog_address(spec: str) -> Any:
    """``/dev/log`` (a Unix socket path), ``udp://HOST:PORT`` -> what SysLogHandler takes;
    None for ``""``.  ValueError for anything else."""
    if not spec:
        return None
    if spec.startswith("udp://"):
        host, sep, port = spec[len("udp://"):].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("udp:// needs HOST:PORT")
        return (host.strip("[]"), int(port))
    if spec.startswith("/"):
        return spec
    raise ValueError("must be a Unix socket path (/dev/log), udp://HOST:PORT or \"\"")


def handler(spec: str, facility: str = "user") -> logging.Handler | None:
    """The syslog handler for ``spec`` (made once per process), None when there is none
    or it cannot be reached."""
    key = (spec, facility)
    with _lock:
        if key not in _ready:
            _ready.clear()
            _ready[key] = _make(spec, facility)
        return _ready[key]


def _make(spec: str, facility: str) -> logging.Handler | None:
    import logging
    import logging.handlers

    class _Handler(logging.handlers.SysLogHandler):
        warned = False

        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
            """One line on stderr, once, instead of logging's traceback per record."""
            if not self.warned:
                self.warned = True
                print(f"imgstor: warning: audit log {spec}: cannot send to it: "
                      f"{sys.exc_info()[1]}", file=sys.stderr)

    h: logging.Handler | None = None
    try:
        address = syslog_address(spec)
        if isinstance(address, str) and not os.path.exists(address):
            raise FileNotFoundError(f"no such socket {address} (no syslog daemon?)")
        if address is not None:
            fac = logging.handlers.SysLogHandler.facility_names[facility]
            h = _Handler(address=address, facility=fac)
            h.ident = f"imgstor[{os.getpid()}]: "
            h.setFormatter(logging.Formatter("%(message)s"))
    except (OSError, ValueError, KeyError) as e:
        h = None
        if spec != DEFAULT_SYSLOG or os.path.exists(spec):
            print(f"imgstor: warning: audit log {spec}: {e}; nothing is logged",
                  file=sys.stderr)
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    for old in [x for x in log.handlers if getattr(x, "imgstor_audit", False)]:
        log.removeHandler(old)          # one destination per process (tests change it)
        old.close()
    if h is not None:
        h.imgstor_audit = True          # type: ignore[attr-defined]
        log.addHandler(h)
    return h


def _settings(ctx: Any) -> tuple[str, str]:
    cfg = ctx.__dict__.get("file_config")
    if cfg is None:
        try:
            cfg = ctx.file_config
        except Exception:       # noqa: BLE001 - no config: the default socket
            return DEFAULT_SYSLOG, "user"
    return cfg.log.syslog, cfg.log.facility


def record(ctx: Any, **fields: Any) -> None:
    """Log one audit line: who, then ``fields`` (what, target, result, job, message…)."""
    spec, facility = _settings(ctx)
    if handler(spec, facility) is None:
        return
    import logging
    logging.getLogger(LOGGER).info(line({**who(), **fields}))


def command(ctx: Any, cmd: Any, kwargs: dict[str, Any], *, result: Any = None, rc: int = 0,
            error: BaseException | None = None, jobs: list[str] | None = None) -> None:
    """The line of a command that changes something (``cli.run``)."""
    target = []
    for a in cmd.args:
        v = kwargs.get(a.name.replace("-", "_"))
        if v not in (None, []):
            target += v if isinstance(v, list) else [v]
    names = {a.name.replace("-", "_") for a in cmd.args}
    target += [f"{k}={kwargs[k]}" for k in cmd.keys if k not in names
               and kwargs.get(k) is not None]
    target += [f for f in cmd.flags if kwargs.get(f.lstrip("-").replace("-", "_"))]
    if error is not None:
        from imgstor.errors import ImgstorError
        rc = error.exit_code if isinstance(error, ImgstorError) else 1
        outcome = "failed" if isinstance(error, ImgstorError) else "bug"
        message = error.message if isinstance(error, ImgstorError) else repr(error)
        if isinstance(error, KeyboardInterrupt):
            outcome, rc = "interrupted", 130
    else:
        outcome = "ok" if rc == 0 else "failed"
        message = getattr(result, "message", None) or (
            "; ".join(result.footer) if hasattr(result, "footer") else result)
    record(ctx, what=cmd.name, target=" ".join(map(str, target)), result=outcome,
           exit=rc, job=jobs or None, message=_first(message))


def _first(message: Any) -> str | None:
    if message is None:
        return None
    text = str(message).strip()
    return " / ".join(text.splitlines()[:4])[:400]
