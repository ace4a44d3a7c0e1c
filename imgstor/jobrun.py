"""What a job's phases get from the monitor that runs them: ``Runtime``.

* ``rt.watch``: the job's status reads (a copy's progress on its sending host, an
  overlay's merge on its node).  A monitor runs many jobs; ``Watch`` reads, per host, the
  status of all of that host's jobs that wait in one node step (``jobs.watch``) per
  tick, instead of one ``copy.status`` per job per second.  Each read is asked for with a
  delay (``poll`` .. ``poll_max``: longer while a copy has long to go), and waiting for it
  notices the job's stop flag (``Stopped``).
* ``rt.bound(what)``: a ``Bound`` -- a waiting phase feeds it what it saw; when that has
  not changed for the policy's ``stall`` seconds the phase fails with the reason (zettarepl's
  ReplicationMonitor: the same receive token seen too long is a failure, not a wait).
* ``rt.pause`` / ``rt.check``: sleeping and checking without missing a stop.
* ``rt.log`` / ``rt.progress``: the job's log and progress files.
* ``rt.commit(fn)`` / ``rt.read()``: the store, shared by the monitor's jobs.  A change is
  a function of the State; ``Committer`` applies those that arrive while a transaction
  runs together in the next one (group commit): a hundred jobs advancing at once cost a
  few lock-and-journal-line rounds, not a hundred.  ``read`` is the store's one in-memory
  state of this process (``Store.read``: parsed once, brought up to date from the
  journal; read only), shared by the jobs.

The clock and the sleep are injected (unit tests run a monitor on a fake clock); so is
the watch (``Watch(..., threaded=False)`` reads at once, one request at a time).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from imgstor import jobs as jobmod
from imgstor.errors import ImgstorError, LockTimeout, StepError, from_wire
from imgstor.remote.protocol import Facts

__all__ = ["Stopped", "Runtime", "Watch", "Bound", "Committer", "Phase", "describe"]


# A phase: ``fn(ctx, job, rt)`` ensures its phase's result (idempotent: a re-run after a
# kill anywhere inside it converges).
Phase = Callable[[Any, Any, "Runtime"], None]


class Stopped(Exception):
    """The job's stop flag is set (an unmap replaced it): its monitor lets it go."""


@dataclass
class _Req:
    host: str
    kind: str                     # "copies" | "overlays"
    key: tuple
    due: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None


def _name(kind: str, key: tuple) -> str:
    return ":".join(key) if kind == "copies" else "/".join(key)


