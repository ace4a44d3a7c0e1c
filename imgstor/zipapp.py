"""Build the node zipapp: the frontend's own node code, keyed by content hash.

The zipapp holds ``imgstor/__init__.py``, ``imgstor/errors.py`` and ``imgstor/remote/**``
(standard library only) and a ``__main__.py`` that runs ``imgstor.remote.node``.  It is
built deterministically (sorted names, fixed timestamps), so the same source gives the same
bytes and the same hash on every frontend; a node that already has
``/run/imgstor/imgstor-<hash>.pyz`` is never sent it again, and a node never runs code of
another version than the frontend's.

Building it compiles every node module (~60 ms, a fifth of a map's budget), so
``node_app(cache_dir)`` keeps the built file in a root-only cache directory (the state
directory's ``cache/``), named by a hash of this module, the Python magic number and every
source it packs: a changed source is a new name, never a stale app.

The sources are read with ``importlib.resources``, not from ``__file__``'s directory, so
the frontend builds the same app (same bytes, same hash) when imgstor itself runs from a
zip: the one-file build (``scripts/build-onefile``, a shiv zipapp) or any zipimport.

``BOOT`` is what the frontend runs on a node instead of the zipapp itself:
``python3 -I -c BOOT /run/imgstor/imgstor-<hash>.pyz <sha256> node STEP``.  Before running
anything it checks that the directory is a real directory owned by root with mode 0700 (so
no one else can have planted or swapped the file) and that the file is a regular root-owned
file whose content has the sha256 the frontend expects; otherwise it exits with
``BOOT_MISSING`` (absent or stale: upload it) or ``BOOT_UNSAFE`` (refuse), with a
``imgstor-boot:`` line on stderr.  The check rides on the step's own exchange: no extra
round trip.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources.abc import Traversable

from imgstor import atomicfile

__all__ = ["NodeApp", "node_app", "REMOTE_DIR", "BOOT", "BOOT_MISSING", "BOOT_UNSAFE"]

# /run: root-only, per host and per boot (a rebooted node just gets it again).  The lab's
# hosts share one root filesystem but each has its own tmpfs on /run.
REMOTE_DIR = "/run/imgstor"
_PKG = "imgstor"              # read as a package resource: a directory or inside a zip
_MAIN = b"import sys\nfrom imgstor.remote.node import main\nsys.exit(main())\n"
_EPOCH = (2020, 1, 1, 0, 0, 0)

BOOT_MISSING = 96     # the app is absent or not this content: upload it, then run again
BOOT_UNSAFE = 97      # /run/imgstor or the file is not root's alone: refuse
# Standard library only, and runs on whatever python3 the node has.  The hash is checked on
# the bytes read through an O_NOFOLLOW descriptor; zipimport then reopens the path, which is
# safe because only root can write in a root-owned 0700 directory (checked first).
BOOT = """\
import hashlib,os,stat,sys
p,h=sys.argv[1],sys.argv[2]
def no(c,m):
 sys.stderr.write("imgstor-boot: "+m+"\\n");sys.exit(c)
try:d=os.lstat(os.path.dirname(p))
except FileNotFoundError:no(96,"missing")
if not stat.S_ISDIR(d.st_mode) or d.st_uid!=0 or stat.S_IMODE(d.st_mode)!=0o700:
 no(97,"%s: not a root-owned 0700 directory (mode %o, uid %d)"%(os.path.dirname(p),d.st_mode,d.st_uid))
try:f=os.open(p,os.O_RDONLY|os.O_NOFOLLOW)
except FileNotFoundError:no(96,"missing")
except OSError as e:no(97,"%s: cannot open: %s"%(p,e))
s=os.fstat(f)
if not stat.S_ISREG(s.st_mode) or s.st_uid!=0:no(97,"%s: not a root-owned regular file"%p)
b=bytearray()
while True:
 c=os.read(f,1<<20)
 if not c:break
 b+=c
os.close(f)
if hashlib.sha256(b).hexdigest()!=h:no(96,"content differs")
del b
sys.argv=[p]+sys.argv[3:]
import runpy
runpy.run_path(p,run_name="__main__")
"""


@dataclass(frozen=True)
class NodeApp:
    data: bytes
    sha256: str

    @property
    def remote_path(self) -> str:
        return f"{REMOTE_DIR}/imgstor-{self.sha256[:16]}.pyz"


def _walk(d: Traversable, prefix: str) -> list[tuple[str, Traversable]]:
    """``(name, file)`` for every ``*.py`` under ``d`` (Traversable has no rglob)."""
    out: list[tuple[str, Traversable]] = []
    for e in d.iterdir():
        name = f"{prefix}/{e.name}"
        if e.is_dir():
            if e.name != "__pycache__":
                out.extend(_walk(e, name))
        elif e.name.endswith(".py"):
            out.append((name, e))
    return out


def _files() -> list[tuple[str, bytes]]:
    """``(name in the app, source)`` of every file the node app packs, sorted."""
    pkg = importlib.resources.files(_PKG)
    out = [("imgstor/__init__.py", pkg / "__init__.py"), ("imgstor/errors.py", pkg / "errors.py"),
           *sorted(_walk(pkg / "remote", "imgstor/remote"), key=lambda f: f[0].split("/"))]
    return [(n, f.read_bytes()) for n, f in out]


def _pyc(source: bytes, name: str) -> bytes:
    """Bytecode as an unchecked-hash .pyc (PEP 552): zipimport uses it without comparing
    timestamps when the node's Python has the frontend's magic number, and falls back to
    the .py beside it otherwise.  Saves compiling every module on every step (measured
    ~0.1 s of a ~0.25 s node step)."""
    import marshal
    code = compile(source, name, "exec", dont_inherit=True)
    flags = 0b01          # hash-based, check_source = 0
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


@lru_cache(maxsize=4)
def node_app(cache_dir: str | None = None) -> NodeApp:
    """This version's zipapp; with ``cache_dir`` (an existing root-only directory) read
    from or kept in ``cache_dir/nodeapp-<key>.pyz`` instead of built every time."""
    if cache_dir is None or not os.path.isdir(cache_dir):
        return _build()
    files = _files()
    me = (importlib.resources.files(_PKG) / "zipapp.py").read_bytes()
    h = hashlib.sha256(me + importlib.util.MAGIC_NUMBER)
    for n, src in files:
        h.update(b"\0%s\0%d\0" % (n.encode(), len(src)) + src)
    path = os.path.join(cache_dir, f"nodeapp-{h.hexdigest()[:32]}.pyz")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = None
    if fd is not None:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
                data = f.read()
                return NodeApp(data, hashlib.sha256(data).hexdigest())
    app = _build()
    with contextlib.suppress(OSError):    # a cache we cannot write is no cache
        atomicfile.replace(path, app.data, durable=False,
                           tmp=f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    return app


def _build() -> NodeApp:
    import io
    import zipfile  # lazy: a command uses the cached build (zipfile pulls in shutil, bz2…)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, src in [("__main__.py", _MAIN), *_files()]:
            entries = [(name, src)]
            if name != "__main__.py":
                entries.append((name + "c", _pyc(src, name)))
            for n, data in entries:
                info = zipfile.ZipInfo(n, _EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    data = buf.getvalue()
    return NodeApp(data, hashlib.sha256(data).hexdigest())


