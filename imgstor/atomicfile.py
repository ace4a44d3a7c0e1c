"""The frontend's name for imgstor.remote.atomicfile (one atomic replace for both sides:
the node app ships the remote package only)."""
from imgstor.remote.atomicfile import replace

__all__ = ["replace"]
