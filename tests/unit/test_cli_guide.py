"""The Rocks img-storage guide's commands, each shape, through imgstor.cli.main and the
rocks shim (issue 12), on a temp config with a scripted cluster (no hosts reached).

The guide (shared/reference/guide/) names vm-container-0-14, compute-0-3 and nas-0-0; the
config below has those hosts.  The lab test (tests/lab/test_guide.py) replays the same
commands on real daemons."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from imgstor import cli
from imgstor.remote.protocol import Portal
from imgstor.state import Store, Volume

GUIDE_HOSTS = """
[hosts.vm-container-0-14]
role = "compute"

[hosts.compute-0-3]
role = "compute"

[hosts.frontend]
role = "compute"
"""


class FakeCluster:
    """What the workflows ask of imgstor.transport.Cluster, scripted: every host answers,
    every step succeeds; ``pools`` is what `probe` finds on each host."""
    calls: list = []
    pools: dict[str, list[str]] = {}

    def __init__(self, config, *, dry_run=False, debug=False):
        self.config = config

    def warm(self, hosts):
        pass

    def connection(self, host):
        pass

    def close(self):
        pass

    def run(self, host, argv, *, read_only=False, check=True, timeout=None):
        FakeCluster.calls.append((host, "run", argv))
        return SimpleNamespace(rc=0, stdout=f"InitiatorName=iqn.2005-03.org.open-iscsi:{host}\n",
                               stderr="")

    def step(self, host, name, /, **args):
        FakeCluster.calls.append((host, name, args))
        facts = {"probe": {"pools": [{"name": p, "health": "ONLINE"}
                                     for p in self.pools.get(host, ["tank"])]},
                 "nas.ensure_volume": {"size": 10 << 30},
                 "nas.ensure_target": {"lun": 1},
                 "compute.attach": {"device": "/dev/sdc"},
                 "nas.target_facts": {"targets": []},
                 "compute.devices": {"devices": [{"iqn": t["iqn"], "device": "/dev/sdc",
                                                  "status": "ok", "size": 10 << 30}
                                                 for t in args.get("targets", [])]},
                 }.get(name, {})
        return SimpleNamespace(host=host, step=name, changed=True, facts=facts, message="")

    def steps(self, host, steps, /, *, stop_after=None):
        return [self.step(host, n, **a) for n, a in steps]

    def prepare(self, host, name, /):
        return FakePrepared(self, host, name)

    def prepare_steps(self, host, /):
        return FakePrepared(self, host, "batch")

    def parallel(self, hosts, fn):
        return {h: fn(h) for h in hosts}


class FakePrepared:
    """Cluster.prepare's Prepared, scripted: the step runs when its arguments come."""

    def __init__(self, cl, host, name):
        self.cl, self.host, self.name = cl, host, name

    def run(self, **args):
        return self.cl.step(self.host, self.name, **args)

    def run_steps(self, steps, *, stop_after=None):
        return self.cl.steps(self.host, steps, stop_after=stop_after)

    def cancel(self):
        pass


@pytest.fixture
def guide(config_path, imgstor, monkeypatch):
    """imgstor with the guide's host names added to the unit config and a fake cluster;
    ``guide(..., rocks=True)`` goes through the rocks shim."""
    with open(config_path, "a") as f:
        f.write(GUIDE_HOSTS)
    monkeypatch.setattr("imgstor.transport.Cluster", FakeCluster)
    FakeCluster.calls = []
    FakeCluster.pools = {"nas-0-0": ["tank", "tank2", "tank3"],
                         "vm-container-0-14": ["tank", "scratch"]}

    def run(*argv, rocks=False):
        return imgstor(*argv, main=cli.rocks_main if rocks else cli.main)
    return run


def store(config_path) -> Store:
    return Store(str(config_path.parent / "state.json"))


# ---- add host vm CONTAINER [MEMBERSHIP] ----

