"""imgstor: VM disks on ZFS NAS servers, handed to compute nodes over iSCSI."""
__version__ = "0.1.0"


def _dataclasses_without_inspect() -> None:
    """Import dataclasses without importing inspect, which pulls in ast, dis and tokenize:
    ~6 ms of the ~60 ms a command starting in a fresh process spends (bench_list_vm_nas.py).
    dataclasses uses inspect for one thing, ``inspect.signature`` of a class without a
    docstring (to write one; imgstor's dataclasses on the command path have theirs), so it
    gets a stand-in that imports the real inspect at that first use.  The stand-in leaves
    sys.modules at once: any other ``import inspect`` gets the real module.  Does nothing
    where either is imported already (pytest, a host program)."""
    import sys
    if "dataclasses" in sys.modules or "inspect" in sys.modules:
        return
    import types

    def __getattr__(name: str):
        import importlib
        return getattr(importlib.import_module("inspect"), name)

    stub = types.ModuleType("inspect", "stand-in: imgstor._dataclasses_without_inspect")
    setattr(stub, "__getattr__", __getattr__)   # PEP 562: asked for every attribute it lacks
    sys.modules["inspect"] = stub
    try:
        import dataclasses  # noqa: F401
    finally:
        if sys.modules.get("inspect") is stub:
            del sys.modules["inspect"]


_dataclasses_without_inspect()
