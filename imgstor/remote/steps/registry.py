"""The registry of node steps: ``@step("name")`` adds a step to ``STEPS``.

A step module imports this (never the ``imgstor.remote.steps`` package, whose ``load_all``
imports every step module); the node's dispatcher (imgstor.remote.node) calls ``load_all``.
"""
from __future__ import annotations

from typing import Callable

from imgstor.remote.protocol import StepResult

__all__ = ["step", "STEPS"]


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
