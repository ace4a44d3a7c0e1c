"""Volume mappings: a NAS volume exported over iSCSI to one compute node (direct mode),
or copied to it behind an overlay (sync mode, imgstor.workflows.storagemap.sync).

    add host storagemap NAS ZPOOL VOL HOST SIZE [img_sync=false]
    remove host storagemap NAS VOL [--force]
    remove host storageimg NAS ZPOOL VOL
    list host storagemap [NAS] [--verify]
    list host storagedev HOST

Each workflow validates every name first, marks the volume busy in the store, releases the
store lock, runs idempotent node steps, and records the outcome.  A crash at any step
boundary leaves a state that re-running the same command completes: the busy marker of
the dead process is stale and taken over, and every step ensures rather than creates.
``IMGSTOR_FAULT=<point>`` kills this process right after that point (tests use it;
imgstor/faults.py).

CHAP (the NAS's ``chap = true``): the map makes the volume's credentials once
(imgstor.chap: a 0600 file beside the state file, never in the state), and hands them to
``nas.ensure_target`` and ``compute.attach`` in the JSON on stdin; the unmap names the
CHAP user to ``nas.remove_target`` (tgt accounts are global); ``remove host storageimg``
removes the file.
"""
from __future__ import annotations

from imgstor.names import target_iqn
from imgstor.workflows.storagemap.common import MAP_POINTS, TRANSITIONAL, UNMAP_POINTS

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover  (what __getattr__ loads, for mypy and the import test)
    from imgstor.workflows.storagemap.image import remove_image
    from imgstor.workflows.storagemap.listing import list_devs, list_maps
    from imgstor.workflows.storagemap.mapvol import map_volume
    from imgstor.workflows.storagemap.unmapvol import unmap_volume

__all__ = ["map_volume", "unmap_volume", "remove_image", "list_maps", "list_devs",
           "target_iqn", "MAP_POINTS", "UNMAP_POINTS", "TRANSITIONAL"]

# The commands' modules load when first asked for (PEP 562): a map does not import the
# listing's, whose imports cost a command's start-up.
_LAZY = {"remove_image": "image", "list_devs": "listing", "list_maps": "listing",
         "map_volume": "mapvol", "unmap_volume": "unmapvol"}


def __getattr__(name: str) -> object:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
