"""The node steps, and ``load_all``: the registry with every step module loaded.

A step ensures a state on the node it runs on: it reads facts, runs only what is missing,
and returns a ``StepResult``.  Steps take the executor first and keyword arguments (the
JSON the frontend sent).  A step module registers its steps with ``@step("name")`` from
imgstor.remote.steps.registry.
"""
from __future__ import annotations

from typing import Callable

from imgstor.remote.protocol import StepResult
from imgstor.remote.steps.registry import STEPS, step

__all__ = ["StepResult", "step", "STEPS", "load_all"]


def load_all() -> dict[str, Callable[..., StepResult]]:
    from imgstor.remote.steps import (  # noqa: F401  (each registers its steps)
        compute,
        copy,
        inventory,
        nas,
        nodefacts,
        overlay,
        probe,
        snapshot,
        syncexpect,
        synckeys,
        vm,
        watch,
    )
    return STEPS
