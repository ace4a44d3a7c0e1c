"""The state store: one locked JSON file (see store.py) holding the model (model.py)."""
from imgstor.state.model import SCHEMA, Busy, State, Vm, Volume, split_key, volume_key  # noqa: F401
from imgstor.state.store import Store  # noqa: F401

__all__ = ["SCHEMA", "Busy", "State", "Vm", "Volume", "Store", "volume_key", "split_key"]
