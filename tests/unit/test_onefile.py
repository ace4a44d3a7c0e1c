"""imgstor imported from a zip (as in the one-file build, or any zipimport) builds the node
app from its package resources: the same bytes as from a checkout.  And how a detached
monitor is started again from the one-file build."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

from imgstor import onefile
from imgstor.zipapp import _files, node_app

ROOT = Path(__file__).resolve().parents[2]


def test_node_app_built_from_a_zipped_imgstor_is_the_same(tmp_path: Path) -> None:
    z = tmp_path / "imgstor.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted((ROOT / "imgstor").rglob("*.py")):
            zf.write(p, p.relative_to(ROOT).as_posix())
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    code = ("import sys, hashlib, zipfile, io; sys.path.insert(0, sys.argv[1]); "
            "import imgstor.zipapp as z; assert z.__file__.startswith(sys.argv[1]), z.__file__; "
            "print([(n, hashlib.sha256(b).hexdigest()) for n, b in z._files()]); "
            "app = z.node_app(sys.argv[2]); assert app == z.node_app(sys.argv[2]); "
            "print(sorted(zipfile.ZipFile(io.BytesIO(app.data)).namelist()))")
    # -S: no site-packages, so the checkout's editable install cannot answer the import
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(z), str(cache)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # the same sources under the same names (the bytes of the compiled .pyc beside them
    # depend on marshal, which is not deterministic across processes)
    files, names = p.stdout.splitlines()
    assert files == str([(n, hashlib.sha256(b).hexdigest()) for n, b in _files()])
    assert names == str(sorted(zipfile.ZipFile(io.BytesIO(node_app().data)).namelist()))
    assert len(list(cache.glob("nodeapp-*.pyz"))) == 1        # kept in the cache, reused


def test_self_argv(monkeypatch, tmp_path: Path) -> None:
    """A monitor is started with Ctx.self_argv: ``python -m imgstor`` in an install, the
    one-file build's own file (symlinks resolved) when it runs from it, under any name."""
    from imgstor import admin, cli
    from imgstor.workflows.context import Ctx
    assert Ctx().self_argv == [sys.executable, "-m", "imgstor"]
    seen = []
    for mod, fn in ((cli, "entry"), (cli, "rocks_main"), (admin, "main")):
        monkeypatch.setattr(mod, fn, lambda *, self_argv, fn=fn: seen.append((fn, self_argv)) or 0)
    (tmp_path / "imgstor").touch()
    for name in ("imgstor", "imgstorageadmin", "rocks"):
        if name != "imgstor":
            (tmp_path / name).symlink_to("imgstor")
        monkeypatch.setattr(sys, "argv", [str(tmp_path / name), "ping"])
        assert onefile.main() == 0
    want = [sys.executable, "-I", str(tmp_path / "imgstor")]
    assert seen == [("entry", want), ("main", want), ("rocks_main", want)]


def whoami(ctx):
    return " ".join(ctx.self_argv)


def test_cli_run_hands_self_argv_to_the_ctx(config_path, capsys) -> None:
    from imgstor import cli
    table = [cli.Cmd(("whoami",), f"{__name__}:whoami")]
    cli.run(["--config", str(config_path), "whoami"], table, prog="imgstor",
            self_argv=["/usr/bin/python3", "-I", "/opt/imgstor"])
    assert capsys.readouterr().out == "/usr/bin/python3 -I /opt/imgstor\n"
    cli.run(["--config", str(config_path), "whoami"], table, prog="imgstor")
    assert capsys.readouterr().out == f"{sys.executable} -m imgstor\n"