def test_add_host_vm_membership_names_the_vm(guide, config_path):
    r = guide("add", "host", "vm", "vm-container-0-14", "compute", rocks=True)
    assert (r.rc, r.out) == (0, "added VM compute-0-14-0 on physical node vm-container-0-14\n")
    r = guide("add", "host", "vm", "vm-container-0-14", "membership=Compute")
    assert r.out == "added VM compute-0-14-1 on physical node vm-container-0-14\n"
    r = guide("add", "host", "vm", "vm-container-0-14")             # today's naming
    assert r.out == "added VM vm-container-0-14-0 on physical node vm-container-0-14\n"
    vm = store(config_path).read().vms["compute-0-14-0"]
    assert (vm.container, vm.extra) == ("vm-container-0-14", {"membership": "compute"})


@pytest.mark.parametrize("argv,rc,text", [
    (("vm-container-0-14", "compute", "membership=compute"), 2, "membership given twice"),
    (("frontend", "compute"), 2, "no rack and rank in its name"),
    (("vm-container-0-14", "com;pute"), 2, "invalid membership"),
    (("vm-container-0-14", "compute", "extra"), 2, "unrecognized arguments: extra"),
])
def test_add_host_vm_membership_errors(guide, state_path, argv, rc, text):
    r = guide("add", "host", "vm", *argv)
    assert (r.rc, r.out) == (rc, "") and text in r.err, r
    assert not state_path.exists()


# ---- set host vm nas / list host vm nas / list host vm showdisks=1 ----

def test_vm_nas_and_showdisks(guide, config_path):
    guide("add", "host", "vm", "vm-container-0-14", "compute")
    guide("add", "host", "vm", "compute-0-3", "compute")
    r = guide("set", "host", "vm", "nas", "compute-0-14-0", "nas=nas-0-0", "zpool=tank",
              rocks=True)
    assert r.rc == 0, r
    r = guide("list", "host", "vm", "nas", rocks=True)
    assert r.out.splitlines() == ["VM-HOST         NAS      ZPOOL",
                                  "compute-0-3-0   -------  -------",
                                  "compute-0-14-0  nas-0-0  tank"]
    with store(config_path).transaction() as st:
        v = Volume(nas="nas-0-0", zpool="tank", vol="compute-0-14-0-vol", size=40 << 30,
                   state="mapped", mode="direct", host="vm-container-0-14")
        st.volumes[v.key] = v
    r = guide("list", "host", "vm", "showdisks=1", rocks=True)
    lines = r.out.splitlines()
    assert lines[0].split() == ["VM", "CONTAINER", "NAS", "ZPOOL", "MODE", "DISK", "DISKSIZE"]
    assert lines[2].split() == ["compute-0-14-0", "vm-container-0-14", "nas-0-0", "tank",
                                "direct", "nas-0-0:tank/compute-0-14-0-vol", "40G"]
    assert lines[1].split() == ["compute-0-3-0", "compute-0-3", "-------", "-------",
                                "direct", "local", "----------"]
    rows = json.loads(guide("--json", "list", "host", "vm", "showdisks=true").out)["rows"]
    assert rows[0] == {"vm": "compute-0-3-0", "container": "compute-0-3", "nas": None,
                       "zpool": None, "mode": "direct", "disk": "local", "disksize": None}
    assert "DISK" not in guide("list", "host", "vm").out


# ---- set/list/remove host attr ----

def attrs(guide, *argv) -> dict:
    r = guide("--json", "list", "host", "attr", *argv)
    assert r.rc == 0, r
    return {(x["host"], x["attr"]): (x["value"], x["source"]) for x in json.loads(r.out)["rows"]}


