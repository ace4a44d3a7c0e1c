"""bin/imgstor, bin/imgstorageadmin, bin/rocks from a checkout, started as a person starts
them: by path, with the system's environment (no venv activated).  They crashed on a
missing filelock / tabulate (``#!/usr/bin/env python3``); now they run with the
checkout's .venv, else its one-file build (dist/), else say what to do."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def test_the_launchers_run_with_the_checkouts_venv(config_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (scripts/setup)")
    for name, argv in (("rocks", ["set", "host", "vm", "nas", "vm1", "nas=nas-0-0"]),
                       ("rocks", ["list", "host", "attr"]),
                       ("imgstorageadmin", ["list"]), ("imgstor", ["list", "host", "vm", "nas"])):
        p = subprocess.run([str(ROOT / "bin" / name), "--config", str(config_path), *argv],
                           capture_output=True, text=True, cwd="/", env=PLAIN_ENV)
        assert "ModuleNotFoundError" not in p.stderr, (name, p.stderr)
        assert p.returncode in (0, 6), (name, argv, p.stderr)     # 6: no VM vm1 here


def _checkout(tmp_path: Path) -> Path:
    """A checkout's bin/ (the launcher and its two symlinks) without a .venv."""
    top = tmp_path / "checkout"
    (top / "bin").mkdir(parents=True)
    shutil.copy2(ROOT / "bin" / "imgstor", top / "bin" / "imgstor")
    for name in ("imgstorageadmin", "rocks"):
        assert os.readlink(ROOT / "bin" / name) == "imgstor"
        (top / "bin" / name).symlink_to("imgstor")
    return top


def test_without_a_venv_the_one_file_build_answers_under_the_same_name(tmp_path: Path) -> None:
    top = _checkout(tmp_path)
    (top / "dist").mkdir()
    stub = top / "dist" / "imgstor"
    stub.write_text('#!/bin/sh\necho "one file as $(basename "$0"):" "$@"\n')
    stub.chmod(0o755)
    for name in ("imgstorageadmin", "rocks"):            # as scripts/build-onefile makes them
        (top / "dist" / name).symlink_to("imgstor")
    for name in ("imgstor", "imgstorageadmin", "rocks"):
        p = subprocess.run([str(top / "bin" / name), "list", "host", "vm"],
                           capture_output=True, text=True, env=PLAIN_ENV)
        assert (p.returncode, p.stdout) == (0, f"one file as {name}: list host vm\n"), p.stderr


def test_without_a_venv_or_a_build_it_says_what_to_do(tmp_path: Path) -> None:
    probe = subprocess.run(["/usr/bin/python3", "-I", "-c", "import fabric, filelock, tabulate"],
                           capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this system's python3 has imgstor's dependencies")
    top = _checkout(tmp_path)
    p = subprocess.run([str(top / "bin" / "rocks"), "list", "host", "vm"],
                       capture_output=True, text=True, env=PLAIN_ENV)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("rocks: No module named")
    assert f"{top} has no .venv (scripts/setup" in p.stderr and "build-onefile" in p.stderr
