"""SSH transport: Fabric connections, pooled per host for the life of one command.

* A connection is a ``fabric.Connection`` made by ``connections.connection()``: Fabric
  config from imgstor's ``[ssh]`` only (no Fabric/Invoke/ssh_config file is read), and the
  AutoAddPolicy that ``Connection.__init__`` installs replaced by ``hostkeys.Policy``
  (refuse, or pin on first use) before ``open()``, which refuses any other policy.  Host
  keys come from the configured known_hosts only (``@revoked`` honoured).
* Commands use the connection's paramiko transport directly (one channel per command):
  Fabric's ``run`` goes through invoke's Runner (threads, pty/encoding machinery), which
  costs time on a path whose budget is a few ``ssh host true`` (bench/bench_map.py).
* A command is an argv list; it becomes text exactly once, here, with ``shlex.join``.
* ``step(host, name, **args)`` runs a node step through the node zipapp, started by
  ``zipapp.BOOT``, which checks /run/imgstor and the app's sha256 before running it; a node
  that lacks this version gets it over SFTP (temp name, then ``posix_rename``).
* One bounded pool: at most ``[ssh] max_connections`` (default 16) connections are open
  (or opening) at once.  A command or an upload holds a lease on its host's connection
  while it runs; a host that needs a connection when the pool is full takes the slot of
  the least recently used idle one (closed), or waits for a lease to end.  Connections are
  kept for the command's life otherwise, so a later step on a host reuses its connection.
* ``parallel(hosts, fn)`` runs ``fn(host)`` on a thread pool, one thread per host, at most
  ``max_connections`` at once.
* Failures: ``TransportError`` / ``HostKeyError`` (cannot reach or trust the host;
  ``details["stage"] == "connect"`` when no command ran), ``RemoteCommandError`` (host,
  argv, rc, stderr tail).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import socket
import stat
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TextIO

from imgstor import connections
from imgstor.errors import (
    HostKeyError,
    ImgstorError,
    RemoteCommandError,
    StepError,
    TransportError,
    from_wire,
)
from imgstor.remote.protocol import Result, StepResult, dry_run_gate

__all__ = ["Cluster", "Prepared", "StepResult"]

PYTHON = "python3"
_log = logging.getLogger(__name__)      # -v: every command and upload (imgstor/log.py)



def _import_ssh() -> None:
    """Import in the calling thread what connecting and starting node steps import
    (Fabric, paramiko, the node app's builder), before threads that use them start: two
    threads importing at once now and then get a partially initialised module (Python's
    import deadlock avoidance) and fail with an AttributeError."""
    import fabric  # noqa: F401
    import paramiko  # noqa: F401

    import imgstor.hostkeys  # noqa: F401
    import imgstor.zipapp  # noqa: F401

class Cluster:
    """The hosts of one config, reached over SSH."""

    def __init__(self, config: Any, *, dry_run: bool = False,
                 err: TextIO | None = None) -> None:
        self.config = config
        self.dry_run = dry_run
        self.err = err or sys.stderr
        self._conns: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        # SFTP per host, one thread at a time: paramiko's SFTPClient (cached by the
        # Connection) does not match replies to concurrent requests (a batch's threads)
        self._sftp_locks: dict[str, threading.Lock] = {}
        self._glock = threading.Lock()
        self._uploaded: set[str] = set()
        self._conn_errors: dict[str, ImgstorError] = {}
        self._print_lock = threading.Lock()
        self._cfg_lock = threading.Lock()      # around building a fabric.Connection
        # the pool: hosts holding a slot (connection open or opening), leases (commands,
        # uploads using a host's connection now), last use (the idle one to close first)
        self.limit = max(1, int(getattr(config.ssh, "max_connections", 16)))
        self._pool = threading.Condition()
        self._slots: set[str] = set()
        self._leases: Counter[str] = Counter()
        self._used: dict[str, float] = {}
        self.opened = 0                        # connections opened (tests, bench)
        self._bg: list[threading.Thread] = []  # Prepared's openers, joined by close()
        self.peak = 0                          # most slots held at once

    # ------------------------------------------------------------ connections
    def _lock(self, host: str) -> threading.Lock:
        with self._glock:
            return self._locks.setdefault(host, threading.Lock())

    def _sftp_lock(self, host: str) -> threading.Lock:
        with self._glock:
            return self._sftp_locks.setdefault(host, threading.Lock())

    def connection(self, host: str):
        """The pooled, open ``fabric.Connection`` to ``host`` (a configured host name).
        Without a lease (``_leased``) it may be closed to make room for another host."""
        with self._lock(host):
            if host in self._conn_errors:
                raise self._conn_errors.pop(host)
            conn = self._conns.get(host)
            if conn is not None and conn.is_connected:
                return conn
            self._take_slot(host)
            try:
                conn = self._open(host)
            except BaseException:
                self._give_slot(host)
                raise
            with self._pool:
                self._conns[host] = conn
                self.opened += 1
            return conn

    def _take_slot(self, host: str) -> None:
        """A slot in the pool for ``host``'s connection (which is not open): a free one,
        else the least recently used idle connection's (closed), else wait for one."""
        victim = None
        with self._pool:
            while host not in self._slots:
                if len(self._slots) < self.limit:
                    self._slots.add(host)
                    self.peak = max(self.peak, len(self._slots))
                    break
                idle = [h for h in self._conns if h in self._slots and not self._leases[h]]
                if idle:
                    h = min(idle, key=lambda h: self._used.get(h, 0.0))
                    victim = self._conns.pop(h)
                    self._slots.discard(h)
                    continue
                self._pool.wait()
        if victim is not None:
            _close(victim)

    def _give_slot(self, host: str) -> None:
        with self._pool:
            self._slots.discard(host)
            self._pool.notify_all()

    def _drop(self, host: str, conn: Any) -> None:
        """Forget a connection that broke (the next use reconnects); frees its slot."""
        with self._pool:
            if self._conns.get(host) is conn:
                del self._conns[host]
                self._slots.discard(host)
                self._pool.notify_all()

    @contextlib.contextmanager
    def _leased(self, host: str) -> Iterator[Any]:
        """``host``'s open connection, kept open (not evicted) until the block ends."""
        self._lease(host)
        try:
            yield self.connection(host)
        finally:
            self._unlease(host)

    def _open(self, host: str):
        hc = self.config.host(host)
        ssh = self.config.ssh
        where = f"{host} ({hc.address}:{hc.port or ssh.port})"
        # Each connection gets its own Fabric config (0.07 ms to build): invoke's Config is
        # not thread-safe, and connections opened at once by warm() sharing one made a
        # lookup fail now and then ("No attribute or config key found", seen once in 50
        # concurrent maps).  Built and handed over under a lock, for the same reason.
        with self._cfg_lock:
            conn = connections.connection(self.config, host, err=self.err,
                                          fabric_cfg=connections.fabric_config(ssh))
        import paramiko
        try:
            conn.open()
            connections.keepalive(conn.transport)
            return conn
        except ImgstorError:
            raise
        except paramiko.BadHostKeyException as e:
            from imgstor.hostkeys import fingerprint, verify_hint
            raise HostKeyError(
                f"{where}: host key does not match known_hosts {ssh.known_hosts} (got "
                f"{e.key.get_name()} {fingerprint(e.key)}, known "
                f"{e.expected_key.get_name()} {fingerprint(e.expected_key)}); refusing to "
                f"connect.  If the host was reinstalled, {verify_hint(hc.address, hc.port)}, "
                f"then replace its line in {ssh.known_hosts}", stage="connect", host=host)
        except paramiko.AuthenticationException as e:
            raise TransportError(f"{where}: SSH authentication failed as {ssh.user}: {e}",
                                 stage="connect", host=host)
        except paramiko.SSHException as e:
            raise TransportError(f"{where}: SSH failed: {e}", stage="connect", host=host)
        except (socket.timeout, TimeoutError):
            raise TransportError(f"{where}: connection timed out after {ssh.connect_timeout}s",
                                 stage="connect", host=host)
        except OSError as e:
            # paramiko's NoValidConnectionsError ("Unable to connect to port 1 on …") keeps
            # the socket errors (the reason: refused, unreachable) per address in .errors
            why = next((x.strerror for x in getattr(e, "errors", {}).values()
                        if getattr(x, "strerror", None)), None) or e.strerror or e
            raise TransportError(f"{where}: cannot connect: {why}",
                                 stage="connect", host=host)
        finally:
            if not conn.is_connected:
                conn.client.close()          # a refused key leaves paramiko's thread up

    def close(self) -> None:
        # A prepared step's opener still connecting (a command that ended before it
        # needed it): wait for it, so that its connection is closed here and no thread
        # is inside paramiko or cryptography when the interpreter exits (a daemon thread
        # there can crash the exit).  Bounded: a connect gives up at connect_timeout.
        with self._glock:
            bg, self._bg = self._bg, []
        for t in bg:
            t.join(2 * float(getattr(self.config.ssh, "connect_timeout", 10)) + 5)
        with self._pool:
            conns = list(self._conns.values())
            self._conns.clear()
            self._slots.clear()
            self._pool.notify_all()
        for conn in conns:
            _close(conn)

    def warm(self, hosts: Iterable[str]) -> None:
        """Start connecting to hosts in the background (errors surface on first use)."""
        _import_ssh()
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
             timeout: float | None = None, shown: list[str] | None = None) -> Result:
        """Run argv on host; return its Result (never raises for a non-zero rc).  The
        timeout bounds the whole command, however chatty; ``shown`` replaces argv in
        messages."""
        with self._leased(host) as conn:
            return self._exec(conn, host, argv, stdin=stdin, timeout=timeout, shown=shown)

    def _exec(self, conn: Any, host: str, argv: list[str], *, stdin: bytes | None,
              timeout: float | None, shown: list[str] | None) -> Result:
        chan = self._start(conn, host, argv, shown=shown)
        return self._finish(conn, host, chan, argv, stdin=stdin, timeout=timeout,
                            shown=shown)

    def _start(self, conn: Any, host: str, argv: list[str], *,
               shown: list[str] | None) -> Any:
        """A channel with ``argv`` started on it (its stdin still open)."""
        text = shlex.join(shown if shown is not None else [str(a) for a in argv])
        _log.debug("[%s] $ %s", host, text)
        import paramiko
        chan = None
        try:
            chan = conn.transport.open_session(timeout=self.config.ssh.connect_timeout)
            chan.exec_command(shlex.join(str(a) for a in argv))
            return chan
        except (OSError, EOFError, paramiko.SSHException) as e:
            if chan is not None:
                chan.close()
            self._drop(host, conn)
            raise TransportError(f"{host}: connection lost running {text}: {e}", host=host,
                                 stage="command")

    def _finish(self, conn: Any, host: str, chan: Any, argv: list[str], *,
                stdin: bytes | None, timeout: float | None,
                shown: list[str] | None) -> Result:
        """Send ``stdin`` to a started command, then read it to its end: its Result."""
        text = shlex.join(shown if shown is not None else [str(a) for a in argv])
        timeout = timeout or self.config.ssh.command_timeout
        import paramiko
        deadline = time.monotonic() + timeout
        try:
            try:
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
            except OSError:
                # The command exited and its channel closed before it read its stdin (the
                # boot check answering "app missing" at once): paramiko's "Socket is
                # closed".  As with a broken pipe, its exit status and output tell what
                # happened; seen under load with 50 concurrent maps (tests/lab/test_batch).
                if not chan.closed:
                    raise
            out, err = bytearray(), bytearray()
            # Read until the server's EOF (stdout and stderr are complete then), checking
            # the deadline on every turn.  select() wakes on stdout data and on EOF;
            # stderr-only data is picked up within the 0.2 s tick.
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(f"{host}: command timed out after {timeout}s: "
                                         f"{text}", host=host, stage="command")
                got = False
                if chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if got:
                    continue
                if chan.eof_received or chan.closed:
                    break
                select.select([chan], [], [], min(0.2, left))
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise TransportError(f"{host}: command timed out after {timeout}s: {text}",
                                     host=host, stage="command")
            rc = chan.recv_exit_status()
            if rc == -1 and not conn.transport.is_active():
                raise EOFError("the connection closed before the command's exit status came")
        except ImgstorError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop(host, conn)
            raise TransportError(f"{host}: connection lost running {text}: {e}", host=host,
                                 stage="command")
        finally:
            if chan is not None:
                chan.close()
        return Result(list(argv) if shown is None else list(shown), rc,
                      out.decode(errors="replace"), err.decode(errors="replace"))

    def run(self, host: str, argv: list[str], *, read_only: bool = False, check: bool = True,
            timeout: float | None = None) -> Result:
        """Run a plain command (not a node step); a dry run skips non-read-only ones."""
        said: list[str] = []              # the node's executor decides with the same rule
        if not dry_run_gate(shlex.join(argv), dry_run=self.dry_run, read_only=read_only,
                            log=said):
            self.echo(host, said[-1])     # SKIP> …
            return Result(list(argv), 0, skipped=True)
        r = self.exec(host, argv, timeout=timeout)
        if check and r.rc != 0:
            raise RemoteCommandError(host, argv, r.rc, r.stderr, r.stdout)
        return r

    # ------------------------------------------------------------ node steps
    def _app(self):
        from imgstor.zipapp import node_app
        cache = os.path.join(os.path.dirname(os.path.abspath(self.config.state_path)),
                             "cache")
        if not os.path.isdir(cache) and os.path.isdir(os.path.dirname(cache)):
            try:
                os.mkdir(cache, 0o700)
            except OSError:
                pass
        return node_app(cache)

    def _check_dir(self, host: str, sftp: Any) -> None:
        """/run/imgstor must be a real directory, root's, mode 0700 (made so if absent)."""
        from imgstor.zipapp import REMOTE_DIR
        try:
            st = sftp.lstat(REMOTE_DIR)
        except FileNotFoundError:
            try:
                sftp.mkdir(REMOTE_DIR, 0o700)
                sftp.chmod(REMOTE_DIR, 0o700)    # whatever sftp-server's umask made of it
            except OSError:
                pass          # made meanwhile by another run: checked below like any other
            st = sftp.lstat(REMOTE_DIR)
        mode = st.st_mode or 0
        if not stat.S_ISDIR(mode) or st.st_uid != 0 or stat.S_IMODE(mode) != 0o700:
            raise StepError(_unsafe_dir(host, f"mode {mode:o}, uid {st.st_uid}"), host=host)

    @contextlib.contextmanager
    def _sftp_errors(self, host: str) -> Iterator[None]:
        """SFTP failures (no space, no sftp-server, lost connection) as TransportError."""
        import paramiko
        try:
            yield
        except (OSError, EOFError, paramiko.SSHException) as e:
            from imgstor.zipapp import REMOTE_DIR
            raise TransportError(f"{host}: cannot upload imgstor's node app to {REMOTE_DIR} "
                                 f"over SFTP: {e}", host=host, stage="upload") from None

    def _send(self, host: str, sftp: Any, app: Any) -> None:
        self._check_dir(host, sftp)
        tmp = f"{app.remote_path}.tmp-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            with sftp.open(tmp, "wx") as f:
                f.set_pipelined(True)
                f.write(app.data)
            sftp.chmod(tmp, 0o600)
            sftp.posix_rename(tmp, app.remote_path)
        except BaseException:
            try:
                sftp.remove(tmp)
            except Exception:  # best effort; a leftover temp name is harmless
                pass
            raise
        _log.debug("[%s] uploaded %s (%d bytes)", host, app.remote_path, len(app.data))
        self._uploaded.add(host)

    def step(self, host: str, name: str, /, **args: Any) -> StepResult:
        """Run node step ``name`` on host with JSON args; raise its error if it failed."""
        return Prepared(self, host, name, background=False).run(**args)

    def prepare(self, host: str, name: str, /) -> "Prepared":
        """Start node step ``name`` on host now, in the background, and send its arguments
        later (``.run(**args)``; ``.cancel()`` if they never come): the node's Python
        starts and loads the app while the frontend waits on something else (the NAS's
        work, for the node's attach).  The node runs nothing until the request comes."""
        return Prepared(self, host, name)

    def prepare_steps(self, host: str, /) -> "Prepared":
        """``prepare`` for ``steps``: ``.run_steps(steps, stop_after=…)``."""
        return Prepared(self, host, "batch")

    def _lease(self, host: str) -> None:
        with self._pool:
            self._leases[host] += 1

    def _unlease(self, host: str) -> None:
        with self._pool:
            self._leases[host] -= 1
            if not self._leases[host]:
                del self._leases[host]
            self._used[host] = time.monotonic()
            self._pool.notify_all()

    def _step_result(self, host: str, name: str, p: "Prepared", req: bytes,
                     r: Result) -> StepResult:
        from imgstor.zipapp import BOOT_MISSING, BOOT_UNSAFE
        argv, shown = p.argv, p.shown
        boot = r.stderr.startswith("imgstor-boot: ")
        if boot and r.rc == BOOT_MISSING:
            with self._sftp_errors(host), self._sftp_lock(host), self._leased(host) as c:
                self._send(host, c.sftp(), p.app)
            r = self.exec(host, argv, stdin=req, shown=shown)
            boot = r.stderr.startswith("imgstor-boot: ")
        if boot and r.rc == BOOT_UNSAFE:
            raise StepError(_unsafe_dir(host, r.stderr.strip()[len("imgstor-boot: "):]),
                            host=host)
        if boot:
            raise RemoteCommandError(host, shown, r.rc, r.stderr, r.stdout)
        self._uploaded.add(host)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        try:
            out = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise RemoteCommandError(host, shown, r.rc, r.stderr or r.stdout)
        cmds = out.get("commands") or []
        for c in cmds:          # what the node ran: -v; what a dry run did not: always
            if c.startswith("SKIP> "):
                self.echo(host, c)
            else:
                _log.debug("[%s]   %s", host, c)
        if out.get("ok"):
            return StepResult.received(host, name, out, cmds)
        err = out.get("error") or {}
        if err.get("bug"):
            raise RuntimeError(f"{host}: {err.get('message')}\n{err.get('traceback', '')}")
        raise from_wire(err, host=host)

    def steps(self, host: str, steps: list[tuple[str, dict]], /, *,
              stop_after: int | None = None) -> list[StepResult]:
        """Run several node steps in one round trip, in order; the first error raises."""
        return Prepared(self, host, "batch", background=False).run_steps(
            steps, stop_after=stop_after)

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

        with ThreadPoolExecutor(max_workers=min(self.limit, len(hosts))) as pool:
            for h, v in pool.map(one, hosts):
                out[h] = v
        return out