def test_attr_set_list_remove(guide, config_path):
    a = attrs(guide)
    assert a[("nas-0-0", "img_zpools")] == ("tank,tank2", "config default")
    assert a[("nas-0-1", "img_zpools")] == ("data", "config host")
    assert a[("compute-0-1", "img_sync")] == ("true", "config host")
    assert a[("compute-0-0", "img_sync")] == ("false", "built-in default")
    assert a[("compute-0-0", "ib_net")] == (None, "built-in default")
    assert ("nas-0-0", "img_sync") not in a and ("compute-0-0", "img_zpools") not in a

    # the guide's spellings, verbatim through the shim
    for argv, shown in [
        (("nas-0-0", "img_zpools", "value=tank1,tank2"), "tank1,tank2"),
        (("nas-0-0", "img_zpools", "value=tank3:tank"), "tank3,tank"),
        (("compute-0-1", "img_sync", "value=false"), "false"),
        (("compute-0-0", "img_sync", "value=True"), "true"),
        (("vm-container-0-14", "vm_container_zpool", "value=scratch"), "scratch"),
        (("compute-0-0", "IB_net", "value=ibnet"), "ibnet"),
        (("nas-0-0", "attr=ib_net", "value=ibnet"), "ibnet"),
        (("compute-0-3", "ib_net", "ibnet"), "ibnet"),               # VALUE positional
    ]:
        FakeCluster.pools["nas-0-0"] = ["tank", "tank1", "tank2", "tank3"]
        r = guide("set", "host", "attr", *argv, rocks=True)
        assert r.rc == 0 and f"= {shown} (applies to the next map" in r.out, (argv, r)
    a = attrs(guide)
    assert a[("nas-0-0", "img_zpools")] == ("tank3,tank", "set by command")
    assert a[("compute-0-1", "img_sync")] == ("false", "set by command")
    assert a[("compute-0-0", "ib_net")] == ("ibnet", "set by command")
    assert a[("vm-container-0-14", "vm_container_zpool")] == ("scratch", "set by command")
    assert attrs(guide, "nas-0-0", "attr=img_zpools") == {
        ("nas-0-0", "img_zpools"): ("tank3,tank", "set by command")}
    assert set(attrs(guide, "IB_net")) == {(h, "ib_net") for h in (
        "nas-0-0", "nas-0-1", "compute-0-0", "compute-0-1", "vm-container-0-14",
        "compute-0-3", "frontend")}
    # the probe ran on the host whose pools were named, nowhere else
    assert {h for h, step, _ in FakeCluster.calls if step == "probe"} == \
        {"nas-0-0", "vm-container-0-14"}
    st = store(config_path).read()
    assert st.attrs["nas-0-0"].img_zpools == ["tank3", "tank"]
    # the table
    lines = guide("list", "host", "attr", "compute-0-0", rocks=True).out.splitlines()
    assert lines[0].split() == ["HOST", "ATTR", "VALUE", "SOURCE"]
    assert re.fullmatch(r"compute-0-0 +img_sync +true +set by command", lines[1]), lines
    assert re.fullmatch(r"compute-0-0 +vm_container_zpool +tank +built-in default", lines[2])

    r = guide("remove", "host", "attr", "compute-0-1", "img_sync", rocks=True)
    assert r.out == "compute-0-1: removed img_sync; now true (config host)\n"
    r = guide("remove", "host", "attr", "compute-0-1", "attr=img_sync")
    assert r.out == "compute-0-1: img_sync was not set by command (config host applies)\n"
    assert attrs(guide)[("compute-0-1", "img_sync")] == ("true", "config host")
    for h, a in (("nas-0-0", "img_zpools"), ("nas-0-0", "ib_net"), ("compute-0-0", "IB_net"),
                 ("compute-0-0", "img_sync"), ("compute-0-3", "ib_net"),
                 ("vm-container-0-14", "vm_container_zpool")):
        assert guide("remove", "host", "attr", h, a).rc == 0
    assert store(config_path).read().attrs == {}
    store(config_path).fold()          # the journal into the file (issue 25)
    assert b'"attrs"' not in (config_path.parent / "state.json").read_bytes()