class Watch:
    """Batched status reads, one ``jobs.watch`` node step per host per tick.

    ``copy(host, to_alias, to_dataset, delay=s)`` and ``overlay(host, driver, pool, vol,
    delay=s)`` return the facts ``copy.status`` / ``overlay.status`` would, read no sooner
    than ``delay`` seconds from now; a read of a host takes along every request for that
    host due within ``slack`` seconds.  Threaded: one poller thread per process."""

    def __init__(self, cluster: Any, *, threaded: bool = True, slack: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cluster, self.threaded, self.slack = cluster, threaded, slack
        self.clock, self.sleep = clock, sleep
        self._cond = threading.Condition()
        self._pending: list[_Req] = []
        self._thread: threading.Thread | None = None
        self.reads = 0                        # node steps issued (tests, bench)

    def copy(self, host: str, to_alias: str, to_dataset: str, *, delay: float,
             stopped: Callable[[], bool] = lambda: False) -> dict:
        return self._ask(host, "copies", (to_alias, to_dataset), delay, stopped)

    def overlay(self, host: str, driver: str, pool: str, vol: str, *, delay: float,
                stopped: Callable[[], bool] = lambda: False) -> dict:
        return self._ask(host, "overlays", (driver, pool, vol), delay, stopped)

    def _ask(self, host: str, kind: str, key: tuple, delay: float,
             stopped: Callable[[], bool]) -> dict:
        req = _Req(host, kind, key, self.clock() + max(0.0, delay))
        if not self.threaded:
            end = req.due
            while self.clock() < end:
                if stopped():
                    raise Stopped()
                self.sleep(min(1.0, end - self.clock()))
            self._read(host, [req])
        else:
            with self._cond:
                self._pending.append(req)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True,
                                                    name="imgstor-watch")
                    self._thread.start()
                self._cond.notify()
            while not req.done.wait(0.5):
                if stopped():
                    with self._cond:
                        if req in self._pending:
                            self._pending.remove(req)
                            raise Stopped()
        if stopped():
            raise Stopped()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                now = self.clock()
                first = min(r.due for r in self._pending)
                if first > now:
                    self._cond.wait(first - now)
                    continue
                hosts = {r.host for r in self._pending if r.due <= now}
                batch = [r for r in self._pending
                         if r.host in hosts and r.due <= now + self.slack]
                self._pending = [r for r in self._pending if r not in batch]
            by_host: dict[str, list[_Req]] = {}
            for r in batch:
                by_host.setdefault(r.host, []).append(r)
            try:
                if len(by_host) == 1:          # no thread pool for one host
                    for h, reqs in by_host.items():
                        self._read(h, reqs)
                else:
                    self.cluster.parallel(list(by_host), lambda h: self._read(h, by_host[h]))
            except BaseException as e:          # noqa: BLE001 - never leave a waiter hanging
                for r in batch:
                    if not r.done.is_set():
                        r.error = e
                        r.done.set()

    def _read(self, host: str, reqs: list[_Req]) -> None:
        """One ``jobs.watch`` on HOST for REQS; each request gets its answer or error."""
        args: dict[str, list] = {"copies": [], "overlays": []}
        for r in reqs:
            if list(r.key) not in args[r.kind]:
                args[r.kind].append(list(r.key))
        try:
            self.reads += 1
            facts = self.cluster.step(host, "jobs.watch", **args).facts
            for r in reqs:
                got = (facts.get(r.kind) or {}).get(_name(r.kind, r.key))
                if not isinstance(got, dict):
                    r.error = StepError(f"{host}: jobs.watch did not answer for "
                                        f"{_name(r.kind, r.key)}")
                elif isinstance(got.get("error"), dict):
                    r.error = from_wire(got["error"], host=host)
                else:           # typed: a misspelt fact is an error, not a silent None
                    r.result = Facts("copy.status" if r.kind == "copies"
                                     else "overlay.status", got)
        except Exception as e:                  # noqa: BLE001 - the job records it
            for r in reqs:
                r.error = e
        finally:
            for r in reqs:
                r.done.set()


