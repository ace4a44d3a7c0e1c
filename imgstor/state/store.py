"""The locked JSON state store.

``with store.transaction() as st:`` takes ``<path>.lock`` (filelock), brings the command's
one in-memory state up to date (parsed once per command: ``memory.py``), yields a view of
it (``journal.View``: records are copied when first touched) and, on normal exit, appends
what changed as one line to ``<path>.journal`` (``journal.py``), releases the lock and
returns once that line is durable (one ``fdatasync`` shared by the transactions that
finish together).  On an exception nothing is written.  The journal is folded into the
state file (written whole to ``<path>.tmp-<pid>``, 0600, fsynced, ``os.replace``d over the
file) when it outgrows the file, when the file does not exist yet, and by ``fold()``.
``store.read()`` takes no lock and returns the command's state read-only (change records
only inside a transaction); a reader sees a state some transaction left, never half of
one.  A missing file is an empty state; ``read()`` says so on stderr, with the path,
once per process: a wrong ``[state] path`` must not look like an empty cluster.

Never hold the lock across a remote command: mark the volume busy (``store.busy(...)`` or
``acquire_busy``), leave the transaction, do the remote work, then re-open a transaction to
record the result.  The lock guards milliseconds of work, the busy marker guards minutes
of remote work.

While the lock is held ``<path>.lock.holder`` names the holder (pid, command line, host,
since) so a ``LockTimeout`` can say who is in the way.

A file that cannot be read completely (not JSON, not an object, a missing or bad field)
is one ``StateError`` that says what is wrong and what to do: restore a backup, or move it
aside and run ``imgstor rebuild``; imgstor never overwrites it.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from imgstor import atomicfile
from imgstor.errors import BusyError, LockTimeout, NotFound, StateError
from imgstor.remote import procfs
from imgstor.state.memory import Memory, _ident
from imgstor.state.model import (
    READS_SCHEMAS,
    SCHEMA,
    Busy,
    HostAttrs,
    State,
    Volume,
    attrs_from_dict,
    migrate,
)

__all__ = ["Store", "pid_alive", "proc_starttime", "this_host"]


def this_host() -> str:
    import socket  # lazy: read-only commands never need it
    return socket.gethostname()


def proc_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (proc(5) field 22), or None."""
    return procfs.start_time(pid)


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """True if ``pid`` runs on this host, is not a zombie and (if given) started at
    ``starttime`` (imgstor.remote.procfs: a recycled pid is a different process)."""
    return procfs.alive(pid, starttime)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a state is decoded and built: 10,000 VMs
    are ~30,000 new containers, none of them garbage, and every 700 allocations would
    start a collection that walks them (~15% of the load; Mercurial's ``util.nogc``).
    Threads of a batch may overlap here: the worst case is the collector back on early."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_said_missing: set[str] = set()


def _say_missing(path: str) -> None:
    if path not in _said_missing:
        _said_missing.add(path)
        print(f"imgstor: no state file {path}: nothing is recorded yet (if imgstor has "
              "been used with this config, [state] path is wrong or the file was lost: "
              "restore it, or run `imgstor rebuild`)", file=sys.stderr, flush=True)


class Store:
    """The state file at ``path``; see the module docstring."""

    def __init__(self, path: str, *, lock_timeout: float = 30) -> None:
        self.path = os.path.abspath(path)
        self.lock_timeout = lock_timeout
        self.lock_path = self.path + ".lock"
        self.holder_path = self.path + ".lock.holder"
        self.journal_path = self.path + ".journal"
        # Test hook: called between writing the temp file and replacing the state file.
        self._before_replace: Callable[[str], None] | None = None
        self._memory = Memory(self)
        self._tlock: Any = None        # the threads of this process, before the file lock
        self.quiet_missing = False    # refresh --quiet: a new install has no file yet

    @property
    def stats(self):
        """Counts of what this Store did (loads, parsed_bytes, journal_lines,
        journal_bytes, fsyncs, folds, state_bytes): tests and benches, never times."""
        return self._memory.stats

    # ---- reading ----
    def read(self) -> State:
        """The current state, without taking the lock: the command's own, shared with its
        later reads and transactions.  Read-only: change records in a transaction.  A
        missing file is an empty state, said on stderr (once per process and path)."""
        with _no_gc():
            st = self._memory.snapshot()
        if self._memory.ident is None and not self.quiet_missing:
            _say_missing(self.path)
        return st

    def _read_bytes(self) -> bytes | None:
        return self._read_state()[0]

    def _read_state(self) -> tuple[bytes | None, tuple | None]:
        """The state file's bytes and identity (None, None: no file)."""
        try:
            with open(self.path, "rb") as f:
                return f.read(), _ident(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None, None
        except OSError as e:
            raise StateError(f"state file {self.path}: cannot read: {e.strerror}") from None

    # What State.to_dict writes first: the attrs section right after the schema.
    _ATTRS_AT = re.compile(rb'\A\{\s*"schema":\s*[0-9]+,\s*"attrs":\s*')

    def read_attrs(self) -> dict[str, HostAttrs]:
        """The ``attrs`` section alone (host -> the attributes `set host attr` set), for
        building the config every command uses.  Reads only that section when the file
        is laid out as imgstor writes it (attrs right after schema, or none at all), so a
        command on 10,000 VMs does not parse them twice; anything else gets a full read.
        With a journal (which may hold attribute changes) or the state already loaded:
        the command's state."""
        if self._memory.loaded() or os.path.exists(self.journal_path):
            return self.read().attrs
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StateError(f"state file {self.path}: cannot read: {e.strerror}") from None
        m = self._ATTRS_AT.match(data)
        if m is None:
            if b'"attrs"' not in data:
                return {}
            return self._parse(data).attrs
        try:
            raw, _ = json.JSONDecoder().raw_decode(data[m.end():].decode())
            return attrs_from_dict(raw)
        except (ValueError, StateError):
            return self._parse(data).attrs     # names the file and the problem

    def _parse(self, data: bytes) -> State:
        with _no_gc():
            return self._build(self._decode(data))

    def _damaged(self, what: str, *, journal: bool = False) -> StateError:
        where = f"state file {self.path}" + (f" with its journal {self.journal_path}"
                                             if journal else "")
        return StateError(f"{where} is damaged: {what}.  imgstor will not "
                          "overwrite it: restore it from a backup, or move it aside and run "
                          "`imgstor rebuild` (it makes the state again from the hosts)",
                          path=self.path)

    def _decode(self, data: bytes) -> dict:
        """The state file's JSON, its schema checked (``_build`` makes the State)."""
        try:
            raw = json.loads(data)
        except ValueError as e:
            raise self._damaged(f"not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise self._damaged(f"a JSON {type(raw).__name__}, not an object")
        schema = raw.get("schema")
        if type(schema) is int and schema > SCHEMA:
            raise StateError(f"state file {self.path} has schema {schema}, written by a newer "
                             f"imgstor; this one reads schemas "
                             f"{', '.join(map(str, READS_SCHEMAS))}: run the newer imgstor",
                             path=self.path)
        if type(schema) is not int or schema not in READS_SCHEMAS:
            raise self._damaged(f"schema {schema!r}, not one of "
                                f"{', '.join(map(str, READS_SCHEMAS))}")
        return raw

    def _build(self, raw: dict, *, journal: bool = False) -> State:
        """The State of a decoded state file (with its journal applied: ``journal``),
        migrated from an older schema."""
        schema = raw["schema"]
        try:
            if schema != SCHEMA:
                raw = migrate(raw)
            return State.from_dict(raw)
        except StateError as e:
            raise self._damaged(e.message, journal=journal) from None

    # ---- writing ----
    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, yield a view of the state, commit what changed unless the body raised;
        returns once it is durable."""
        with self._locked():
            with _no_gc():
                view = self._memory.begin()
            yield view
            seq = self._memory.commit(view)
        self._memory.wait(seq)

    @contextlib.contextmanager
    def preview(self) -> Iterator[State]:
        """A transaction's view without the lock whose changes are dropped (dry runs)."""
        from imgstor.state.journal import view_of
        yield view_of(self.read())

    def fold(self, *, timeout: float | None = None) -> bool:
        """Fold the journal into the state file (under the lock), if there is one: the
        file is then whole by itself.  True if there was a journal."""
        if not os.path.exists(self.journal_path):
            return False
        with self._locked(timeout=timeout):
            self._memory.refresh(locked=True)
            if not os.path.exists(self.journal_path):
                return False
            self._memory.fold()
            return True

    def _ensure_dir(self) -> None:
        d = os.path.dirname(self.path)
        if not os.path.isdir(d):
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
            except OSError as e:
                raise StateError(f"cannot create state directory {d}: {e.strerror}") from None
        st = os.stat(d)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StateError(f"state directory {d} must be owned by uid {os.geteuid()} and "
                             f"not writable by group or others (mode {st.st_mode & 0o777:o}); "
                             "imgstor will not write its state there")

    @contextlib.contextmanager
    def _locked(self, *, timeout: float | None = None) -> Iterator[None]:
        import threading  # lazy, as filelock: read-only commands never need them
        self._ensure_dir()
        if self._tlock is None:
            self._tlock = threading.Lock()
        wait = self.lock_timeout if timeout is None else timeout
        # The threads of a batch queue here, handing over at once, not in filelock's
        # polling loop; the file lock is between processes.
        if not self._tlock.acquire(timeout=wait):
            raise LockTimeout(f"state store {self.path} is locked by {self._holder_text()}; "
                              f"waited {wait:g}s", path=self.path) from None
        try:
            with self._file_locked(wait):
                yield
        finally:
            self._tlock.release()

    @contextlib.contextmanager
    def _file_locked(self, wait: float) -> Iterator[None]:
        import filelock
        lock = filelock.FileLock(self.lock_path, timeout=wait, mode=0o600,
                                 poll_interval=0.005)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockTimeout(f"state store {self.path} is locked by {self._holder_text()}; "
                              f"waited {wait:g}s", path=self.path) from None
        try:
            self._write_holder()
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(self.holder_path)
        finally:
            lock.release()

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "cmd": " ".join(sys.argv), "host": this_host(),
                "since": time.time()}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.holder_path)          # ours to replace: we hold the lock
        fd = os.open(self.holder_path,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)

    def _holder_text(self) -> str:
        try:
            with open(self.holder_path) as f:
                h = json.load(f)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
            return f"pid {h['pid']} ({h['cmd']}) on {h['host']} since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def _write(self, state: State) -> None:
        from imgstor.state.journal import dump
        state.schema = SCHEMA
        # State.to_dict orders vms and volumes naturally (readers rely on it).
        self._replace(dump(state))

    def _replace(self, data: bytes) -> None:
        """The state file made ``data`` (under the lock), fsynced."""
        # Under the lock any other temp file is left over from a killed writer.
        import glob
        for stale in glob.glob(glob.escape(self.path) + ".tmp-*"):
            with contextlib.suppress(OSError):
                os.unlink(stale)
        atomicfile.replace(self.path, data, mode=0o600,
                           before_replace=self._before_replace)

    def replace_all(self, state: State, *, force: bool = False) -> str | None:
        """Write STATE as the whole file (``imgstor rebuild``), under the lock.  An existing
        file is refused (Conflict) unless ``force``; then it is copied first to
        ``<path>.before-rebuild-<time>`` (0600), whose name is returned."""
        from imgstor.errors import Conflict
        with self._locked():
            kept = None
            if os.path.lexists(self.path):
                if not force:
                    raise Conflict(f"state file {self.path} exists: imgstor rebuild "
                                   "replaces it only with --force (the old one is kept "
                                   "beside it)", path=self.path)
                kept = f"{self.path}.before-rebuild-{time.strftime('%Y%m%d-%H%M%S')}"
                with open(self.path, "rb") as f:
                    old = f.read()
                atomicfile.replace(kept, old, mode=0o600)
                if os.path.exists(self.journal_path):       # its transactions, kept too
                    with open(self.journal_path, "rb") as f:
                        atomicfile.replace(kept + ".journal", f.read(), mode=0o600)
            self._memory.forget()
            self._write(state)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_path)
            return kept

    # ---- busy markers ----
    def acquire_busy(self, key: str, op: str, *,
                     create: Callable[[], Volume] | None = None,
                     update: Callable[[State, Volume], None] | None = None) -> Volume:
        """Mark volume ``key`` busy with ``op`` for this process; return the volume.

        A live marker (this host: the pid runs, is no zombie, has the recorded start time;
        another host: always, we cannot check) is a ``BusyError``; a stale one of this host
        is taken over with a warning.  A missing volume is created with ``create()`` or is
        ``NotFound``.  ``update(state, volume)`` runs in the same transaction once the
        marker is taken (checks against the whole store, an intent record); if it raises,
        nothing is written."""
        me = this_host()
        with self.transaction() as st:
            vol = st.volumes.get(key)
            if vol is None:
                if create is None:
                    raise NotFound(f"no volume {key} in the state store")
                vol = st.volumes[key] = create()
            b = vol.busy
            if b is not None:
                if b.host != me or pid_alive(b.pid, b.starttime):
                    raise BusyError(self.busy_message(key, b), key=key, pid=b.pid)
                print(f"warning: {key}: taking over stale busy marker ({b.op} by pid "
                      f"{b.pid} on {b.host}, no longer running)", file=sys.stderr)
            vol.busy = Busy(op=op, pid=os.getpid(), host=me, since=time.time(),
                            starttime=proc_starttime(os.getpid()))
            if update is not None:
                update(st, vol)
            return vol

    @staticmethod
    def busy_message(key: str, b: Busy) -> str:
        nas, _, vol = key.partition("/")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.since))
        return (f"{key} is busy: {b.op} by pid {b.pid} on {b.host} since {since}; if that "
                f"process is gone, run `imgstorageadmin unbusy {nas} {vol}`")

    def release_busy(self, key: str, pid: int | None = None) -> bool:
        """Clear the busy marker of ``key`` if ``pid`` (default: this process) holds it."""
        pid = os.getpid() if pid is None else pid
        seen = self.read().volumes.get(key)
        if seen is None or seen.busy is None or seen.busy.pid != pid:
            return False      # cleared already (with the outcome): no lock, no write
        with self.transaction() as st:
            vol = st.volumes.get(key)
            if vol is None or vol.busy is None or vol.busy.pid != pid \
                    or vol.busy.host != this_host():
                return False
            vol.busy = None
            return True

    def unbusy(self, key: str) -> Busy | None:
        """Clear the busy marker of ``key`` whoever holds it (admin); return the old one."""
        with self.transaction() as st:
            vol = st.volumes.get(key)
            if vol is None:
                raise NotFound(f"no volume {key} in the state store {self.path}")
            old, vol.busy = vol.busy, None
            return old

    @contextlib.contextmanager
    def busy(self, key: str, op: str, *,
             create: Callable[[], Volume] | None = None,
             update: Callable[[State, Volume], None] | None = None) -> Iterator[Volume]:
        """``acquire_busy`` on entry, ``release_busy`` on exit (also on an exception).
        A process killed or leaving with ``os._exit`` leaves a stale marker that the next
        ``acquire_busy`` on this host takes over."""
        vol = self.acquire_busy(key, op, create=create, update=update)
        try:
            yield vol
        finally:
            self.release_busy(key)