@pytest.mark.parametrize("argv,rc,text", [
    (("set", "host", "attr", "compute-0-0", "kvm", "value=true"), 2,
     "'kvm' is not a storage attribute"),
    (("set", "host", "attr", "compute-0-0", "img_zpools", "value=tank"), 2,
     "img_zpools belongs to NAS hosts; compute-0-0 is a compute host"),
    (("set", "host", "attr", "nas-0-0", "img_sync", "value=true"), 2,
     "img_sync belongs to compute hosts"),
    (("set", "host", "attr", "compute-0-0", "img_sync", "value=maybe"), 2,
     "expected true or false"),
    (("set", "host", "attr", "nas-0-0", "img_zpools", "value=tank,,x"), 2, "empty zpool name"),
    (("set", "host", "attr", "nas-0-0", "img_zpools", "value=ta;nk"), 2, "invalid img_zpools"),
    (("set", "host", "attr", "nas-0-0", "img_zpools", "value=tank,nope"), 6,
     "nas-0-0 has no zpool nope (its pools: tank, tank2, tank3)"),
    (("set", "host", "attr", "compute-0-0", "vm_container_zpool", "value=tank9"), 6,
     "compute-0-0 has no zpool tank9"),
    (("set", "host", "attr", "compute-0-0", "ib_net", "value=$(id)"), 2, "invalid ib_net"),
    (("set", "host", "attr", "compute-0-0", "img_sync"), 2, "value=VALUE is required"),
    (("set", "host", "attr", "compute-9-9", "img_sync", "value=1"), 6, "unknown host"),
    (("remove", "host", "attr", "compute-0-0"), 2, "give HOST and ATTR"),
    (("list", "host", "attr", "compute-9-9"), 6, "unknown host"),
])
def test_attr_errors_change_nothing(guide, state_path, argv, rc, text):
    guide("set", "host", "attr", "compute-0-0", "img_sync", "value=false")
    journal = state_path.parent / (state_path.name + ".journal")
    before = state_path.read_bytes(), journal.exists() and journal.read_bytes()
    r = guide(*argv, rocks=True)
    assert (r.rc, r.out) == (rc, ""), r
    assert text in r.err, r
    assert (state_path.read_bytes(), journal.exists() and journal.read_bytes()) == before


def test_attrs_reach_the_workflows(guide, config_path):
    """A value set by command is what the next command's workflows see (ctx.config)."""
    guide("add", "host", "vm", "vm-container-0-14", "compute")
    guide("set", "host", "attr", "nas-0-0", "img_zpools", "value=tank3")
    r = guide("set", "host", "vm", "nas", "compute-0-14-0", "nas=nas-0-0", rocks=True)
    assert r.out == "VM compute-0-14-0: nas nas-0-0 zpool tank3\n"      # balanced over tank3
    r = guide("set", "host", "vm", "nas", "compute-0-14-0", "nas=nas-0-0", "zpool=tank")
    assert r.rc == 2 and "not in the img_zpools of nas-0-0 (tank3)" in r.err
    assert guide("--json", "list", "host", "vm").out.count('"mode": "direct"') == 1
    # img_sync set by command: the next start on that container is sync mode (its plan,
    # in a dry run: the overlay over the iSCSI disk)
    r = guide("set", "host", "attr", "vm-container-0-14", "img_sync", "value=true", rocks=True)
    assert r.rc == 0
    assert json.loads(guide("--json", "list", "host", "vm").out)["rows"][0]["mode"] == "sync"
    FakeCluster.calls = []
    r = guide("-n", "start", "host", "vm", "compute-0-14-0", rocks=True)
    assert r.rc == 0 and "(sync mode)" in r.out, r
    assert [s for h, s, a in FakeCluster.calls if s == "overlay.create"]
    guide("remove", "host", "attr", "vm-container-0-14", "img_sync")
    r = guide("start", "host", "vm", "compute-0-14-0", rocks=True)
    assert r.out == "nas-0-0:compute-0-14-0-vol mapped to vm-container-0-14:/dev/sdc\n", r
    # ib_net set by command: the next map's portal uses it; the live mapping keeps its own
    v = store(config_path).read().volumes["nas-0-0/compute-0-14-0-vol"]
    assert v.extra["portal"] == "nas-0-0:3260" and v.mode == "direct"
    guide("set", "host", "attr", "nas-0-0", "IB_net", "value=ibnet")
    FakeCluster.calls = []
    assert guide("stop", "host", "vm", "compute-0-14-0").rc == 0
    detach = [a for h, s, a in FakeCluster.calls if s == "compute.detach"]
    assert detach and detach[0]["portal"] == "nas-0-0:3260"
    FakeCluster.calls = []
    guide("start", "host", "vm", "compute-0-14-0")
    attach = [a for h, s, a in FakeCluster.calls if s == "compute.attach"]
    assert attach[0]["portal"] == Portal("nas-0-0.ibnet", 3260)     # [address, port] on the wire


# ---- the manual storagemap commands: the guide's output, --json as before ----

