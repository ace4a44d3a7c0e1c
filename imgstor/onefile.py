"""The entry point of the one-file build: ``dist/imgstor``, made by ``scripts/build-onefile``.

The build is a shiv zipapp (imgstor and its dependencies, with the compiled ones as wheels
for the frontend's Python 3.11) whose first line is ``#!/usr/bin/python3 -I``; shiv
unpacks it once into ``/var/lib/imgstor/shiv/imgstor_<build id>/`` (root's, never
``$HOME``) and runs :func:`main` from there.
The node zipapp is built from the package's own sources as in any install
(``imgstor/zipapp.py`` reads them as package resources).

:func:`main` is ``imgstor``, or ``imgstorageadmin`` / ``rocks`` when the file is started
under that name (a symlink ``imgstorageadmin -> imgstor``), and hands the file's path on
(``Ctx.self_argv``) so that detached monitors are started with the same file: a plain
``python3 -m imgstor`` would not find the package there.

``SHIV_ENTRY_POINT=imgstor.onefile:check dist/imgstor`` (shiv runs the entry point that
variable names) imports the compiled dependencies and prints their versions: the build
script's check that the wheels fit the frontend's Python.
"""
from __future__ import annotations

import os
import sys

__all__ = ["main", "check"]


def main() -> int:
    # how a monitor starts this file again: imgstorageadmin -> imgstor, the real file
    self_argv = [sys.executable, "-I", os.path.realpath(sys.argv[0])]
    name = os.path.basename(sys.argv[0])
    if name.startswith("imgstorageadmin"):
        from imgstor.admin import main
        return main(self_argv=self_argv)
    if name.startswith("rocks"):
        from imgstor.cli import rocks_main
        return rocks_main(self_argv=self_argv)
    from imgstor.cli import entry
    return entry(self_argv=self_argv)


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
