"""End to end through imgstor.cli.main on a temp config and state: the vms and vm nas
commands, the command table, global flags, rocks forwarding, imgstorageadmin."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgstor import admin, cli
from imgstor.state import Busy, Store, Volume

ROOT = Path(__file__).resolve().parents[2]


def vm_nas(imgstor):
    r = imgstor("--json", "list", "host", "vm", "nas")
    assert r.rc == 0, r
    return {row["vm"]: (row["nas"], row["zpool"]) for row in json.loads(r.out)["rows"]}


def test_add_list_remove_vm(imgstor):
    r = imgstor("add", "host", "vm", "compute-0-0")
    assert (r.rc, r.out) == (0, "added VM compute-0-0-0 on physical node compute-0-0\n")
    assert imgstor("add", "host", "vm", "compute-0-0").out.startswith("added VM compute-0-0-1 ")
    assert imgstor("add", "host", "vm", "compute-0-1", "name=web1").rc == 0
    r = imgstor("list", "host", "vm")
    assert r.out.splitlines() == [
        "VM             CONTAINER    NAS    ZPOOL    MODE",
        "compute-0-0-0  compute-0-0  -----  -------  direct",
        "compute-0-0-1  compute-0-0  -----  -------  direct",
        "web1           compute-0-1  -----  -------  sync",
    ]
    r = imgstor("list", "host", "vm", "web1", "--json")     # global flag after the command
    assert json.loads(r.out)["rows"] == [{"vm": "web1", "container": "compute-0-1", "nas": None,
                                  "zpool": None, "mode": "sync"}]
    assert imgstor("remove", "host", "vm", "compute-0-0-0").out == "removed VM compute-0-0-0\n"
    assert imgstor("add", "host", "vm", "compute-0-0").out.startswith("added VM compute-0-0-0 ")


@pytest.mark.parametrize("argv,rc,text", [
    (("add", "host", "vm", "compute-9-9"), 6, "unknown host 'compute-9-9'"),
    (("add", "host", "vm", "nas-0-0"), 2, "not a compute host"),
    (("add", "host", "vm", "compute-0-0", "name=nas-0-1"), 8, "already a host"),
    (("add", "host", "vm", "compute-0-1", "name=web1"), 8, "exists already"),
    (("add", "host", "vm"), 2, "required: CONTAINER"),
    (("add", "host", "vm", "compute-0-0", "size=10"), 2, "allowed keys: name="),
    (("list", "host", "vm", "nope"), 6, "unknown VM 'nope'"),
    (("set", "host", "vm", "nas", "web1"), 2, "nas=NAS is required"),
    (("set", "host", "vm", "nas", "web1", "nas=compute-0-0"), 2, "not a nas host"),
    (("set", "host", "vm", "nas", "web1", "nas=nas-7-7"), 6, "unknown host 'nas-7-7'"),
    (("set", "host", "vm", "nas", "web1", "nas=nas-0-1", "zpool=tank"), 2,
     "not in the img_zpools of nas-0-1"),
    (("set", "host", "vm", "nas", "web1", "nas=none", "zpool=tank"), 2, "nas=none"),
    (("set", "host", "vm", "nas", "web1", "nas=nas-0-0", "nas=nas-0-1"), 2, "given twice"),
    (("set", "host", "vm", "nas", "nope", "nas=nas-0-0"), 6, "unknown VM"),
    (("lst", "host", "vm"), 2, "did you mean: list host vm"),
    (("list", "host", "storagething"), 2, "unknown command"),
    ((), 2, "no command given"),
])
def test_errors_change_nothing(imgstor, state_path, argv, rc, text):
    assert imgstor("add", "host", "vm", "compute-0-0", "name=web1").rc == 0
    before = state_path.read_bytes()
    r = imgstor(*argv)
    assert r.rc == rc, r
    assert r.err.startswith("error: ") and text in r.err, r
    assert r.out == ""
    assert state_path.read_bytes() == before


def test_missing_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IMGSTOR_CONFIG", raising=False)
    p = str(tmp_path / "none.toml")
    assert cli.main(["--config", p, "list", "host", "vm"]) == 3
    assert p in capsys.readouterr().err


def test_config_from_env(config_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGSTOR_CONFIG", str(config_path))
    assert cli.main(["add", "host", "vm", "compute-0-0"]) == 0
    assert "compute-0-0-0" in capsys.readouterr().out


def test_vm_nas_balanced_and_explicit(imgstor):
    for _ in range(5):
        imgstor("add", "host", "vm", "compute-0-0")
    for i in range(5):
        r = imgstor("set", "host", "vm", "nas", f"compute-0-0-{i}", "nas=nas-0-0")
        assert r.rc == 0, r
    assert vm_nas(imgstor) == {
        "compute-0-0-0": ("nas-0-0", "tank"), "compute-0-0-1": ("nas-0-0", "tank2"),
        "compute-0-0-2": ("nas-0-0", "tank"), "compute-0-0-3": ("nas-0-0", "tank2"),
        "compute-0-0-4": ("nas-0-0", "tank")}
    # re-setting a VM does not count itself: 4 stays on tank2's side of the balance
    imgstor("set", "host", "vm", "nas", "compute-0-0-4", "nas=nas-0-0", "zpool=tank2")
    imgstor("set", "host", "vm", "nas", "compute-0-0-4", "nas=nas-0-0")
    assert vm_nas(imgstor)["compute-0-0-4"] == ("nas-0-0", "tank")
    imgstor("set", "host", "vm", "nas", "compute-0-0-0", "nas=nas-0-1")
    assert vm_nas(imgstor)["compute-0-0-0"] == ("nas-0-1", "data")
    r = imgstor("list", "host", "vm", "nas", "compute-0-0-0", "compute-0-0-1")
    assert r.out.splitlines() == ["VM-HOST        NAS      ZPOOL",
                                  "compute-0-0-0  nas-0-1  data",
                                  "compute-0-0-1  nas-0-0  tank2"]
    assert imgstor("set", "host", "vm", "nas", "compute-0-0-1", "nas=none").rc == 0
    assert imgstor("remove", "host", "vm", "nas", "compute-0-0-2").rc == 0
    got = vm_nas(imgstor)
    assert got["compute-0-0-1"] == got["compute-0-0-2"] == (None, None)


def test_natural_sort(imgstor):
    for i in (10, 2, 1):
        imgstor("add", "host", "vm", "compute-0-0", f"name=vm{i}")
    assert list(vm_nas(imgstor)) == ["vm1", "vm2", "vm10"]


def test_dump_recreates(imgstor, state_path):
    for n in ("a", "b", "c"):
        imgstor("add", "host", "vm", "compute-0-0", f"name={n}")
    imgstor("set", "host", "vm", "nas", "a", "nas=nas-0-0")
    imgstor("set", "host", "vm", "nas", "b", "nas=nas-0-1")
    r = imgstor("dump", "host", "vm", "nas")
    assert r.out.splitlines() == ["imgstor set host vm nas a nas=nas-0-0 zpool=tank",
                                  "imgstor set host vm nas b nas=nas-0-1 zpool=data"]
    assert imgstor("dump", "host", "vm", "nas", "b").out.count("\n") == 1
    want = vm_nas(imgstor)
    imgstor("remove", "host", "vm", "nas", "a")
    imgstor("remove", "host", "vm", "nas", "b")
    for line in r.out.splitlines():
        assert imgstor(*shlex.split(line)[1:]).rc == 0
    assert vm_nas(imgstor) == want


def _mark(state_path, **kw):
    s = Store(str(state_path))
    with s.transaction() as st:
        v = Volume(nas="nas-0-0", zpool="tank", vol="web1-vol", **kw)
        st.volumes[v.key] = v


@pytest.mark.parametrize("argv", [
    ("set", "host", "vm", "nas", "web1", "nas=nas-0-1"),
    ("set", "host", "vm", "nas", "web1", "nas=nas-0-0", "zpool=tank2"),
    ("set", "host", "vm", "nas", "web1", "nas=none"),
    ("remove", "host", "vm", "nas", "web1"),
    ("remove", "host", "vm", "web1"),
])
def test_mapped_or_busy_volume_refuses_changes(imgstor, state_path, argv):
    imgstor("add", "host", "vm", "compute-0-0", "name=web1")
    imgstor("set", "host", "vm", "nas", "web1", "nas=nas-0-0", "zpool=tank")
    _mark(state_path, state="mapped", host="compute-0-0")
    before = state_path.read_bytes()
    r = imgstor(*argv)
    assert r.rc == 8 and "nas-0-0/web1-vol is mapped to compute-0-0" in r.err, r
    assert state_path.read_bytes() == before
    # the same assignment again is fine (nothing changes)
    assert imgstor("set", "host", "vm", "nas", "web1", "nas=nas-0-0", "zpool=tank").rc == 0
    _mark(state_path, busy=Busy(op="map", pid=os.getpid(), host="fe", since=time.time()))
    r = imgstor(*argv)
    assert r.rc == 5 and "imgstorageadmin unbusy nas-0-0 web1-vol" in r.err, r
    _mark(state_path)                                   # unmapped, not busy: allowed
    assert imgstor(*argv).rc == 0


def test_dry_run_writes_nothing(imgstor, state_path):
    imgstor("add", "host", "vm", "compute-0-0")
    before = state_path.read_bytes()
    r = imgstor("-n", "add", "host", "vm", "compute-0-0")
    assert r.rc == 0 and r.out.startswith("dry run, nothing saved: added VM compute-0-0-1")
    r = imgstor("set", "host", "vm", "nas", "compute-0-0-0", "nas=nas-0-0", "--dry-run")
    assert r.rc == 0 and "dry run" in r.out
    assert state_path.read_bytes() == before


def test_help(imgstor):
    r = imgstor("--help")
    assert r.rc == 0 and "list host vm nas" in r.out and "--dry-run" in r.out
    r = imgstor("set", "host", "vm", "nas", "-h")
    assert r.rc == 0 and "[nas=VALUE] [zpool=VALUE]" in r.out


def test_version(imgstor):
    from imgstor import __version__
    assert imgstor("--version").out == f"imgstor {__version__}\n"
    assert imgstor("--version", main=admin.main).out == f"imgstorageadmin {__version__}\n"
    p = subprocess.run([sys.executable, str(ROOT / "bin" / "imgstor"), "--version"],
                       capture_output=True, text=True, cwd="/")
    assert (p.returncode, p.stdout) == (0, f"imgstor {__version__}\n")
    import importlib.metadata  # the installed package says the same
    assert importlib.metadata.version("imgstor") == __version__


# ---- the command table ----

def probe(ctx, **kw):
    return f"probe {sorted(kw.items())} json={ctx.json} dry={ctx.dry_run} debug={ctx.debug}"


def failing_table(ctx):
    from imgstor.output import Output
    return Output([{"a": "x"}], [("a", "A")], exit_code=1)


def test_table_entry_longest_prefix_and_key_types(imgstor, monkeypatch):
    table = [*cli.COMMANDS,
             cli.Cmd(("list", "host", "vm", "nas", "probe"), f"{__name__}:probe",
                     [cli.Arg("items", nargs="*")], {"force": bool, "count": int}, "test"),
             cli.Cmd(("probe-one",), f"{__name__}:probe", aliases=(("probe-two",),)),
             cli.Cmd(("failing", "table"), f"{__name__}:failing_table")]
    monkeypatch.setattr(cli, "COMMANDS", table)
    r = imgstor("list", "host", "vm", "nas", "probe", "a", "force=yes", "b", "count=3", "-nv")
    assert r.out == ("probe [('count', 3), ('force', True), ('items', ['a', 'b'])] "
                     "json=False dry=True debug=True\n")
    assert imgstor("probe-two").out == "probe [] json=False dry=False debug=False\n"
    r = imgstor("failing", "table")          # a table printed, but the command failed
    assert (r.rc, r.out) == (1, "A\nx\n")
    r = imgstor("list", "host", "vm", "nas", "probe", "count=x")
    assert r.rc == 2 and "bad value for count" in r.err
    r = imgstor("list", "host", "vm", "nas", "probe", "force=maybe")
    assert r.rc == 2 and "expected yes or no" in r.err


@pytest.mark.parametrize("cmd", [*cli.COMMANDS, *admin.ADMIN_COMMANDS,
                                 cli.Cmd(("t",), "m:f", [cli.Arg("a", nargs="?"), cli.Arg("b")]),
                                 cli.Cmd(("t",), "m:f", [cli.Arg("a", nargs="*"),
                                                         cli.Arg("b", nargs="?")]),
                                 cli.Cmd(("t",), "m:f", [cli.Arg("a", nargs=2)])],
                         ids=lambda c: c.name)
def test_plain_words_bound_as_argparse_binds_them(cmd):
    """cli.bind_plain (no argparse on the usual path) gives argparse's answer, or leaves
    the case to argparse: every table entry, 0 to 4 plain words."""
    variable = [a for a in cmd.args if a.nargs is not None]
    simple = not variable or (len(variable) == 1 and cmd.args[-1] is variable[0]
                              and variable[0].nargs in ("?", "*", "+"))
    for n in range(5):
        words = [f"w{i}" for i in range(n)]
        fast = cli.bind_plain(cmd, words)
        try:
            slow = vars(cli._argparser(cmd, "imgstor").parse_args(words))
        except cli.UsageError:
            slow = None
        assert fast is None or fast == slow, (cmd.name, words, fast, slow)
        if simple:                  # the whole table: argparse only for errors
            assert fast == slow, (cmd.name, words, fast, slow)


def test_list_does_not_import_heavy_modules(config_path):
    code = ("import sys; from imgstor.cli import main; "
            f"rc = main(['--config', {str(config_path)!r}, 'list', 'host', 'vm', 'nas']); "
            "print(sorted(({m.split('.')[0] for m in sys.modules} | set(sys.modules)) & "
            "{'fabric', 'paramiko', 'invoke', 'filelock', 'tabulate', 'imgstor.transport', "
            "'argparse', 'inspect', 'logging', 'textwrap', 'imgstor.clihelp', "
            "'imgstor.docgen', 'imgstor.audit', 'imgstor.exitcodes'}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


# ---- rocks and imgstorageadmin ----

def test_rocks_forwarding(imgstor, capsys):
    r = imgstor("add", "host", "vm", "compute-0-0", main=cli.rocks_main)
    assert r.rc == 0 and "added VM compute-0-0-0" in r.out
    r = imgstor("list", "host", "vm", "nas", main=cli.rocks_main)
    assert r.rc == 0 and r.out.startswith("VM-HOST")
    for argv in (("list", "host", "interface"), ("sync", "config"), ("list", "host")):
        r = imgstor(*argv, main=cli.rocks_main)
        assert r.rc == 2 and "is not an imgstor storage command" in r.err
        assert "storagemap" in r.err


def test_bin_launchers(config_path):
    for name, argv in (("imgstor", ["list", "host", "vm"]), ("imgstorageadmin", ["list"]),
                       ("rocks", ["list", "host", "vm", "nas"])):
        p = subprocess.run([sys.executable, str(ROOT / "bin" / name), "--config",
                            str(config_path), *argv], capture_output=True, text=True,
                           cwd="/")
        assert p.returncode == 0, (name, p.stderr)
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(config_path),
                        "list", "host", "vmm"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "did you mean: list host vm" in p.stderr


def test_admin_list_unbusy_set_state(imgstor, state_path):
    _mark(state_path, state="error", host="compute-0-0", error="boom", since=time.time(),
          busy=Busy(op="map", pid=4242, host="fe", since=time.time() - 65))
    r = imgstor("list", main=admin.main)
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAS", "ZPOOL", "VOLUME", "HOST", "STATE", "TIME", "BUSY",
                                "ERROR"]
    assert "map pid 4242@fe 0:01:05" in lines[1] and "boom" in lines[1]
    r = imgstor("set-state", "nas-0-0", "web1-vol", "bogus", main=admin.main)
    assert r.rc == 2 and "must be one of" in r.err
    r = imgstor("set-state", "nas-0-0", "web1-vol", "unmapped", main=admin.main)
    assert r.out == "nas-0-0/web1-vol: state error -> unmapped\n"
    r = imgstor("unbusy", "nas-0-0", "web1-vol")                   # imgstor unbusy
    assert r.out == "nas-0-0/web1-vol: cleared busy marker (map by pid 4242 on fe)\n"
    assert imgstor("unbusy", "nas-0-0", "web1-vol", main=admin.main).out == \
        "nas-0-0/web1-vol was not busy\n"
    assert imgstor("unbusy", "nas-0-0", "x-vol", main=admin.main).rc == 6
    v = Store(str(state_path)).read().volumes["nas-0-0/web1-vol"]
    assert (v.state, v.host, v.error, v.busy) == ("unmapped", None, None, None)
    r = imgstor("--json", "list", main=admin.main)
    assert json.loads(r.out)["rows"][0]["busy"] is None


def test_already_done_is_success(imgstor):
    """Batch re-runs (issue 13): the same add again, a remove of a VM already gone."""
    assert imgstor("add", "host", "vm", "compute-0-0", "name=web1").rc == 0
    r = imgstor("add", "host", "vm", "compute-0-0", "name=web1")
    assert (r.rc, r.out) == (0, "VM web1 exists already on physical node compute-0-0\n"), r
    r = imgstor("add", "host", "vm", "compute-0-1", "name=web1")
    assert r.rc == 8 and "exists already (on compute-0-0)" in r.err, r
    assert imgstor("remove", "host", "vm", "web1").rc == 0
    r = imgstor("remove", "host", "vm", "web1")
    assert (r.rc, r.out) == (0, "no VM web1: removed already\n"), r