class Prepared:
    """A node step started on its host before its arguments are known (``Cluster.prepare``):
    the command (the boot check, then the app waiting for its request on stdin) is started
    on a channel of the pooled connection, holding a lease on it until ``run`` or
    ``cancel``.  An app missing on the node is found at ``run`` and uploaded as ``step``
    does."""

    def __init__(self, cl: Cluster, host: str, name: str, *, background: bool = True) -> None:
        self.cl, self.host, self.name = cl, host, name
        self.app: Any = None
        self.argv: list[str] = []
        self.shown: list[str] = []
        self.conn: Any = None
        self.chan: Any = None
        self.error: BaseException | None = None
        self._lk = threading.Lock()
        self._held = False
        self._cancelled = False
        self._opened = False
        self._thread: threading.Thread | None = None
        if background:
            _import_ssh()
            self._thread = threading.Thread(target=self._open, daemon=True)
            with cl._glock:
                cl._bg[:] = [t for t in cl._bg if t.is_alive()]
                cl._bg.append(self._thread)
            self._thread.start()
        else:
            self._open()

    def _open(self) -> None:
        try:
            from imgstor.zipapp import BOOT
            self.app = self.cl._app()
            # -I: isolated (no PYTHON* variables, no user site, no cwd on sys.path).  Not
            # -S: `site` puts the distribution's packages (rtslib-fb, pyzfs) on the path.
            self.argv = [PYTHON, "-I", "-c", BOOT, self.app.remote_path, self.app.sha256,
                         "node", self.name]
            self.shown = [PYTHON, "-I", self.app.remote_path, "node", self.name]
            with self._lk:
                self.cl._lease(self.host)
                self._held = True
            self.conn = self.cl.connection(self.host)
            chan = self.cl._start(self.conn, self.host, self.argv, shown=self.shown)
        except BaseException as e:    # raised by run(), in the caller's thread
            self.error = e
            chan = None
        with self._lk:
            self._opened = True
            if self._cancelled:
                if chan is not None:
                    with contextlib.suppress(Exception):
                        chan.close()
                self._release()
            else:
                self.chan = chan

    def _release(self) -> None:
        if self._held:
            self._held = False
            self.cl._unlease(self.host)

    def run(self, **args: Any) -> StepResult:
        """Send the step's arguments; its result (or its error, raised)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        req = json.dumps({"args": args, "dry_run": self.cl.dry_run}).encode()
        try:
            if self.error is not None:
                raise self.error
            chan, self.chan = self.chan, None
            r = self.cl._finish(self.conn, self.host, chan, self.argv, stdin=req,
                                timeout=None, shown=self.shown)
        finally:
            with self._lk:
                self._release()
        return self.cl._step_result(self.host, self.name, self, req, r)

    def run_steps(self, steps: list[tuple[str, dict]], *,
                  stop_after: int | None = None) -> list[StepResult]:
        """``run`` of a prepared ``batch``: several steps, one round trip."""
        out = self.run(steps=[{"step": n, "args": a} for n, a in steps],
                       stop_after=stop_after)
        return [StepResult.received(self.host, n, r)
                for (n, _), r in zip(steps, out.facts["results"])]

    def cancel(self) -> None:
        """Not needed after all: the node's app gets no request and runs nothing.  Does
        not wait for a connection still being opened."""
        with self._lk:
            self._cancelled = True
            chan, self.chan = self.chan, None
            if self._opened:
                self._release()
        if chan is not None:
            with contextlib.suppress(Exception):
                chan.close()


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # closing is best effort
        pass


def _unsafe_dir(host: str, why: str) -> str:
    from imgstor.zipapp import REMOTE_DIR
    return (f"{host}: {REMOTE_DIR} is not safe to run imgstor's node code from ({why}): it "
            f"must be a directory (not a symlink) owned by root with mode 0700, holding "
            f"root's files only; refusing.  Check who made it, then remove it "
            f"(imgstor makes it again) or fix it (chown root:root, chmod 700)")
