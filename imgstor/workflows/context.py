"""The context a command handler gets: flags plus lazily built config, store and cluster.

Nothing heavy is imported until a handler touches it: ``ctx.cluster`` (paramiko)
is only built by commands that reach hosts.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from imgstor.config import Config
    from imgstor.state.model import State
    from imgstor.state.store import Store

__all__ = ["Ctx"]


@dataclass
class Ctx:
    config_path: str | None = None
    json: bool = False
    dry_run: bool = False
    debug: bool = False

    @cached_property
    def config(self) -> "Config":
        from imgstor.config import load_config
        return load_config(self.config_path)

    @cached_property
    def store(self) -> "Store":
        from imgstor.state.store import Store
        return Store(self.config.state_path, lock_timeout=self.config.lock_timeout)

    @cached_property
    def cluster(self):  # -> imgstor.transport.Cluster (written by the transport owner)
        from imgstor.transport import Cluster
        return Cluster(self.config, dry_run=self.dry_run, debug=self.debug)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["State"]:
        """``store.transaction()``, except that a dry run reads without the lock and
        discards every change (the handler's message says what would have been done)."""
        if self.dry_run:
            yield self.store.read()
        else:
            with self.store.transaction() as st:
                yield st
