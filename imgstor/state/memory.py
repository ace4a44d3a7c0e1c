"""One in-memory state per command (per ``Store``), kept current with the state file and
its journal (``journal.py``), and the group commit (issue 25).

* Loaded once: the state file is parsed once, its journal's transactions applied.  Every
  later read or transaction first compares the file's identity (device, inode, size,
  mtime, ctime) with the one it was loaded from and reads only what was appended to the
  journal since (another process's transactions); a changed file (a fold elsewhere, a
  hand edit) is loaded again.
* A transaction works on a ``journal.View`` (entries copied when first touched) and
  commits what it changed as one journal line, written under the lock; the shared state
  takes a copy of each changed record.  Its ``fdatasync`` comes after the lock is released
  and is shared: one thread syncs for every line written before it started, the others
  wait for it (``wait``), so the transactions of a batch that finish together cost one
  sync.  ``Store.transaction`` returns only once its line is durable.
* A fold writes the whole state file (atomic replace, fsynced) and removes the journal:
  when the journal outgrows the state file (``FOLD_MIN`` at least), when the file does
  not exist yet or is of an older schema, and on request (``Store.fold``: the end of a
  batch, ``refresh``, ``imgstorageadmin fold``).
* ``snapshot`` (``Store.read``) shares the loaded records with the caller, read-only; a
  section handed out is copied before a later commit changes it (copy on write), so a
  snapshot never changes under its reader.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import sys
import time
from collections import Counter

from imgstor.errors import StateError
from imgstor.state import journal as jn
from imgstor.state.model import SCHEMA, State

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Protocol

    class StoreFiles(Protocol):
        """What a ``Memory`` uses of its ``state.store.Store`` (which imports this module:
        it is not imported back, tests/unit/test_imports.py)."""
        path: str
        journal_path: str

        def _read_state(self) -> tuple[bytes | None, tuple | None]: ...
        def _decode(self, data: bytes) -> dict: ...
        def _build(self, raw: dict, *, journal: bool = False) -> State: ...
        def _replace(self, data: bytes) -> None: ...

__all__ = ["Memory", "FOLD_MIN"]

FOLD_MIN = 256 << 10          # a journal this small is never folded for its size alone


def _ident(st: os.stat_result | None) -> tuple | None:
    if st is None:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class _GroupSync:
    """Lines written (``written``) and made durable (``synced``), counted; one thread at a
    time syncs for everything written before it started."""

    def __init__(self) -> None:
        import threading
        self.cond = threading.Condition()
        self.written = 0
        self.synced = 0
        self.syncing = False

    def wrote(self) -> int:
        with self.cond:
            self.written += 1
            return self.written

    def all_durable(self) -> None:
        with self.cond:
            self.synced = self.written
            self.cond.notify_all()

    def wait(self, seq: int, sync) -> None:
        with self.cond:
            while self.synced < seq:
                if self.syncing:
                    self.cond.wait()
                    continue
                self.syncing = True
                target = self.written
                self.cond.release()
                ok = False
                try:
                    sync()
                    ok = True
                finally:
                    self.cond.acquire()
                    self.syncing = False
                    if ok:
                        self.synced = max(self.synced, target)
                    self.cond.notify_all()


class Memory:
    """The in-memory state of one ``Store``; see the module docstring."""

    def __init__(self, store: "StoreFiles") -> None:
        self.store = store
        self.path = store.path
        self.jpath = store.journal_path
        self.mem: State | None = None
        self.ident: tuple | None = None       # the state file the memory was loaded from
        self.data: bytes | None = None        # its bytes (a new journal's header names them)
        self.file_schema: int | None = None   # its schema (an older one is folded, migrated)
        self.base: list[int] | None = None    # crc_of(data), once computed
        self.jident: tuple | None = None      # (dev, ino) of the journal applied, if any
        self.jpos = 0                         # bytes of it applied
        self.jfd: int | None = None           # open for appends (under the lock)
        self.jnew = False                     # made by us, its directory entry not synced
        self.shared: set[str] = set()         # sections a snapshot holds: copy on write
        self.unsorted: set[str] = set()       # sections with keys out of the file's order
        self.lock = _thread.RLock()           # the fields above, between threads
        self.jlock = _thread.allocate_lock()  # jfd and jnew, for the syncing thread
        self._sync: _GroupSync | None = None
        self.stats: Counter[str] = Counter()  # counts for tests and bench (never times)

    # ---- reading ----
    def snapshot(self) -> State:
        with self.lock:
            self.refresh(locked=False)
            mem = self.mem
            assert mem is not None
            for s in self.unsorted:
                setattr(mem, s, jn.sort_section(s, getattr(mem, s)))
            self.unsorted.clear()
            self.shared.update(jn.SECTIONS)
            return State(**{s: getattr(mem, s) for s in jn.SECTIONS}, schema=mem.schema)

    def loaded(self) -> bool:
        return self.mem is not None

    def forget(self) -> None:
        with self.lock:
            self._close_journal()
            self.mem = self.ident = self.data = self.base = self.jident = None
            self.jpos = 0
            self.shared.clear()
            self.unsorted.clear()

    def refresh(self, *, locked: bool) -> None:
        """Bring the memory up to the files: nothing to do, the journal's new lines, or a
        full load.  ``locked``: the caller holds the store's lock (a torn line may be cut
        off, a stale journal removed or set aside)."""
        if self.mem is not None and _ident(_stat(self.path)) == self.ident \
                and self._catch_up(locked=locked):
            return
        self._load(locked=locked)

    def _read(self, path: str) -> tuple[bytes | None, tuple | None]:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), (st.st_dev, st.st_ino)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            raise StateError(f"journal {path}: cannot read: {e.strerror}") from None

    def _load(self, *, locked: bool) -> None:
        for _ in range(20):
            data, ident = self.store._read_state()
            jdata, jident = self._read(self.jpath)
            # a fold between the two reads replaced the file: read both again
            if jdata is None or _ident(_stat(self.path)) == ident:
                break
        else:
            raise StateError(f"state file {self.path} keeps changing while it is read")
        self.stats["loads"] += 1
        self.stats["parsed_bytes"] += len(data or b"") + len(jdata or b"")
        raw = None if data is None else self.store._decode(data)
        file_schema = None if raw is None else raw.get("schema")
        unsorted: set[str] = set()
        applied = None
        base = None
        jpos = 0
        if jdata is not None:
            lines, good = jn.read_lines(jdata)
            base = jn.crc_of(data) if data is not None else None
            verdict = _judge(lines, base)
            if verdict == "apply" and raw is not None:
                try:
                    for ops in jn.records_of(lines, file_schema):
                        jn.apply_raw(raw, ops, unsorted)
                except StateError as e:
                    raise StateError(f"journal {self.jpath}: {e.message}; imgstor will not "
                                     "overwrite it") from None
                applied = jident
                if good < len(jdata) and locked:
                    self._truncate(good)
                jpos = good
            else:
                self._stale(verdict, locked=locked)
        state = State() if raw is None else self.store._build(raw, journal=applied is not None)
        self._close_journal()
        self.mem, self.ident, self.data, self.base = state, ident, data, base
        self.file_schema = file_schema
        self.jident = applied
        self.jpos = jpos
        self.unsorted = unsorted
        self.shared = set()

    def _stale(self, verdict: str, *, locked: bool) -> None:
        """A journal that does not extend the state file: already folded into it (a fold
        killed before it removed the journal), empty, or foreign (the file was edited or
        restored by hand: the file wins, the journal is set aside)."""
        if verdict == "foreign":
            aside = f"{self.jpath}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
            what = f"set aside as {aside}" if locked else "ignored"
            print(f"imgstor: warning: {self.jpath} does not extend {self.path} (edited or "
                  f"restored by hand?): the state file counts, the journal's transactions "
                  f"are {what}", file=sys.stderr)
            if locked:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.jpath, aside)
        elif locked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.jpath)

    def _catch_up(self, *, locked: bool) -> bool:
        """Apply what was appended to the journal since the memory was loaded; False if
        that is not possible (a new journal, a shrunk one, a damaged line): load again."""
        st = _stat(self.jpath)
        if st is None:
            return self.jident is None
        jid = (st.st_dev, st.st_ino)
        if self.jident is None:
            start = 0                 # another process began a journal over our file
        elif jid != self.jident or st.st_size < self.jpos:
            return False
        else:
            start = self.jpos
        if st.st_size == start and self.jident is not None:
            return True
        try:
            with open(self.jpath, "rb") as f:
                fst = os.fstat(f.fileno())
                if (fst.st_dev, fst.st_ino) != jid:
                    return False
                f.seek(start)
                chunk = f.read()
        except FileNotFoundError:
            return False
        lines, good = jn.read_lines(chunk)
        self.stats["parsed_bytes"] += len(chunk)
        if start == 0:
            if not lines or _judge(lines, self._base()) != "apply":
                return False
        try:
            self._apply(op for ops in jn.records_of(lines, SCHEMA) for op in ops)
        except StateError:
            return False
        self.jident = jid
        self.jpos = start + good
        if good < len(chunk) and locked:
            self._truncate(self.jpos)
        return True

    def _apply(self, ops: Any) -> None:
        """Journal operations (section, key, record dict or None) into the memory."""
        last: dict[str, dict[str, Any]] = {}
        for s, k, rec in ops:
            last.setdefault(s, {})[k] = rec
        if not last:
            return
        kept = {s: {k: r for k, r in d.items() if r is not None} for s, d in last.items()}
        parsed = State.from_dict({"schema": SCHEMA, **kept})
        for s, d in last.items():
            sect = self._writable(s)
            new = getattr(parsed, s)
            for k, rec in d.items():
                if rec is None:
                    sect.pop(k, None)
                else:
                    self._put(s, sect, k, new[k])

    def _put(self, s: str, sect: dict, k: str, rec: Any) -> None:
        if k not in sect and sect and s not in self.unsorted \
                and jn.order(s, k) < jn.order(s, next(reversed(sect))):
            self.unsorted.add(s)
        sect[k] = rec

    def _writable(self, s: str) -> dict:
        assert self.mem is not None
        if s in self.shared:
            setattr(self.mem, s, dict(getattr(self.mem, s)))
            self.shared.discard(s)
        return getattr(self.mem, s)

    def _base(self) -> list[int] | None:
        if self.base is None and self.data is not None:
            self.base = jn.crc_of(self.data)
        return self.base

    def _truncate(self, size: int) -> None:
        """Cut off a line a killed writer left half-written (under the lock)."""
        fd = os.open(self.jpath, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        self.stats["torn_lines_cut"] += 1

    # ---- writing (the caller holds the store's lock) ----
    def begin(self) -> State:
        with self.lock:
            self.refresh(locked=True)
            assert self.mem is not None
            return jn.view_of(self.mem)

    def commit(self, view: State) -> int | None:
        """Write what the transaction changed; the sequence number to ``wait`` for, or
        None (nothing changed, or a fold made it durable already)."""
        ops = jn.changes(view)
        if not ops:
            return None
        with self.lock:
            assert self.mem is not None
            wire = [[s, k, None if r is None else r.to_dict()] for s, k, r in ops]
            must_fold = self.ident is None or self.file_schema != SCHEMA
            if not must_fold:
                self._append(jn.line({"schema": SCHEMA, "ops": wire}))
            for s, k, r in ops:
                sect = self._writable(s)
                if r is None:
                    sect.pop(k, None)
                else:
                    self._put(s, sect, k, jn.clone(r))
            self.stats["commits"] += 1
            if must_fold or self.jpos > max(FOLD_MIN, self.ident[2] if self.ident else 0):
                self.fold()
                return None
            return self.sync.wrote()

    @property
    def sync(self) -> _GroupSync:
        if self._sync is None:
            self._sync = _GroupSync()
        return self._sync

    def _append(self, data: bytes) -> None:
        with self.jlock:
            if self.jfd is None:
                if self.jident is not None:
                    fd = os.open(self.jpath, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW
                                 | os.O_CLOEXEC)
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) != self.jident or st.st_size != self.jpos:
                        os.close(fd)
                        raise StateError(f"journal {self.jpath} changed under the lock")
                else:
                    base = self._base()
                    assert base is not None
                    try:
                        fd = os.open(self.jpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    except OSError as e:
                        raise StateError(f"cannot create the journal {self.jpath}: "
                                         f"{e.strerror}") from None
                    st = os.fstat(fd)
                    self.jident, self.jpos, self.jnew = (st.st_dev, st.st_ino), 0, True
                    data = jn.header(base) + data
                self.jfd = fd
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.jfd, view)
                    view = view[n:]
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.jfd, self.jpos)
                raise StateError(f"cannot write the journal {self.jpath}: {e.strerror}") \
                    from None
            self.jpos += len(data)
            self.stats["journal_bytes"] += len(data)
            self.stats["journal_lines"] += 1

    def wait(self, seq: int | None) -> None:
        """Return once line ``seq`` is durable (one fdatasync for the lines written
        together)."""
        if seq is not None:
            self.sync.wait(seq, self._sync_journal)

    def _sync_journal(self) -> None:
        with self.jlock:
            fd = None if self.jfd is None else os.dup(self.jfd)
            newdir, self.jnew = self.jnew, False
        if fd is None:
            return                    # folded meanwhile: the state file is durable
        try:
            os.fdatasync(fd)
            self.stats["fsyncs"] += 1
            if newdir:
                _fsync_dir(self.jpath)
        except OSError as e:
            raise StateError(f"cannot sync the journal {self.jpath}: {e.strerror}") from None
        finally:
            os.close(fd)

    def fold(self) -> None:
        """Write the whole state file from memory and remove the journal (under the
        store's lock)."""
        with self.lock:
            assert self.mem is not None
            self.mem.schema = SCHEMA
            data = jn.dump(self.mem)
            base = jn.crc_of(data)
            if self.jfd is not None:
                # names the file the journal goes into: if this fold is killed after the
                # replace, the journal is known to be in it
                with self.jlock:
                    os.write(self.jfd, jn.line({"folded": base}))
            self.store._replace(data)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.jpath)
            self._close_journal()
            self.ident = _ident(_stat(self.path))
            self.data, self.base, self.jident, self.jpos = data, base, None, 0
            self.file_schema = SCHEMA
            self.stats["folds"] += 1
            self.stats["fsyncs"] += 1
            self.stats["state_bytes"] += len(data)
        if self._sync is not None:
            self._sync.all_durable()

    def _close_journal(self) -> None:
        with self.jlock:
            if self.jfd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.jfd)
                self.jfd = None
            self.jnew = False


def _judge(lines: list[dict], base: list[int] | None) -> str:
    """What a journal is to the state file whose crc_of is ``base``."""
    if not lines or "imgstor_journal" not in lines[0]:
        return "empty"                # a writer killed before its header was whole
    if base is not None and lines[0].get("base") == base:
        return "apply"
    folded = [ln["folded"] for ln in lines if "folded" in ln]
    if base is not None and folded and folded[-1] == base:
        return "folded"
    return "foreign"


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
