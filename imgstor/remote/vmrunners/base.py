"""The VM runner interface, its registry and the files every runner keeps per guest.

A runner runs one guest per VM on this node, its disk the device the map gave
(``protocol.GuestDisk``), its machine ``protocol.GuestSpec``.  Every method ensures a
state and is idempotent:

| method | ensures |
|---|---|
| ``start(spec, disk)`` | the guest runs (a running one is left as it is: ``changed`` False) |
| ``powerdown(timeout)`` | the guest was asked to shut down (ACPI) and is gone within ``timeout`` s, else ``Conflict`` (exit 8) naming it, the guest left running |
| ``kill()`` | the guest is gone (hard stop: what it had not flushed is lost) |
| ``status()`` | read-only: ``protocol.GuestFacts`` |
| ``guests(ex)`` | read-only, class-level: every guest this runner knows on the node |

Per guest a directory ``/run/imgstor/vm/VM/`` (0700, root's; per boot like all of
/run/imgstor): the runner's pid file, control socket and the guest's console log.

Standard library only: shipped to nodes in the zipapp.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from imgstor.errors import UsageError
from imgstor.remote.executor import Executor
from imgstor.remote.protocol import GuestDisk, GuestFacts, GuestSpec

__all__ = ["RUN_DIR", "Outcome", "Runner", "register", "get", "runners", "runner_class",
           "guest_dir", "tail"]

RUN_DIR = "/run/imgstor/vm"
_SUN_PATH_MAX = 107                    # sockaddr_un.sun_path is 108 bytes with the NUL


@dataclass
class Outcome:
    changed: bool
    facts: GuestFacts
    message: str = ""

    def fact_dict(self) -> dict[str, Any]:
        return asdict(self.facts)


def guest_dir(vm: str) -> str:
    """``/run/imgstor/vm/VM``: the name is a VM name (validate.vm on the frontend); here
    only what a path needs: no ``/``, no leading ``.``, room for a socket path."""
    if not vm or "/" in vm or vm.startswith(".") or "\0" in vm \
            or len(f"{RUN_DIR}/{vm}/qmp.sock") > _SUN_PATH_MAX:
        raise UsageError(f"refusing VM name {vm!r:.80} in a path (at most "
                         f"{_SUN_PATH_MAX - len(RUN_DIR) - 10} characters)", field="vm")
    return f"{RUN_DIR}/{vm}"


class Runner(ABC):
    """One VM's guest on this node."""

    name: ClassVar[str]

    def __init__(self, ex: Executor, *, vm: str) -> None:
        self.ex, self.vm, self.dir = ex, vm, guest_dir(vm)

    @abstractmethod
    def start(self, spec: GuestSpec, disk: GuestDisk) -> Outcome: ...

    @abstractmethod
    def powerdown(self, timeout: float) -> Outcome: ...

    @abstractmethod
    def kill(self) -> Outcome: ...

    @abstractmethod
    def status(self) -> GuestFacts: ...

    @classmethod
    @abstractmethod
    def guests(cls, ex: Executor) -> list[dict]: ...


_REGISTRY: dict[str, type[Runner]] = {}


def register(cls: type[Runner]) -> type[Runner]:
    _REGISTRY[cls.name] = cls
    return cls


def runners() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def runner_class(name: str) -> type[Runner]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown VM runner {name!r}; this node has: "
                         f"{', '.join(runners())}", field="runner") from None


def get(name: str, ex: Executor, *, vm: str) -> Runner:
    return runner_class(name)(ex, vm=vm)


def tail(text: str | None, n: int = 15) -> list[str]:
    """The last ``n`` non-empty lines of a log (a console's, qemu's stderr)."""
    return [ln for ln in (text or "").replace("\r", "").splitlines() if ln.strip()][-n:]
