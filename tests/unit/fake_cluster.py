"""A fake cluster for the workflows' unit tests: node steps answered by Python handlers,
every call recorded, on a fake clock.

``FakeCluster({"overlay.status": fn, …})``: ``step(host, name, **args)`` calls
``fn(host, **args)`` and returns its dict as the step's facts (typed like the real ones:
``StepResult.received``), or raises what it raises (an ImgstorError as a node's error, a
RuntimeError as ``transport.Cluster.step`` raises for a node bug).  A step without a
handler is an AssertionError naming it.  ``jobs.watch`` is answered from the handlers of
``copy.status`` and ``overlay.status``, as the node's step does.

``Clock``: ``now()`` and ``sleep(s)`` (which only moves ``now``), for ``Runtime`` and
``Watch``; ``slept`` keeps every sleep.
"""
from __future__ import annotations

from typing import Any, Callable

from imgstor.errors import ImgstorError
from imgstor.remote.protocol import StepResult


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += max(0.0, s)


class FakeCluster:
    def __init__(self, handlers: dict[str, Callable[..., Any]] | None = None) -> None:
        self.handlers = dict(handlers or {})
        self.calls: list[tuple[str, str, dict]] = []

    def names(self) -> list[str]:
        """The steps called, in order (``jobs.watch`` as the reads it answered)."""
        return [n for _, n, _ in self.calls]

    def step(self, host: str, name: str, /, **args: Any) -> StepResult:
        self.calls.append((host, name, args))
        if name == "jobs.watch":
            return StepResult.received(host, name, {"facts": self._watch(host, **args)})
        fn = self.handlers.get(name)
        if fn is None:
            raise AssertionError(f"unexpected node step {name} on {host} ({args})")
        facts = fn(host, **args)
        return StepResult.received(host, name, {"changed": True, "facts": facts or {}})

    def _watch(self, host: str, copies: list = (), overlays: list = ()) -> dict:
        out: dict[str, dict] = {"copies": {}, "overlays": {}}
        for alias, ds in copies:
            out["copies"][f"{alias}:{ds}"] = self._one("copy.status", host, to_alias=alias,
                                                       to_dataset=ds)
        for driver, pool, vol in overlays:
            out["overlays"][f"{driver}/{pool}/{vol}"] = self._one(
                "overlay.status", host, driver=driver, pool=pool, vol=vol)
        return out

    def _one(self, name: str, host: str, **args: Any) -> dict:
        self.calls.append((host, name, args))
        try:
            return dict(self.handlers[name](host, **args) or {})
        except ImgstorError as e:
            return {"error": e.to_wire()}

    def steps(self, host: str, steps: list[tuple[str, dict]], /, *,
              stop_after: int | None = None) -> list[StepResult]:
        """Several steps in one round trip (each answered by its own handler)."""
        self.calls.append((host, "batch", {"steps": [n for n, _ in steps]}))
        return [self.step(host, n, **a) for n, a in steps]

    def parallel(self, hosts, fn):
        out = {}
        for h in hosts:
            try:
                out[h] = fn(h)
            except ImgstorError as e:
                out[h] = e
        return out

    def close(self) -> None:
        pass
