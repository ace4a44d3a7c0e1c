"""The context a command handler gets: flags plus lazily built config, store and cluster.

Nothing heavy is imported until a handler touches it: ``ctx.cluster`` (paramiko)
is only built by commands that reach hosts.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    from imgstor.config import Config
    from imgstor.state.model import State
    from imgstor.state.store import Store
    from imgstor.transport import Cluster

__all__ = ["Ctx", "python_m_imgstor"]


def python_m_imgstor() -> list[str]:
    """``python -m imgstor`` with this interpreter: how an installed imgstor starts itself."""
    return [sys.executable, "-m", "imgstor"]


@dataclass
class Ctx:
    """A command's flags, and its config, store and cluster built when first used."""
    config_path: str | None = None
    json: bool = False
    dry_run: bool = False
    debug: bool = False
    # the argv that starts this imgstor again (a detached monitor): set by the entry point,
    # the one-file build's is its own file (imgstor/onefile.py)
    self_argv: list[str] = field(default_factory=python_m_imgstor)

    @cached_property
    def file_config(self) -> "Config":
        """The config file as written, without the attributes set by command."""
        from imgstor.config import load_config
        return load_config(self.config_path)

    @cached_property
    def config(self) -> "Config":
        """The config every workflow uses: the file, with the storage attributes that
        ``set host attr`` keeps in the store applied per host (read once, when the command
        first needs its config; a change applies to the next command)."""
        attrs = self.store.read_attrs()
        return self.file_config.with_overrides({h: a.values() for h, a in attrs.items()})

    @cached_property
    def store(self) -> "Store":
        from imgstor.state.store import Store
        cfg = self.file_config
        return Store(cfg.state_path, lock_timeout=cfg.lock_timeout)

    @cached_property
    def cluster(self) -> "Cluster":
        from imgstor.transport import Cluster
        return Cluster(self.config, dry_run=self.dry_run)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["State"]:
        """``store.transaction()``, except that a dry run reads without the lock and
        discards every change (the handler's message says what would have been done)."""
        if self.dry_run:
            with self.store.preview() as st:
                yield st
        else:
            with self.store.transaction() as st:
                yield st