@dataclass
class _Commit:
    fn: Callable[[Any], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Committer:
    """Group commit for the threads of one process: ``commit(fn)`` runs ``fn(state)`` in
    a store transaction and returns its result.  The first caller to find no transaction
    running leads: it runs one transaction for everything queued so far, then for what
    queued meanwhile, until the queue is empty; the others wait for theirs.  A function
    that raises aborts its group (nothing written) and each function of the group runs
    again alone, so it fails alone; keep the functions free of side effects beyond the
    State (do those after the commit)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._queue: list[_Commit] = []
        self._leading = False
        self.transactions = 0                 # store transactions run (tests, bench)
        self.commits = 0                      # functions committed

    def __call__(self, fn: Callable[[Any], Any]) -> Any:
        c = _Commit(fn)
        with self._lock:
            self._queue.append(c)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        c.done.wait()
        if c.error is not None:
            raise c.error
        return c.result

    def _lead(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leading = False
                    return
            try:
                self._run(batch)
            except BaseException as e:        # noqa: BLE001 - never leave a waiter hanging
                for c in batch:
                    if not c.done.is_set():
                        c.error = e
                        c.done.set()
                if not isinstance(e, Exception):
                    with self._lock:
                        self._leading = False
                    raise

    def _run(self, batch: list[_Commit]) -> None:
        try:
            self.transactions += 1
            with self.store.transaction() as st:
                results = [c.fn(st) for c in batch]
        except Exception as e:                # noqa: BLE001 - given to its caller
            if len(batch) > 1 and not isinstance(e, LockTimeout):
                for c in batch:
                    self._run([c])
                return
            for c in batch:
                c.error = e
                c.done.set()
            return
        self.commits += len(batch)
        for c, r in zip(batch, results):
            c.result = r
            c.done.set()


class Bound:
    """A waiting phase's bound: ``saw(signature, detail)`` each time it reads its status;
    the same signature for longer than ``limit`` seconds raises StepError (``what``: no
    progress for N s, and ``detail``)."""

    def __init__(self, what: str, limit: float, clock: Callable[[], float]) -> None:
        self.what, self.limit, self.clock = what, limit, clock
        self.last: Any = object()
        self.since = clock()

    def reset(self) -> None:
        self.last, self.since = object(), self.clock()

    def saw(self, signature: Any, detail: str = "") -> None:
        now = self.clock()
        if signature != self.last:
            self.last, self.since = signature, now
        elif now - self.since > self.limit:
            raise StepError(f"{self.what}: no progress for {now - self.since:.0f}s (bound "
                            f"{self.limit:g}s, [jobs] stall_timeout)"
                            + (f": {detail}" if detail else ""))


@dataclass
class Runtime:
    """A monitor's services to the phases it runs (see the module docstring)."""
    store: Any
    policy: Any                                    # config.JobPolicy
    watch: Any                                     # Watch
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    committer: Committer | None = None            # default: a transaction each

    def commit(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(state)`` in a store transaction (the monitor's group commit)."""
        if self.committer is not None:
            return self.committer(fn)
        with self.store.transaction() as st:
            return fn(st)

    def read(self) -> Any:
        """The state, for reading only (the process's one in-memory state: Store.read)."""
        return self.store.read()

    def stopped(self, job_id: str) -> bool:
        return jobmod.stop_requested(self.store, job_id)

    def check(self, job_id: str) -> None:
        if self.stopped(job_id):
            raise Stopped()

    def pause(self, job_id: str, seconds: float) -> None:
        """Sleep ``seconds`` (in slices of at most one), raising Stopped on a stop."""
        end = self.clock() + seconds
        while True:
            self.check(job_id)
            left = end - self.clock()
            if left <= 0:
                return
            self.sleep(min(1.0, left))

    def bound(self, what: str) -> Bound:
        return Bound(what, self.policy.stall, self.clock)

    def copy_status(self, job_id: str, host: str, to_alias: str, to_dataset: str, *,
                    delay: float) -> dict:
        return self.watch.copy(host, to_alias, to_dataset, delay=delay,
                               stopped=lambda: self.stopped(job_id))

    def overlay_status(self, job_id: str, host: str, driver: str, pool: str, vol: str, *,
                       delay: float) -> dict:
        return self.watch.overlay(host, driver, pool, vol, delay=delay,
                                  stopped=lambda: self.stopped(job_id))

    def next_delay(self, facts: Any) -> float:
        """How long to wait before a copy's next status read: ``poll``, longer (up to
        ``poll_max``) while it has long to go (a tenth of its remaining time, at the rate
        it has made so far: the node's progress has bytes and seconds while it runs)."""
        p = self.policy
        done, total = facts.get("bytes_done"), facts.get("bytes_total")
        rate, secs = facts.get("rate"), facts.get("seconds")
        if not isinstance(rate, (int, float)) and isinstance(done, (int, float)) \
                and isinstance(secs, (int, float)) and secs > 0:
            rate = done / secs
        if not (isinstance(total, (int, float)) and isinstance(done, (int, float))
                and isinstance(rate, (int, float)) and rate > 0 and total > done):
            return float(p.poll)
        return float(min(p.poll_max, max(p.poll, (total - done) / rate / 10)))

    def log(self, job_id: str, text: str) -> None:
        jobmod.log(self.store, job_id, text)

    def progress(self, job_id: str, **facts: Any) -> None:
        jobmod.write_progress(self.store, job_id, **facts)


def describe(e: BaseException) -> str:
    """A failure as ``last_error`` shows it: an ImgstorError's message; anything else (a
    bug: a node step's traceback, a RuntimeError) its type and first line."""
    if isinstance(e, ImgstorError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:500]
