"""--json carries everything the text shows (issue 26; operator review bug 5): one
versioned document, every text column a key of every row, the lines under the table as
"messages", numbers as numbers, times as ISO 8601; an error is a JSON document on stdout
with the same exit code."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_guide import FakeCluster

from imgstor import admin, cli, jobs
from imgstor.state import Busy, Store, Volume
from imgstor.state.model import Job

ROOT = Path(__file__).resolve().parents[2]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


@pytest.fixture
def populated(imgstor, config_path, state_path, monkeypatch):
    """A store with a VM, a direct map with a device, a volume in error, a busy one, a sync
    volume copying (a job with progress) and one due for its pull, and attributes."""
    monkeypatch.setattr("imgstor.transport.Cluster", FakeCluster)
    FakeCluster.calls = []
    # check and refresh's restore: nothing differs; refresh's pull: no monitor started
    monkeypatch.setattr("imgstor.workflows.check.plan", lambda ctx, **kw: [])
    monkeypatch.setattr("imgstor.workflows.storagemap.sync.start_jobs", lambda ctx, jobs: True)
    assert imgstor("add", "host", "vm", "compute-0-0", "name=web1").rc == 0
    assert imgstor("set", "host", "vm", "nas", "web1", "nas=nas-0-0", "zpool=tank").rc == 0
    assert imgstor("set", "host", "zvolattr", "nas-0-0", "sv", "frequency", "10m").rc == 0
    assert imgstor("set", "host", "storageattr", "nas-0-0", "uploadspeed", "10M").rc == 0
    now = time.time()
    store = Store(str(state_path))
    with store.transaction() as st:
        for v in (Volume("nas-0-0", "tank", "web1-vol", size=10 << 30, host="compute-0-0",
                         target="iqn.2001-04.com.nas-0-0-web1-vol", state="mapped",
                         mode="direct", device="/dev/sdc", since=now - 100),
                  Volume("nas-0-0", "tank", "bad", size=1 << 30, host="compute-0-1",
                         state="error", error="compute-0-1: login failed", since=now - 5),
                  Volume("nas-0-1", "data", "busy", size=1 << 30, state="merging", mode="sync",
                         host="compute-0-0", since=now - 83,
                         busy=Busy(op="map", pid=4242, host="fe", since=now - 65)),
                  Volume("nas-0-0", "tank", "sv", size=4 << 30, host="compute-0-1",
                         target="iqn.2001-04.com.nas-0-0-sv", state="NAS->VM", mode="sync",
                         device="/dev/nbd0", since=now - 30),
                  Volume("nas-0-0", "tank", "due", size=1 << 30, host="compute-0-1",
                         state="mapped", mode="sync", device="/dev/zvol/tank/due",
                         since=now - 7200)):
            st.volumes[v.key] = v
        st.jobs["sync-in-0123456789ab"] = Job(id="sync-in-0123456789ab", kind="sync-in",
                                              volume="nas-0-0/sv", phase="copy",
                                              created=now - 30, updated=now)
    jobs.write_progress(store, "sync-in-0123456789ab", done=1 << 30, total=4 << 30,
                        rate=100 << 20)
    return store


def run(imgstor, *argv, main=cli.main):
    """(text result, JSON result, the JSON document)."""
    text = imgstor(*argv, main=main)
    js = imgstor("--json", *argv, main=main)
    assert js.err == "", js
    return text, js, json.loads(js.out)


LISTS = [("list", "host", "vm"), ("list", "host", "vm", "showdisks=1"),
         ("list", "host", "vm", "nas"), ("list", "host", "storagemap"),
         ("list", "host", "storagemap", "nas-0-0"), ("list", "host", "storagemap", "--verify"),
         ("list", "host", "storagedev", "compute-0-1"),
         ("list", "host", "attr"), ("list", "host", "zvolattr", "nas-0-0"),
         ("list", "host", "storageattr"), ("ping",), ("refresh",), ("check",)]


@pytest.mark.parametrize("argv", LISTS, ids=" ".join)
def test_every_text_column_is_a_key_of_every_row(populated, imgstor, argv):
    text, js, doc = run(imgstor, *argv)
    assert text.rc == js.rc == doc["exit_code"], (text, js)
    assert doc["version"] == 1 and doc["command"] == cli.parse(
        list(argv), cli.COMMANDS, "imgstor")[1].name
    lines = text.out.splitlines()
    headers = re.split(r"\s{2,}", lines[0].strip())
    rows = doc["rows"]
    assert len(lines) == 1 + len(rows) + len(doc["messages"]), text.out
    assert lines[1 + len(rows):] == doc["messages"]        # the footer, too
    _, cmd, kwargs = cli.parse(list(argv), cli.COMMANDS, "imgstor")
    from imgstor.workflows.context import Ctx
    out = cli._load(cmd.handler)(Ctx(config_path=str(populated.path).replace(
        "state.json", "imgstor.toml")), **kwargs)
    assert [c[1].upper() for c in out.columns] == headers
    for row in rows:
        for c in out.columns:
            assert c[0] in row, (argv, c[0], row)


def test_list_storagemap_has_error_device_numbers_and_iso_times(populated, imgstor):
    """Review bug 5: no `error`, no `device`; TIME, PROGRESS and NEXTSYNC were display
    strings."""
    text, _, doc = run(imgstor, "list", "host", "storagemap")
    rows = {r["zvol"]: r for r in doc["rows"]}
    assert rows["web1-vol"]["device"] == "/dev/sdc" and rows["web1-vol"]["size"] == 10 << 30
    assert rows["bad"]["error"] == "compute-0-1: login failed"
    assert "nas-0-0:bad: last error: compute-0-1: login failed" in text.out
    assert doc["messages"] == ["nas-0-0:bad: last error: compute-0-1: login failed"]
    assert 82 <= rows["busy"]["time"] <= 120 and isinstance(rows["busy"]["time"], int)
    assert "0:01:2" in text.out                                   # the same as H:MM:SS
    assert rows["busy"]["busy"]["op"] == "map" and rows["busy"]["busy"]["pid"] == 4242
    assert ISO.fullmatch(rows["busy"]["busy"]["since"]) and ISO.fullmatch(rows["busy"]["since"])
    p = rows["sv"]["progress"]
    assert (p["percent"], p["done_bytes"], p["total_bytes"], p["rate"]) == \
        (25.0, 1 << 30, 4 << 30, 100 << 20) and p["eta_seconds"] == 31, p
    assert "25% 1.0/4.0 GiB, ETA 0:00:30" in text.out or "ETA 0:00:31" in text.out
    assert ISO.fullmatch(rows["due"]["nextsync"]), rows["due"]
    assert rows["web1-vol"]["nextsync"] is None and rows["web1-vol"]["time"] is None


def test_numbers_as_numbers_elsewhere(populated, imgstor):
    _, _, doc = run(imgstor, "list", "host", "vm", "showdisks=1")
    assert doc["rows"][0]["disksize"] == 10 << 30
    text, _, doc = run(imgstor, "list", "host", "zvolattr", "nas-0-0")
    sv = next(r for r in doc["rows"] if r["zvol"] == "sv")
    assert (sv["frequency"], sv["frequency_source"]) == (600, "zvolattr")
    assert (sv["uploadspeed"], sv["uploadspeed_source"]) == (10 << 20, "storageattr")
    assert re.search(r"sv\s+600\s+-+\s+\(10M\)", text.out), text.out
    _, _, doc = run(imgstor, "list", "host", "storageattr", "nas-0-0")
    assert {r["attr"]: r["value"] for r in doc["rows"]}["uploadspeed"] == 10 << 20
    text, _, doc = run(imgstor, "list", main=admin.main)
    busy = next(r for r in doc["rows"] if r["vol"] == "busy")
    assert busy["busy"]["seconds"] >= 65 and busy["time"] >= 83
    assert "map pid 4242@fe 0:01:" in text.out


def test_refresh_and_ping_say_why_a_host_is_down(populated, imgstor, monkeypatch):
    """Review bug 5: `ping --json` dropped why a host is unreachable."""
    from imgstor.errors import TransportError
    from imgstor.workflows import probe
    real_step = FakeCluster.step

    def step(self, host, name, /, **args):
        if host == "nas-0-1":
            raise TransportError("nas-0-1 (10.0.0.9:22): cannot connect: Connection refused")
        return real_step(self, host, name, **args)

    def parallel(self, hosts, fn):
        out = {}
        for h in hosts:
            try:
                out[h] = fn(h)
            except TransportError as e:
                out[h] = e
        return out
    monkeypatch.setattr(FakeCluster, "step", step)
    monkeypatch.setattr(FakeCluster, "parallel", parallel)
    text, _, doc = run(imgstor, "ping")
    assert doc["exit_code"] == 11
    row = next(r for r in doc["rows"] if r["host"] == "nas-0-1")
    assert row["status"] == "unreachable" and "Connection refused" in row["error"]
    assert doc["messages"] == [f"nas-0-1: {row['error']}"]
    monkeypatch.setattr(probe, "probe_one", lambda cluster, host, role, timeout:
                        probe.HostProbe(host, role, host != "nas-0-1", 0.01,
                                        error=None if host != "nas-0-1" else "refused"))
    _, _, doc = run(imgstor, "refresh")
    down = next(r for r in doc["rows"] if r["host"] == "nas-0-1")
    assert down["up"] is False and down["error"] == "refused" and ISO.fullmatch(down["since"])


# ---- errors ----

@pytest.mark.parametrize("argv,rc,kind,text", [
    (("list", "host", "vm", "nope"), 6, "NotFound", "unknown VM 'nope'"),
    (("lsit", "host", "vm"), 2, "UsageError", "did you mean: list host vm"),
    (("add", "host", "storagemap", "nas-0-0", "tank", "v;1", "compute-0-0", "1G"), 2,
     "UsageError", "v;1"),
    (("add", "host", "vm", "compute-9-9"), 6, "NotFound", "unknown host 'compute-9-9'"),
])
def test_errors_as_json_on_stdout_with_the_same_exit_code(imgstor, argv, rc, kind, text):
    r = imgstor(*argv)
    assert r.rc == rc and r.out == "" and text in r.err, r
    r = imgstor("--json", *argv)
    assert (r.rc, r.err) == (rc, ""), r
    doc = json.loads(r.out)
    assert doc["version"] == 1 and doc["exit_code"] == rc
    err = doc["error"]
    assert (err["type"], err["exit_code"]) == (kind, rc) and text in err["message"]
    assert isinstance(err["details"], dict)


def test_config_error_and_remote_error_as_json(tmp_path, imgstor, monkeypatch):
    p = subprocess.run([sys.executable, "-m", "imgstor", "--config", str(tmp_path / "no.toml"),
                        "list", "host", "vm", "--json"], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 3 and p.stderr == ""
    doc = json.loads(p.stdout)
    assert doc["error"]["type"] == "ConfigError" and doc["command"] == "list host vm"
    from imgstor.errors import RemoteCommandError
    monkeypatch.setattr("imgstor.transport.Cluster", FakeCluster)

    def step(self, host, name, /, **args):
        raise RemoteCommandError(host, ["zfs", "create", "tank/v1"], 1, "cannot create")
    monkeypatch.setattr(FakeCluster, "step", step)
    r = imgstor("--json", "add", "host", "storagemap", "nas-0-0", "tank", "v1",
                "compute-0-0", "1G")
    doc = json.loads(r.out)
    assert r.rc == doc["exit_code"] == doc["error"]["exit_code"] == 10, r
    assert doc["error"]["details"]["argv"] == ["zfs", "create", "tank/v1"]
    assert doc["error"]["details"]["host"] == "nas-0-0"


def test_ctrl_c_is_130(imgstor, monkeypatch):
    def interrupted(ctx, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr("imgstor.workflows.vms.list_vms", interrupted)
    r = imgstor("list", "host", "vm")
    assert r.rc == 130 and "interrupted" in r.err
    r = imgstor("list", "host", "vm", "--json")
    assert r.rc == 130 and json.loads(r.out)["error"]["type"] == "Interrupted"


def test_a_message_carries_the_text_too(populated, imgstor):
    text, _, doc = run(imgstor, "add", "host", "storagemap", "nas-0-0", "tank", "v9",
                       "compute-0-0", "1G")
    assert doc["message"] == "nas-0-0:v9 mapped to compute-0-0:/dev/sdc"
    assert doc["text"] + "\n" == text.out and "/dev/sdc" in doc["text"]
