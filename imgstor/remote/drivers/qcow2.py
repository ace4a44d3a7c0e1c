"""qcow2 overlays with ``qemu-img`` (the lab's stand-in for the dm snapshot overlay).

A VM starts on ``overlay.qcow2`` whose backing file is the iSCSI LUN (a ``json:`` spec from
``userspace.json_spec``); writes land in the overlay; ``qemu-img commit`` merges them into
the backing disk; ``qemu-img convert`` copies a LUN to a local file.

Captured here (qemu-img 7.2, tests/fixtures/userspace/qemu_img_*): ``info --output=json``
prints one object (``--backing-chain``: a list); ``-p`` progress goes to stdout as
``    (12.34/100%)`` pieces; a missing image is exit 1 "Could not open '…': No such file or
directory"; an iSCSI backing refused by the target fails with libiscsi's login text, which
``classify`` hands to ``userspace.classify``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from imgstor.errors import ImgstorError, NotFound, RemoteCommandError
from imgstor.remote.drivers import userspace
from imgstor.remote.drivers._common import classify_by_text, positional, run_mapped

__all__ = ["ImageInfo", "parse_info", "info",
           "create_overlay", "commit", "convert", "classify"]


@dataclass(frozen=True)
class ImageInfo:
    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    backing_filename: str | None
    backing_format: str | None
    cluster_size: int | None
    dirty: bool = False
    corrupt: bool = False


def _mk(d: dict) -> ImageInfo:
    spec = (d.get("format-specific") or {}).get("data") or {}
    return ImageInfo(filename=d["filename"], format=d["format"],
                     virtual_size=int(d["virtual-size"]), actual_size=d.get("actual-size"),
                     backing_filename=d.get("full-backing-filename") or d.get("backing-filename"),
                     backing_format=d.get("backing-filename-format"),
                     cluster_size=d.get("cluster-size"), dirty=bool(d.get("dirty-flag")),
                     corrupt=bool(spec.get("corrupt", False)))


def parse_info(text: str) -> ImageInfo:
    """``qemu-img info --output=json IMAGE``."""
    d = json.loads(text)
    if isinstance(d, list):
        d = d[0]
    return _mk(d)


_PROGRESS = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


# ---------------------------------------------------------------------------- readers
def _info_argv(image: str, *, image_opts: bool) -> list[str]:
    argv = ["qemu-img", "info", "--output=json"]
    if image_opts:
        return argv + ["--image-opts", image]
    return argv + [positional(image, "image")]


def info(ex, image: str, *, image_opts: bool = False) -> ImageInfo:
    """Runs ``qemu-img info --output=json [--image-opts] IMAGE``."""
    return parse_info(_run(ex, _info_argv(image, image_opts=image_opts)).stdout)


def _run(ex, argv):
    return run_mapped(ex, argv, classify, read_only=True)


# ---------------------------------------------------------------------------- changes
def create_overlay(overlay: str, backing: str, *, backing_format: str = "raw",
                   size: int | None = None) -> list[str]:
    """``qemu-img create -f qcow2 -F raw -b BACKING OVERLAY [SIZE]``.

    BACKING is a path or a ``json:`` spec (``userspace.json_spec``); the size defaults to
    the backing's, which qemu-img reads by opening it (so the LUN must admit us)."""
    argv = ["qemu-img", "create", "-f", "qcow2", "-F", backing_format, "-b", backing,
            positional(overlay, "overlay")]
    return argv + ([str(int(size))] if size is not None else [])


def commit(overlay: str, *, progress: bool = False) -> list[str]:
    """``qemu-img commit [-p] OVERLAY`` (writes the overlay's clusters into its backing)."""
    return ["qemu-img", "commit"] + (["-p"] if progress else []) + [positional(overlay, "overlay")]


def convert(source: str, dest: str, *, out_format: str = "raw", source_format: str | None = None,
            image_opts: bool = False, progress: bool = False) -> list[str]:
    """``qemu-img convert [-p] [-f FMT] -O FMT [--image-opts] SOURCE DEST``.

    With ``image_opts`` SOURCE is an option string (``userspace.image_opts``)."""
    argv = ["qemu-img", "convert"] + (["-p"] if progress else [])
    if source_format and not image_opts:
        argv += ["-f", source_format]
    argv += ["-O", out_format]
    argv += ["--image-opts", source] if image_opts else [positional(source, "source")]
    return argv + [positional(dest, "destination")]


# ---------------------------------------------------------------------------- errors
_RULES = [
    (r"No such file or directory", NotFound, None),
]


def classify(err: RemoteCommandError) -> ImgstorError:
    """iSCSI login texts via ``userspace.classify``; a missing image file -> ``NotFound``."""
    first = userspace.classify(err)
    if first is not err:
        return first
    return classify_by_text(err, _RULES)
