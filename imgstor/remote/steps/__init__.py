"""Registry of node steps.

A step ensures a state on the node it runs on: it reads facts, runs only what is missing,
and returns a ``StepResult``.  Steps take the executor first and keyword arguments (the
JSON the frontend sent).  Register with ``@step("name")``; the modules below are imported
by ``load_all()`` so the registry is complete.
"""
from __future__ import annotations

from typing import Callable

from imgstor.remote.protocol import StepResult

__all__ = ["StepResult", "step", "STEPS", "load_all"]


STEPS: dict[str, Callable[..., StepResult]] = {}


def step(name: str, *, read_only: bool = False):
    """Register a step.  ``read_only`` steps change nothing, so the node takes no volume
    lock for them (imgstor.remote.locks); every other step runs under one."""
    def deco(fn):
        if name in STEPS:
            raise RuntimeError(f"step {name} registered twice")
        STEPS[name] = fn
        fn.step_name = name
        fn.read_only = read_only
        return fn
    return deco


def load_all() -> dict[str, Callable[..., StepResult]]:
    from imgstor.remote.steps import probe  # noqa: F401
    for mod in ("nas", "compute", "overlay", "copy", "synckeys", "syncexpect", "snapshot",
                "inventory", "nodefacts", "vm", "watch"):
        __import__(f"imgstor.remote.steps.{mod}")
    return STEPS