def test_storagemap_outputs_in_the_guide_shape(guide, config_path):
    r = guide("add", "host", "storagemap", "nas-0-0", "tank", "vol1", "compute-0-3", "10",
              rocks=True)
    assert (r.rc, r.out) == (0, "mapping  nas-0-0 : tank / vol1  on  compute-0-3\n/dev/sdc\n")
    r = guide("list", "host", "storagemap", "nas-0-0", rocks=True)
    lines = r.out.splitlines()
    assert lines[0].split() == ["ZVOL", "HOST", "ZPOOL", "TARGET", "STATE", "TIME"]
    assert lines[1].split() == ["vol1", "compute-0-3", "tank", "iqn.2001-04.com.nas-0-0-vol1",
                                "mapped", "------"]
    r = guide("remove", "host", "storagemap", "nas-0-0", "vol1", rocks=True)
    assert (r.rc, r.out) == (0, "unmapping   nas-0-0 : vol1\nSuccess\n")
    lines = guide("list", "host", "storagemap", "nas-0-0", rocks=True).out.splitlines()
    assert lines[1].split() == ["vol1", "-" * 6, "tank", "-" * 8, "unmapped", "------"]
    r = guide("remove", "host", "storageimg", "nas-0-0", "tank", "vol1", rocks=True)
    assert (r.rc, r.out) == (0, "removing   nas-0-0 : tank / vol1\nSuccess\n")
    assert guide("list", "host", "storagemap", "nas-0-0").out == \
        "ZVOL    HOST    ZPOOL    TARGET    STATE    TIME\n"
    # --json: the same one-line messages as before
    for argv, msg in [
        (("add", "host", "storagemap", "nas-0-0", "tank", "vol1", "compute-0-3", "10"),
         "nas-0-0:vol1 mapped to compute-0-3:/dev/sdc"),
        (("remove", "host", "storagemap", "nas-0-0", "vol1"),
         "nas-0-0:vol1 unmapped from compute-0-3"),
        (("remove", "host", "storageimg", "nas-0-0", "tank", "vol1"), "Success"),
    ]:
        r = guide("--json", *argv)
        assert json.loads(r.out)["message"] == msg, r


def test_storagedev_guide_columns(guide, config_path):
    guide("add", "host", "storagemap", "nas-0-0", "tank", "vol1", "compute-0-3", "10")
    r = guide("list", "host", "storagedev", "compute-0-3", rocks=True)
    head = r.out.splitlines()[0]
    assert re.split(r"\s{2,}", head) == ["ZVOL", "LVM", "STATUS", "SIZE (GB)", "BLOCK DEV",
                                         "IS STARTED", "SYNCED", "TIME", "DEVICE", "NAS",
                                         "STATE"]
    row = json.loads(guide("--json", "list", "host", "storagedev", "compute-0-3").out)["rows"][0]
    assert {k: row[k] for k in ("zvol", "device", "nas", "state", "lvm")} == \
        {"zvol": "vol1", "device": "/dev/sdc", "nas": "nas-0-0", "state": "mapped", "lvm": None}


def test_rocks_refuses_other_commands_and_attrs(guide):
    r = guide("set", "host", "attr", "compute-0-0", "kvm", "true", rocks=True)
    assert r.rc == 2 and "'kvm' is not a storage attribute imgstor keeps" in r.err
    r = guide("add", "appliance", "attr", "compute", "img_storage_vm", "true", rocks=True)
    assert r.rc == 2 and "is not an imgstor storage command" in r.err and "IB_net" in r.err


# ---- every rocks line of both guides parses, verbatim ----

