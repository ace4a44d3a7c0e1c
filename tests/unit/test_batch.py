"""`imgstor batch` (issue 13): the file's grammar, the scheduler's ordering, failure
isolation, exit codes, re-runs.  Hosts are a scripted cluster (test_cli_guide's)."""
from __future__ import annotations

import json
import threading

import pytest
from test_cli_guide import FakeCluster

from imgstor import sched
from imgstor.batch import read_items
from imgstor.state import Store

# ---- the scheduler ----

def test_dependencies_same_key_in_order_and_barriers():
    k = frozenset
    deps = sched.dependencies([k({"a"}), k({"b"}), k({"a"}), None, k({"b"}), k({"a", "b"})])
    assert deps == [set(), set(), {0}, {0, 1, 2}, {3}, {3, 4}]


def test_distinct_keys_run_at_once_same_key_in_order():
    both = threading.Barrier(2, timeout=10)      # broken unless the two run together
    order: list[str] = []

    def first():
        both.wait()
        order.append("a1")
        return "a1"

    def other():
        both.wait()
        return "b"

    jobs = [sched.Job(["a"], first), sched.Job(["b"], other),
            sched.Job(["a"], lambda: order.append("a2") or "a2")]
    assert sched.run(jobs, workers=4) == ["a1", "b", "a2"]
    assert order == ["a1", "a2"]


def test_a_failed_job_is_its_result_and_the_next_one_runs():
    def bad():
        raise ValueError("boom")
    out = sched.run([sched.Job(["v"], bad), sched.Job(["v"], lambda: "next"),
                     sched.Job(None, lambda: "barrier")], workers=1)
    assert isinstance(out[0], ValueError) and out[1:] == ["next", "barrier"]


# ---- the file ----

