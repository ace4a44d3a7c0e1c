"""SSH transport: paramiko connections, pooled per host for the life of one command.

Why paramiko and not Fabric's ``Connection``: Fabric is paramiko plus invoke, and we use
none of invoke; importing it costs ~0.15 s of a map whose whole budget is 3x one
``ssh host true`` (~0.3 s here), and Fabric's default host-key policy (AutoAdd) is the one
thing we must not have.  Measured in bench/bench_map.py.

* Host keys are verified: the config's known_hosts is loaded and unknown keys are rejected
  (paramiko ``RejectPolicy``), unless the config says ``accept_unknown_host_keys = true``.
* A command is an argv list; it becomes text exactly once, here, with ``shlex.join``.
* ``step(host, name, **args)`` runs a node step through the node zipapp (uploaded when the
  node lacks this version, keyed by content hash) and returns its result, or raises the
  node's error as the same ``ImgstorError`` class.
* ``parallel(hosts, fn)`` runs ``fn(host)`` on a thread pool, one thread per host.
* Failures: ``TransportError`` / ``HostKeyError`` (cannot reach or trust the host),
  ``RemoteCommandError`` (host, argv, rc, stderr tail).
"""
from __future__ import annotations

import json
import select
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO

from imgstor.errors import (HostKeyError, ImgstorError, RemoteCommandError, TransportError,
                            from_wire)
from imgstor.remote.executor import Result

__all__ = ["Cluster", "StepOutcome"]

PYTHON = "python3"


@dataclass
class StepOutcome:
    host: str
    step: str
    changed: bool
    facts: dict = field(default_factory=dict)
    message: str = ""
    commands: list[str] = field(default_factory=list)


