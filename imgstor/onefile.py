"""The entry point of the one-file build: ``dist/imgstor``, made by ``scripts/build-onefile``.

The build is a shiv zipapp (imgstor and its dependencies, with the compiled ones as wheels
for the frontend's Python 3.11) whose first line is ``#!/usr/bin/python3 -I``; shiv
unpacks it once into ``/var/lib/imgstor/shiv/imgstor_<build id>/`` (root's, never
``$HOME``) and runs :func:`main` from there.
The node zipapp is built from the package's own sources as in any install
(``imgstor/zipapp.py`` reads them as package resources).

:func:`main` is ``imgstor``, or ``imgstorageadmin`` / ``rocks`` when the file is started
under that name (a symlink ``imgstorageadmin -> imgstor``), and records the file's path so
that detached monitors are started with the same file (:func:`self_argv`): a plain
``python3 -m imgstor`` would not find the package there.

``SHIV_ENTRY_POINT=imgstor.onefile:check dist/imgstor`` (shiv runs the entry point that
variable names) imports the compiled dependencies and prints their versions: the build
script's check that the wheels fit the frontend's Python.
"""
from __future__ import annotations

import os
import sys

__all__ = ["main", "self_argv", "check"]

_PATH: str | None = None           # this one-file build, while running from it


def self_argv() -> list[str]:
    """The argv that starts this imgstor again (for detached monitors): the one-file build
    with this interpreter, else ``python -m imgstor``."""
    if _PATH is not None:
        return [sys.executable, "-I", _PATH]
    return [sys.executable, "-m", "imgstor"]


def main() -> int:
    global _PATH
    _PATH = os.path.realpath(sys.argv[0])       # imgstorageadmin -> imgstor: the file
    name = os.path.basename(sys.argv[0])
    if name.startswith("imgstorageadmin"):
        from imgstor.admin import main
        return main()
    if name.startswith("rocks"):
        from imgstor.cli import rocks_main
        return rocks_main()
    from imgstor.cli import entry
    return entry()


def check() -> int:
    """Import what the frontend needs that is compiled (paramiko's crypto) and say which."""
    import bcrypt
    import cryptography
    import fabric
    import nacl
    import nacl.bindings  # noqa: F401  (the compiled part)
    import paramiko
    from cryptography.hazmat.bindings import _rust  # noqa: F401

    print(f"python {sys.version.split()[0]} at {sys.executable}")
    for m in (fabric, paramiko, cryptography, bcrypt, nacl):
        print(f"{m.__name__} {getattr(m, '__version__', '?')}")
    return 0