def test_read_items_grammar():
    data = (b"# a comment\n\n  add host vm compute-0-0 name=a   # trailing\n"
            b"add host vm 'compute-0-0' name=b\r\nbad\x00line\nunbalanced 'quote\n"
            b"\xff\xfe\n   # indented comment\n")
    items = read_items(data)
    assert [(i.n, i.line) for i in items] == [(1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]
    assert items[0].argv == ["add", "host", "vm", "compute-0-0", "name=a"]
    assert items[1].argv == ["add", "host", "vm", "compute-0-0", "name=b"]
    assert "NUL byte" in items[2].error.message and items[2].text == "bad\\x00line"
    assert "quotation" in items[3].error.message
    assert "not UTF-8" in items[4].error.message


# ---- the command ----

@pytest.fixture
def batch(imgstor, tmp_path, monkeypatch):
    monkeypatch.setattr("imgstor.transport.Cluster", FakeCluster)
    FakeCluster.calls = []

    def run(text: str | bytes, *flags: str):
        p = tmp_path / "batch.txt"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return imgstor("batch", str(p), *flags)
    return run


def test_bad_lines_fail_alone_before_anything_runs(batch, state_path):
    r = batch(b"add host vm compute-0-0 name=good1\n"
              b"add host vm compute-0-0 name=$(reboot)\n"          # hostile name
              b"add host storagemap nas-0-0 tank v1 compute-9-9 1G\n"  # unknown host
              b"add host vm compute-0-0 name=x\x00y\n"             # NUL byte
              b"batch other.txt\n"                                 # nested
              b"--dry-run add host vm compute-0-0 name=c\n"        # global flag on an item
              b"add host vm compute-0-1 name=good2\n", "--json")
    assert r.rc == 1, r
    lines = [json.loads(line) for line in r.out.splitlines()]     # JSON lines, streamed
    assert lines[-1] == {"version": 1, "command": "batch", "exit_code": 1,
                         "summary": {"items": 7, "ok": 2, "failed": 5}}
    assert [x["item"] for x in lines[:5]] == [2, 3, 4, 5, 6]      # refused: at once
    res = sorted(lines[:-1], key=lambda x: x["item"])
    assert [x["exit_code"] for x in res] == [0, 2, 6, 2, 2, 2, 0]
    assert [x["item"] for x in res] == list(range(1, 8))
    assert set(res[0]) == {"version", "item", "line", "command", "exit_code", "message",
                           "rows"}
    assert "batch inside a batch" in res[4]["message"]
    assert "global flags" in res[5]["message"]
    assert res[0]["command"] == "add host vm compute-0-0 name=good1"
    assert sorted(Store(str(state_path)).read().vms) == ["good1", "good2"]
    assert not [c for c in FakeCluster.calls if "v1" in str(c)]     # never ran anywhere


def test_maps_unmaps_in_file_order_and_a_rerun_succeeds(batch, state_path):
    text = "".join(f"add host storagemap nas-0-0 tank v{i} compute-0-0 1G\n"
                   for i in range(5))
    text += "remove host storagemap nas-0-0 v0\nremove host storageimg nas-0-0 tank v0\n"
    r = batch(text, "--jobs", "3")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["ITEM", "LINE", "RC", "MESSAGE"]
    assert sorted(ln.split()[:3] for ln in lines[1:8]) == sorted([str(i), str(i), "0"]
                                                                 for i in range(1, 8))
    assert "v0 unmapped from compute-0-0" in [ln for ln in lines if ln.startswith("6 ")][0]
    assert lines[-1] == "7 items: 7 ok, 0 failed"
    vols = Store(str(state_path)).read().volumes
    assert sorted(vols) == [f"nas-0-0/v{i}" for i in range(1, 5)]
    assert {v.state for v in vols.values()} == {"mapped"}
    # v0's three items ran in file order
    v0 = [c[1] for c in FakeCluster.calls if c[2] and "v0" in json.dumps(c[2], default=str)]
    assert v0.index("nas.remove_target") < v0.index("nas.destroy_volume")
    # run again (after a crash): everything is already done, success
    r = batch(text)
    assert r.rc == 0, r
    teardown = "".join(f"remove host storagemap nas-0-0 v{i}\n"
                       f"remove host storageimg nas-0-0 tank v{i}\n" for i in range(5))
    assert batch(teardown).rc == 0
    r = batch(teardown)
    assert r.rc == 0, r
    assert "nas-0-0:v3 is not mapped (no record of it in the state store)" in r.out


def test_dry_run_applies_to_every_item(batch, state_path):
    r = batch("add host vm compute-0-0 name=a\n"
              "add host storagemap nas-0-0 tank v1 compute-0-0 1G\n", "--dry-run")
    assert r.rc == 0, r
    assert "dry run" in r.out
    assert not state_path.exists() or not Store(str(state_path)).read().vms


def test_start_stop_several_vms(batch, imgstor, monkeypatch):
    monkeypatch.setattr("imgstor.transport.Cluster", FakeCluster)
    for n in ("a", "b"):
        assert imgstor("add", "host", "vm", "compute-0-0", f"name={n}").rc == 0
        assert imgstor("set", "host", "vm", "nas", n, "nas=nas-0-0").rc == 0
    r = imgstor("start", "host", "vm", "a", "b", "nope")
    assert r.rc == 1, r
    rows = r.out.splitlines()
    assert rows[1].startswith("a ") and "mapped to compute-0-0" in rows[1]
    assert rows[2].startswith("b ") and "mapped to compute-0-0" in rows[2]
    assert rows[3].split()[:2] == ["nope", "6"]
    r = imgstor("stop", "host", "vm", "a", "b", "--json")
    assert r.rc == 0 and [x["exit_code"] for x in json.loads(r.out)["rows"]] == [0, 0], r


def test_batch_usage_errors(batch, imgstor, tmp_path):
    assert imgstor("batch", str(tmp_path / "none.txt")).rc == 2
    assert batch("list host vm\n", "--jobs", "0").rc == 2
    assert batch("list host vm\n", "--jobs", "x").rc == 2
    r = batch("")
    assert r.rc == 0 and r.out.splitlines()[-1] == "0 items: 0 ok, 0 failed", r