def _paramiko():
    """Import paramiko without invoke.  paramiko.config imports invoke (~0.1 s, a third of
    paramiko's import) only to run ssh_config `Match exec`; imgstor never reads ssh_config,
    so invoke's import is made to fail for that one import, and paramiko records it as
    unavailable (its documented fallback).  Later `import invoke` works as usual."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        import paramiko
        return paramiko
    sys.modules["invoke"] = None          # `import invoke` raises ImportError
    try:
        import paramiko
    finally:
        del sys.modules["invoke"]
    return paramiko


class Cluster:
    """The hosts of one config, reached over SSH."""

    def __init__(self, config: Any, *, dry_run: bool = False, debug: bool = False,
                 err: TextIO | None = None) -> None:
        self.config = config
        self.dry_run = dry_run
        self.debug = debug
        self.err = err or sys.stderr
        self._conns: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._glock = threading.Lock()
        self._uploaded: set[str] = set()
        self._conn_errors: dict[str, ImgstorError] = {}
        self._print_lock = threading.Lock()

    # ------------------------------------------------------------ connections
    def _lock(self, host: str) -> threading.Lock:
        with self._glock:
            return self._locks.setdefault(host, threading.Lock())

    def connection(self, host: str):
        """The pooled, open SSH client (paramiko) to ``host`` (a configured host name)."""
        with self._lock(host):
            if host in self._conn_errors:
                raise self._conn_errors.pop(host)
            conn = self._conns.get(host)
            if conn is not None and conn.get_transport() is not None \
                    and conn.get_transport().is_active():
                return conn
            conn = self._open(host)
            self._conns[host] = conn
            return conn

    def _open(self, host: str):
        paramiko = _paramiko()
        hc = self.config.host(host)
        ssh = self.config.ssh
        port = hc.port or ssh.port
        # Only the configured known_hosts; unknown keys rejected (not Fabric's AutoAdd).
        client = paramiko.SSHClient()
        if ssh.known_hosts:
            try:
                client.load_host_keys(ssh.known_hosts)
            except FileNotFoundError:
                if not ssh.accept_unknown_host_keys:
                    raise HostKeyError(f"{host}: known_hosts file {ssh.known_hosts} does not "
                                       "exist; add the hosts' keys (ssh-keyscan, then verify "
                                       "them) or set accept_unknown_host_keys")
            except (OSError, paramiko.SSHException) as e:
                raise HostKeyError(f"{host}: cannot read known_hosts {ssh.known_hosts}: {e}")
        client.set_missing_host_key_policy(
            paramiko.WarningPolicy() if ssh.accept_unknown_host_keys else paramiko.RejectPolicy())
        where = f"{host} ({hc.address}:{port})"
        try:
            client.connect(hc.address, port=port, username=ssh.user,
                           key_filename=[ssh.identity] if ssh.identity else None,
                           look_for_keys=not ssh.identity, allow_agent=False,
                           timeout=ssh.connect_timeout, banner_timeout=ssh.connect_timeout,
                           auth_timeout=ssh.connect_timeout)
        except paramiko.BadHostKeyException as e:
            raise HostKeyError(f"{where}: host key does not match known_hosts "
                               f"{ssh.known_hosts} (got {e.key.get_name()} "
                               f"{e.key.get_fingerprint().hex()}); refusing to connect",
                               stage="connect")
        except paramiko.AuthenticationException as e:
            raise TransportError(f"{where}: SSH authentication failed as {ssh.user}: {e}",
                                 stage="connect")
        except paramiko.SSHException as e:
            if "known_hosts" in str(e):
                raise HostKeyError(f"{where}: host key is not in {ssh.known_hosts}; "
                                   "refusing to connect (verify the host's key and add it)",
                                   stage="connect")
            raise TransportError(f"{where}: SSH failed: {e}", stage="connect")
        except (socket.timeout, TimeoutError):
            raise TransportError(f"{where}: connection timed out after {ssh.connect_timeout}s",
                                 stage="connect")
        except OSError as e:
            raise TransportError(f"{where}: cannot connect: {e.strerror or e}", stage="connect")
        return client

    def close(self) -> None:
        for client in self._conns.values():
            try:
                client.close()
            except Exception:  # closing is best effort
                pass
        self._conns.clear()

    def warm(self, hosts: Iterable[str]) -> None:
        """Start connecting to hosts in the background (errors surface on first use)."""
        def one(h: str) -> None:
            try:
                self.connection(h)
            except ImgstorError as e:
                self._conn_errors[h] = e      # raised on first use, not retried
        for h in hosts:
            threading.Thread(target=one, args=(h,), daemon=True).start()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ raw commands
    def echo(self, host: str, text: str) -> None:
        with self._print_lock:
            print(f"[{host}] {text}", file=self.err, flush=True)

    def exec(self, host: str, argv: list[str], *, stdin: bytes | None = None,
             timeout: float | None = None) -> Result:
        """Run argv on host; return its Result (never raises for a non-zero rc)."""
        conn = self.connection(host)
        cmd = shlex.join(str(a) for a in argv)
        if self.debug:
            self.echo(host, "$ " + cmd)
        timeout = timeout or self.config.ssh.command_timeout
        try:
            chan = conn.get_transport().open_session(timeout=self.config.ssh.connect_timeout)
            chan.exec_command(cmd)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise TransportError(f"{host}: command timed out after {timeout}s: {cmd}")
                select.select([chan], [], [], 0.2)
            rc = chan.recv_exit_status()
            chan.close()
        except ImgstorError:
            raise
        except (OSError, EOFError) as e:
            self._conns.pop(host, None)
            raise TransportError(f"{host}: connection lost running {cmd}: {e}")
        except Exception as e:
            if isinstance(e, _paramiko().SSHException):
                self._conns.pop(host, None)
                raise TransportError(f"{host}: SSH error running {cmd}: {e}")
            raise
        return Result(list(argv), rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def run(self, host: str, argv: list[str], *, read_only: bool = False, check: bool = True,
            timeout: float | None = None) -> Result:
        """Run a plain command (not a node step); a dry run skips non-read-only ones."""
        if self.dry_run and not read_only:
            self.echo(host, "SKIP> " + shlex.join(argv))
            return Result(list(argv), 0, skipped=True)
        r = self.exec(host, argv, timeout=timeout)
        if check and r.rc != 0:
            raise RemoteCommandError(host, argv, r.rc, r.stderr, r.stdout)
        return r

    # ------------------------------------------------------------ node steps
    def upload_node_app(self, host: str) -> bool:
        """Put this version's zipapp on host unless it is there; True if it was sent."""
        from imgstor.zipapp import REMOTE_DIR, node_app
        app = node_app()
        if host in self._uploaded:
            return False
        conn = self.connection(host)
        sftp = conn.open_sftp()
        try:
            try:
                st = sftp.stat(app.remote_path)
                if st.st_size == len(app.data):
                    self._uploaded.add(host)
                    return False
            except FileNotFoundError:
                pass
            try:
                sftp.mkdir(REMOTE_DIR, 0o700)
            except OSError:
                pass                              # exists
            tmp = f"{app.remote_path}.tmp-{id(self)}"
            with sftp.open(tmp, "wb") as f:
                f.write(app.data)
            sftp.chmod(tmp, 0o600)
            sftp.posix_rename(tmp, app.remote_path)
        finally:
            sftp.close()
        if self.debug:
            self.echo(host, f"uploaded {app.remote_path} ({len(app.data)} bytes)")
        self._uploaded.add(host)
        return True

    def step(self, host: str, name: str, /, **args: Any) -> StepOutcome:
        """Run node step ``name`` on host with JSON args; raise its error if it failed."""
        from imgstor.zipapp import node_app
        app = node_app()
        # -I: isolated (no PYTHON* variables, no user site).  Not -S: `site` is what puts
        # the distribution's packages (rtslib-fb, pyzfs) on the path.
        argv = [PYTHON, "-I", app.remote_path, "node", name]
        req = json.dumps({"args": args, "dry_run": self.dry_run}).encode()
        r = self.exec(host, argv, stdin=req)
        if r.rc == 2 and "can't open file" in r.stderr:
            self.upload_node_app(host)
            r = self.exec(host, argv, stdin=req)
        else:
            self._uploaded.add(host)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        try:
            out = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise RemoteCommandError(host, argv, r.rc, r.stderr or r.stdout)
        cmds = out.get("commands") or []
        for c in cmds:
            if self.debug or c.startswith("SKIP> "):
                self.echo(host, c if c.startswith("SKIP> ") else "  " + c)
        if out.get("ok"):
            return StepOutcome(host, name, bool(out.get("changed")), out.get("facts") or {},
                               out.get("message") or "", cmds)
        err = out.get("error") or {}
        if err.get("bug"):
            raise RuntimeError(f"{host}: {err.get('message')}\n{err.get('traceback', '')}")
        raise from_wire(err, host=host)

    def steps(self, host: str, steps: list[tuple[str, dict]], /, *,
              stop_after: int | None = None) -> list[StepOutcome]:
        """Run several node steps in one round trip, in order; the first error raises."""
        out = self.step(host, "batch", steps=[{"step": n, "args": a} for n, a in steps],
                        stop_after=stop_after)
        return [StepOutcome(host, n, bool(r.get("changed")), r.get("facts") or {},
                            r.get("message") or "")
                for (n, _), r in zip(steps, out.facts["results"])]

    # ------------------------------------------------------------ parallel
    def parallel(self, hosts: Iterable[str], fn: Callable[[str], Any]) -> dict[str, Any]:
        """fn(host) for every host at once; values are results or the exception raised."""
        hosts = list(hosts)
        out: dict[str, Any] = {}
        if not hosts:
            return out

        def one(h: str) -> tuple[str, Any]:
            try:
                return h, fn(h)
            except ImgstorError as e:
                return h, e

        with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            for h, v in pool.map(one, hosts):
                out[h] = v
        return out