GUIDE_LINES = {   # line as printed -> (command, the arguments it gives the handler)
    "rocks add host vm vm-container-0-14 compute":
        ("add host vm", {"container": "vm-container-0-14", "membership": "compute"}),
    "rocks set host vm nas compute-0-14-0 nas=nas-0-0 zpool=tank":
        ("set host vm nas", {"vm": "compute-0-14-0", "nas": "nas-0-0", "zpool": "tank"}),
    "rocks set host vm nas compute-0-14-0 nas=nas-0-0":
        ("set host vm nas", {"vm": "compute-0-14-0", "nas": "nas-0-0"}),
    "rocks start host vm compute-0-14-0": ("start host vm", {"vms": ["compute-0-14-0"]}),
    "rocks start host vm vm-hpcdev-pub03-3": ("start host vm", {"vms": ["vm-hpcdev-pub03-3"]}),
    "rocks stop host vm compute-0-14-0": ("stop host vm", {"vms": ["compute-0-14-0"]}),
    "rocks list host vm nas": ("list host vm nas", {"vms": []}),
    "rocks list host vm showdisks=1": ("list host vm", {"vms": [], "showdisks": True}),
    'rocks set host attr nas-0-0 img_zpools value="tank1,tank2"':
        ("set host attr", {"args": ["nas-0-0", "img_zpools"], "value": "tank1,tank2"}),
    "rocks set host attr compute-0-1 img_sync value=true":
        ("set host attr", {"args": ["compute-0-1", "img_sync"], "value": "true"}),
    "rocks list host storagemap nas-0-0": ("list host storagemap", {"nas": "nas-0-0"}),
    "rocks list host storagedev compute-0-3": ("list host storagedev", {"host": "compute-0-3"}),
    "rocks add host storagemap nas-0-0 tank vol1 compute-0-3 10":
        ("add host storagemap", {"nas": "nas-0-0", "zpool": "tank", "vol": "vol1",
                                 "host": "compute-0-3", "size": "10"}),
    "rocks remove host storagemap nas-0-0 vol1":
        ("remove host storagemap", {"nas": "nas-0-0", "vol": "vol1"}),
    "rocks remove host storagemap nas-0-0 compute-0-14-0-vol":
        ("remove host storagemap", {"nas": "nas-0-0", "vol": "compute-0-14-0-vol"}),
    "rocks remove host storageimg nas-0-0 tank vol1":
        ("remove host storageimg", {"nas": "nas-0-0", "zpool": "tank", "vol": "vol1"}),
}


@pytest.mark.parametrize("line", GUIDE_LINES)
def test_guide_line_parses_verbatim(line):
    import shlex
    argv = shlex.split(line)[1:]
    assert (argv[2],) in cli.ROCKS_NOUNS              # the shim forwards it
    _, cmd, kwargs = cli.parse(argv, cli.COMMANDS, "imgstor")
    name, want = GUIDE_LINES[line]
    assert cmd.name == name
    assert {k: v for k, v in kwargs.items() if v not in (None, False)} == want


def test_guide_lines_cover_the_guides():
    """Every `rocks` line the guides print (shared/reference/guide/, when present) is in
    GUIDE_LINES, except the ones that are not imgstor's."""
    from pathlib import Path
    # shared/ lies beside the checkout (here and in CI)
    here = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "guide"
    d = here if here.is_dir() else Path("/work/shared/reference/guide")
    if not d.is_dir():
        pytest.skip("the reference guides are not on this machine")
    lines = set()
    for f in d.iterdir():
        text = f.read_text()
        for ln in text.splitlines():                    # the transcripts
            ln = ln.strip().removeprefix("# ").removeprefix("/opt/rocks/bin/")
            if re.match(r"rocks (add|set|list|remove|start|stop) host ", ln):
                lines.add(ln)
        # and the prose's examples: (rocks list host vm showdisks=1), (e.g.: rocks set …)
        lines.update(m.group(1) for m in re.finditer(
            r"(?:``|\(e\.g\.: |\()(rocks (?:add|set|list|remove|start|stop) host [^`)\n]*)", text))
    lines.discard("rocks stop host vm")               # named in prose, without a VM
    assert len(lines) >= 14 and lines <= set(GUIDE_LINES), lines - set(GUIDE_LINES)


def test_attrs_of_a_host_gone_from_the_config(guide, config_path, state_path):
    from imgstor.state.model import HostAttrs
    with store(config_path).transaction() as st:
        st.attrs["compute-9-9"] = HostAttrs(img_sync=True)
    r = guide("list", "host", "attr")
    assert r.rc == 0 and "compute-9-9" not in r.out.split("\nnote:")[0]
    assert "note: the store keeps attributes for compute-9-9, which is not in" in r.out
    r = guide("remove", "host", "attr", "compute-9-9", "IB_net")
    assert r.out == "compute-9-9: ib_net was not set by command (built-in default applies)\n"
    r = guide("remove", "host", "attr", "compute-9-9", "img_sync", rocks=True)
    assert (r.rc, r.out) == (0, "compute-9-9: removed img_sync\n")
    assert store(config_path).read().attrs == {}
    r = guide("remove", "host", "attr", "compute-9-9", "img_sync")
    assert r.rc == 6 and "unknown host 'compute-9-9'" in r.err
