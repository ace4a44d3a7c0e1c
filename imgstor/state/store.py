"""The locked JSON state store.

``with store.transaction() as st:`` takes ``<path>.lock`` (filelock), loads the file (a
missing file is an empty state; ``read()`` says so on stderr, with the path, once per
process: a wrong ``[state] path`` must not look like an empty cluster), yields a mutable
``State`` and, on normal exit, writes ``<path>.tmp-<pid>`` (0600), fsyncs it,
``os.replace``s it over the file and fsyncs the directory.  On an exception nothing is
written.  ``store.read()`` takes no lock: thanks to the rename a reader sees the old file
or the new one, never half of one.

Never hold the lock across a remote command: mark the volume busy (``store.busy(...)`` or
``acquire_busy``), leave the transaction, do the remote work, then re-open a transaction to
record the result.  The lock guards seconds of JSON work, the busy marker guards minutes of
remote work.

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
import threading
import time
from collections.abc import Callable, Iterator

from imgstor import atomicfile
from imgstor.errors import BusyError, LockTimeout, NotFound, StateError
from imgstor.remote import procfs
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
        # Test hook: called between writing the temp file and replacing the state file.
        self._before_replace: Callable[[str], None] | None = None
        self._last_read: bytes | None = None       # raw bytes of the last read()
        self._shared: tuple[tuple, State] | None = None   # read_shared's
        self._shared_lock = threading.Lock()
        self.quiet_missing = False    # refresh --quiet: a new install has no file yet

    # ---- reading ----
    def read(self) -> State:
        """The current state, without taking the lock; a missing file is an empty state,
        said on stderr (once per process and path)."""
        data = self._read_bytes()
        self._last_read = data
        if data is None:
            if not self.quiet_missing:
                _say_missing(self.path)
            return State()
        return self._parse(data)

    def read_shared(self) -> State:
        """The current state, parsed again only when the file changed since the last call
        (another inode, size or mtime: every write is a rename): many threads of one
        monitor reading between two writes parse it once.  The State is shared by all
        callers: read it, never change it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return State()
        except OSError as e:
            raise StateError(f"state file {self.path}: cannot read: {e.strerror}") from None
        try:
            s = os.fstat(fd)
            key = (s.st_ino, s.st_size, s.st_mtime_ns)
            with self._shared_lock:
                if self._shared is not None and self._shared[0] == key:
                    return self._shared[1]
                with os.fdopen(os.dup(fd), "rb") as f:
                    state = self._parse(f.read())
                self._shared = (key, state)
                return state
        finally:
            os.close(fd)

    def _read_bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"state file {self.path}: cannot read: {e.strerror}") from None

    # What State.to_dict writes first: the attrs section right after the schema.
    _ATTRS_AT = re.compile(rb'\A\{\s*"schema":\s*[0-9]+,\s*"attrs":\s*')

    def read_attrs(self) -> dict[str, HostAttrs]:
        """The ``attrs`` section alone (host -> the attributes `set host attr` set), for
        building the config every command uses.  Reads only that section when the file
        is laid out as imgstor writes it (attrs right after schema, or none at all), so a
        command on 10,000 VMs does not parse them twice; anything else gets a full read."""
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
            return self._parse_raw(data)

    def _damaged(self, what: str) -> StateError:
        return StateError(f"state file {self.path} is damaged: {what}.  imgstor will not "
                          "overwrite it: restore it from a backup, or move it aside and run "
                          "`imgstor rebuild` (it makes the state again from the hosts)",
                          path=self.path)

    def _parse_raw(self, data: bytes) -> State:
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
        try:
            if schema != SCHEMA:
                raw = migrate(raw)
            return State.from_dict(raw)
        except StateError as e:
            raise self._damaged(e.message) from None

    # ---- writing ----
    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, load, yield the state, write it back atomically unless the body raised."""
        with self._locked():
            # the bytes read here, not self._last_read: a batch's threads share this Store
            before = self._read_bytes()
            state = State() if before is None else self._parse(before)
            yield state
            self._write(state, unless=before)

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
    def _locked(self) -> Iterator[None]:
        import filelock  # lazy: read-only commands never need it
        self._ensure_dir()
        lock = filelock.FileLock(self.lock_path, timeout=self.lock_timeout, mode=0o600)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockTimeout(f"state store {self.path} is locked by {self._holder_text()}; "
                              f"waited {self.lock_timeout:g}s", path=self.path) from None
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

    def _write(self, state: State, *, unless: bytes | None = None) -> None:
        state.schema = SCHEMA
        # No sort_keys: State.to_dict orders vms and volumes naturally (readers rely on it).
        data = json.dumps(state.to_dict(), indent=1).encode() + b"\n"
        if unless is not None and data == unless:
            return            # nothing changed: no rewrite, no fsync
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
            self._write(state)
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
