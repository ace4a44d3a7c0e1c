"""Run jobs on a thread pool, in parallel except where they share a resource.

Each job names the resources it touches (``{"vol:nas-0-0/vm1-vol", "vm:vm1"}``); a job
starts only when every earlier job (in list order) that shares one of its resources has
finished, so jobs on the same volume run in list order and jobs on different volumes run
at once.  ``keys=None`` is a barrier: it waits for every earlier job, and every later job
waits for it (commands whose effect on other items is not known: attributes, lists).

A job's exception is its result (``run`` never raises for one): a failed job does not stop
the jobs that wait for it, as a shell script goes on to its next line.
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Sequence

__all__ = ["Job", "dependencies", "run", "DEFAULT_JOBS"]

DEFAULT_JOBS = 8        # items at once: the frontend waits on hosts, not on its CPU


class Job:
    __slots__ = ("keys", "fn")

    def __init__(self, keys: Iterable[str] | None, fn: Callable[[], Any]) -> None:
        self.keys = None if keys is None else frozenset(keys)
        self.fn = fn


def dependencies(keys: Sequence[frozenset[str] | None]) -> list[set[int]]:
    """For each job, the earlier jobs it must wait for (the last one per shared key, and
    the last barrier; a barrier: every earlier job still unordered)."""
    deps: list[set[int]] = []
    last: dict[str, int] = {}          # key -> last job that touched it
    barrier: int | None = None
    since_barrier: list[int] = []      # jobs after the last barrier
    for i, ks in enumerate(keys):
        d: set[int] = set()
        if ks is None:
            d.update(since_barrier)
            if barrier is not None:
                d.add(barrier)
            barrier, since_barrier, last = i, [], {}
        else:
            if barrier is not None:
                d.add(barrier)
            d.update(last[k] for k in ks if k in last)
            last.update((k, i) for k in ks)
            since_barrier.append(i)
        deps.append(d)
    return deps


def run(jobs: Sequence[Job], *, workers: int = DEFAULT_JOBS,
        on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Each job's return value, or the exception it raised, in list order.  ``on_done(i,
    result)`` is called in the caller's thread as each job finishes (``batch`` prints its
    line then)."""
    n = len(jobs)
    results: list[Any] = [None] * n
    if not n:
        return results
    deps = dependencies([j.keys for j in jobs])
    waiting_on = [len(d) for d in deps]
    after: list[list[int]] = [[] for _ in range(n)]
    for i, d in enumerate(deps):
        for j in d:
            after[j].append(i)

    def call(i: int) -> Any:
        try:
            return jobs[i].fn()
        except Exception as e:          # noqa: BLE001 - the job's result, reported by it
            return e

    import heapq
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running: dict[Future, int] = {}
        ready = [i for i in range(n) if not waiting_on[i]]       # a heap: file order first
        while ready or running:
            # no more submitted than there are workers: wait() looks at every future
            # it is given, so 10,000 ready items submitted at once made a batch quadratic
            while ready and len(running) < workers:
                i = heapq.heappop(ready)
                running[pool.submit(call, i)] = i
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=running.__getitem__):
                i = running.pop(f)
                results[i] = f.result()
                if on_done is not None:
                    on_done(i, results[i])
                for k in after[i]:
                    waiting_on[k] -= 1
                    if not waiting_on[k]:
                        heapq.heappush(ready, k)
    return results
