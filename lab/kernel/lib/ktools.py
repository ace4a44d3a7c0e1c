#!/usr/bin/env python3
"""Kernel helpers shared by the kernel lab's build (lab/kernel/build) and the userspace
lab's VM guest build (lab/guest/build).  Standard library only.

    ktools.py vmlinux BZIMAGE OUT        the uncompressed vmlinux (ELF, PVH entry) inside a
                                         bzImage: QEMU boots it without decompressing
    ktools.py modules MODDIR DEST NAME…  NAME… and what they depend on (modules.dep of
                                         MODDIR, dependencies first) copied flat into
                                         DEST/lib/modules/, their order in DEST/modules.list
"""
from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess
import sys


def vmlinux(bzimage: str, out: str) -> None:
    """The setup header says where the compressed payload is (payload_offset and
    payload_length at 0x248, boot protocol >= 2.08)."""
    d = open(bzimage, "rb").read()
    setup_sects = d[0x1f1] or 4
    off, length = struct.unpack_from("<II", d, 0x248)
    start = (setup_sects + 1) * 512 + off
    payload = d[start:start + length]
    if payload[:6] == b"\xfd7zXZ\x00":
        data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload[:2] == b"\x1f\x8b":
        data = gzip.decompress(payload)
    elif payload[:4] == b"\x28\xb5\x2f\xfd":
        data = subprocess.run(["zstd", "-dc"], input=payload[:-4], stdout=subprocess.PIPE,
                              check=True).stdout
    else:
        sys.exit(f"unknown payload compression {payload[:8]!r}")
    assert data[:4] == b"\x7fELF", "not an ELF"
    with open(out, "wb") as f:
        f.write(data)


def _name(path: str) -> str:
    return os.path.basename(path)[:-3].replace("-", "_")


def modules(mdir: str, dest: str, wanted: list[str]) -> None:
    deps = {}
    with open(os.path.join(mdir, "modules.dep")) as f:
        for line in f:
            k, _, v = line.partition(":")
            deps[_name(k)] = (k, v.split())
    order: list[str] = []

    def add(name: str) -> None:
        path, dd = deps[name]
        for d in reversed(dd):
            add(_name(d))
        if path not in order:
            order.append(path)

    for w in wanted:
        add(w)
    os.makedirs(os.path.join(dest, "lib/modules"), exist_ok=True)
    with open(os.path.join(dest, "modules.list"), "w") as f:
        for p in order:
            shutil.copy(os.path.join(mdir, p), os.path.join(dest, "lib/modules",
                                                            os.path.basename(p)))
            f.write(os.path.basename(p) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "vmlinux":
        vmlinux(argv[1], argv[2])
    elif len(argv) >= 4 and argv[0] == "modules":
        modules(argv[1], argv[2], argv[3:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
