"""The store's journal and in-memory state (issue 25): one parse per command, a
transaction that costs what it changes, group commit, folds, crash safety (a torn line,
a fold killed halfway, kill -9 in a batch), hand edits.  Counts only, never times."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from imgstor.state import Store, Vm, Volume
from imgstor.state import memory as memory_mod
from imgstor.state import store as store_mod


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "state.json"), lock_timeout=5)


def _add(store, *names, container="compute-0-0"):
    for n in names:
        with store.transaction() as st:
            st.vms[n] = Vm(name=n, container=container)


def _journal_lines(store) -> list[bytes]:
    with open(store.journal_path, "rb") as f:
        return f.read().splitlines()


def test_first_write_makes_the_file_then_transactions_append(store):
    _add(store, "a")
    assert json.loads(open(store.path).read())["vms"]["a"]["container"] == "compute-0-0"
    assert not os.path.exists(store.journal_path)          # a new file is written whole
    _add(store, "b", "c")
    lines = _journal_lines(store)
    assert len(lines) == 3 and b'"imgstor_journal"' in lines[0]
    assert b'"b"' in lines[1] and b'"a"' not in lines[1]      # only what changed
    assert list(Store(store.path).read().vms) == ["a", "b", "c"]
    assert "b" not in json.loads(open(store.path).read())["vms"]     # not folded yet


def test_one_parse_per_command_and_cost_follows_the_work(store):
    with store.transaction() as st:
        for i in range(2000):
            st.vms[f"vm{i}"] = Vm(name=f"vm{i}", container="compute-0-0")
    size = os.path.getsize(store.path)
    s = Store(store.path)
    s.read()
    assert s.stats["loads"] == 1 and s.stats["parsed_bytes"] == size
    for i in range(20):
        with s.transaction() as st:
            st.vms[f"vm{i}"].nas = "nas-0-0"
        s.read()
    assert s.stats["loads"] == 1 and s.stats["parsed_bytes"] == size   # parsed once
    assert s.stats["journal_lines"] == 20 and s.stats["folds"] == 0
    assert s.stats["journal_bytes"] < 20 * 300 + 100        # a line per change, not a file
    assert s.stats["fsyncs"] == 20                          # one thread: one each


def test_another_process_transactions_are_read_from_the_journal(store):
    _add(store, "a")
    mine = Store(store.path)
    assert list(mine.read().vms) == ["a"]
    _add(store, "b")                                        # "another process"
    with store.transaction() as st:
        del st.vms["a"]
    assert list(mine.read().vms) == ["b"]
    assert mine.stats["loads"] == 1                         # its journal lines, not a reload
    with mine.transaction() as st:
        st.vms["c"] = Vm(name="c", container="x")
    assert list(store.read().vms) == ["b", "c"]


def test_a_snapshot_never_changes_under_its_reader(store):
    _add(store, "a")
    snap = store.read()
    with store.transaction() as st:
        st.vms["a"].nas = "nas-0-0"
        st.vms["b"] = Vm(name="b", container="x")
    assert snap.vms["a"].nas is None and list(snap.vms) == ["a"]
    now = store.read()
    assert now.vms["a"].nas == "nas-0-0" and list(now.vms) == ["a", "b"]


def test_records_a_transaction_returns_are_its_own(store):
    v = store.acquire_busy("nas-0-0/v", "map",
                           create=lambda: Volume(nas="nas-0-0", zpool="tank", vol="v"))
    v.host = "somewhere"                                    # outside any transaction
    v.extra["x"] = 1
    got = store.read().volumes["nas-0-0/v"]
    assert got.host is None and got.extra == {} and got.busy is not None


def test_an_exception_leaves_memory_and_files_as_they_were(store):
    _add(store, "a", "b")
    files = open(store.path, "rb").read(), open(store.journal_path, "rb").read()
    with pytest.raises(RuntimeError):
        with store.transaction() as st:
            st.vms["a"].nas = "nas-0-0"
            del st.vms["b"]
            st.vms["c"] = Vm(name="c", container="x")
            raise RuntimeError("boom")
    st = store.read()
    assert list(st.vms) == ["a", "b"] and st.vms["a"].nas is None
    assert (open(store.path, "rb").read(), open(store.journal_path, "rb").read()) == files


def test_an_unchanged_transaction_writes_nothing(store):
    _add(store, "a", "b")
    n = store.stats["journal_lines"]
    with store.transaction() as st:
        st.vms["a"].nas = st.vms["a"].nas                   # touched, not changed
        list(st.vms.values())
    assert store.stats["journal_lines"] == n


def test_natural_order_kept_for_readers(store):
    _add(store, "vm10", "vm2")
    _add(store, "vm1")
    assert list(Store(store.path).read().vms) == ["vm1", "vm2", "vm10"]
    assert list(store.read().vms) == ["vm1", "vm2", "vm10"]


def test_a_torn_line_is_ignored_then_cut_off(store):
    _add(store, "a", "b")
    good = open(store.journal_path, "rb").read()
    with open(store.journal_path, "ab") as f:       # a writer killed mid-write
        f.write(b'deadbeef {"schema": 2, "ops": [["vms", "c", {"na')
    assert list(Store(store.path).read().vms) == ["a", "b"]
    s = Store(store.path)
    _add(s, "d")
    data = open(store.journal_path, "rb").read()
    assert data.startswith(good) and b'deadbeef' not in data and s.stats["torn_lines_cut"] == 1
    assert list(Store(store.path).read().vms) == ["a", "b", "d"]


def test_a_fold_killed_after_its_replace_loses_nothing(store, monkeypatch, capsys):
    _add(store, "a", "b", "c")
    left: list[bytes] = []
    real = Store._replace

    def replace_then_die(self, data):
        left.append(open(self.journal_path, "rb").read())  # what a kill right after leaves
        real(self, data)
    monkeypatch.setattr(Store, "_replace", replace_then_die)
    store.fold()
    monkeypatch.undo()
    assert not os.path.exists(store.journal_path)
    with open(store.journal_path, "wb") as f:
        f.write(left[0])
    assert b'"folded"' in left[0].splitlines()[-1]
    s = Store(store.path)
    assert list(s.read().vms) == ["a", "b", "c"]
    _add(s, "d")
    assert list(Store(store.path).read().vms) == ["a", "b", "c", "d"]
    assert "warning" not in capsys.readouterr().err


def test_a_hand_edited_file_wins_and_the_journal_is_set_aside(store, capsys):
    _add(store, "a")
    _add(store, "b")                                        # in the journal only
    raw = json.loads(open(store.path).read())
    raw["vms"]["a"]["nas"] = "nas-0-1"                      # the operator's edit
    with open(store.path, "w") as f:
        json.dump(raw, f, indent=2)
    st = Store(store.path).read()
    assert list(st.vms) == ["a"] and st.vms["a"].nas == "nas-0-1"
    assert "does not extend" in capsys.readouterr().err
    s = Store(store.path)
    _add(s, "c")
    aside = [n for n in os.listdir(os.path.dirname(store.path)) if ".set-aside-" in n]
    assert len(aside) == 1 and b'"b"' in open(os.path.join(
        os.path.dirname(store.path), aside[0]), "rb").read()
    assert list(Store(store.path).read().vms) == ["a", "c"]
    # the Store that knew the old file notices the edit too
    assert list(store.read().vms) == ["a", "c"]


def test_fold_when_the_journal_outgrows_the_file(store, monkeypatch):
    monkeypatch.setattr(memory_mod, "FOLD_MIN", 2000)
    _add(store, "a")
    for i in range(40):
        with store.transaction() as st:
            st.vms["a"].extra["n"] = "x" * 100 + str(i)
    assert store.stats["folds"] >= 1
    assert os.path.getsize(store.journal_path if os.path.exists(store.journal_path)
                           else store.path) <= 2000 + 400
    assert Store(store.path).read().vms["a"].extra["n"].endswith("39")


def test_group_commit_shares_fsyncs(store, monkeypatch):
    _add(store, "seed")
    real = os.fdatasync

    def slow(fd):
        time.sleep(0.01)                   # a disk: others commit meanwhile
        real(fd)
    monkeypatch.setattr(memory_mod.os, "fdatasync", slow)
    store.stats.clear()

    def worker(i):
        for j in range(25):
            with store.transaction() as st:
                st.vms[f"t{i}-{j}"] = Vm(name=f"t{i}-{j}", container="c")
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.stats["journal_lines"] == 200
    assert store.stats["fsyncs"] <= 100                     # lines written together, synced once
    assert len(Store(store.path).read().vms) == 201


def test_durable_before_the_transaction_returns(store, monkeypatch):
    _add(store, "a")
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(memory_mod.os, "fdatasync",
                        lambda fd: (real(fd), synced.append(os.fstat(fd).st_size)))
    _add(store, "b")
    assert synced and synced[-1] == os.path.getsize(store.journal_path)


def test_schema_1_file_is_folded_at_the_first_change(tmp_path):
    p = tmp_path / "state.json"
    p.write_text('{"schema": 1, "vms": {"a": {"name": "a", "container": "c"}}}')
    s = Store(str(p))
    _add(s, "b")
    assert json.loads(p.read_text())["schema"] == 2 and not os.path.exists(s.journal_path)


def test_rebuild_keeps_the_journal_beside_the_old_file(store):
    from imgstor.state import State
    _add(store, "a")
    _add(store, "b")
    kept = store.replace_all(State(), force=True)
    assert not os.path.exists(store.journal_path) and os.path.exists(kept + ".journal")
    assert store.read().vms == {}
    os.replace(kept, store.path)                            # restoring it: both files
    os.replace(kept + ".journal", store.journal_path)
    assert list(Store(store.path).read().vms) == ["a", "b"]


def test_file_layout_one_record_per_line(store):
    from imgstor.state.model import HostAttrs
    with store.transaction() as st:
        st.attrs["nas-0-0"] = HostAttrs(img_zpools=["tank"])
        st.vms["a"] = Vm(name="a", container="c")
    text = open(store.path).read()
    assert text.splitlines()[:4] == ['{', ' "schema": 2,', ' "attrs": {',
                                     '  "nas-0-0": {"img_zpools": ["tank"]}']
    assert '  "a": {"name": "a", "container": "c", "nas": null, "zpool": null}' in text
    assert Store(store.path).read_attrs()["nas-0-0"].img_zpools == ["tank"]


# ---- batches: counts grow with the work (S1), kill -9 and the same batch again ----

def _batch(config_path, tmp_path, n, monkeypatch):
    from imgstor import cli
    stores: list[Store] = []

    class Counted(Store):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            stores.append(self)
    monkeypatch.setattr(store_mod, "Store", Counted)
    f = tmp_path / f"b{n}.txt"
    f.write_text("".join(f"add host vm compute-0-{i % 2} name=v{n}-{i}\n" for i in range(n)))
    assert cli.main(["--config", str(config_path), "batch", str(f)]) == 0
    return stores[0].stats


def test_batch_costs_grow_linearly(config_path, tmp_path, monkeypatch, capsys):
    small = _batch(config_path, tmp_path, 200, monkeypatch)
    big = _batch(config_path, tmp_path, 2000, monkeypatch)
    capsys.readouterr()
    for s, n in ((small, 200), (big, 2000)):
        assert s["loads"] == 1 and s["commits"] == n and s["journal_lines"] >= n - 1
        assert s["fsyncs"] <= n + s["folds"]
    written = [s["journal_bytes"] + s["state_bytes"] for s in (small, big)]
    parsed = [s["parsed_bytes"] for s in (small, big)]
    # 10x the lines: ~10x the bytes (quadratic would be ~100x, as every item rewriting
    # the file was); the big batch starts on the small one's 200 VMs
    assert written[1] < 25 * written[0], (small, big)
    assert parsed[1] < 25 * max(parsed[0], 1000), (small, big)


def test_batch_killed_then_run_again_has_every_vm_once(config_path, tmp_path):
    n = 2000
    f = tmp_path / "b.txt"
    f.write_text("".join(f"add host vm compute-0-{i % 2} name=k{i}\n" for i in range(n)))
    journal = tmp_path / "state.json.journal"
    cmd = [sys.executable, "-m", "imgstor", "--config", str(config_path), "batch", str(f)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if journal.exists() and journal.stat().st_size > 30_000:      # ~150 items in
            break
        time.sleep(0.01)
    assert p.poll() is None, "the batch ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    got = Store(str(tmp_path / "state.json")).read().vms
    assert 0 < len(got) < n
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count(" exists already on physical node") >= len(got)
    vms = Store(str(tmp_path / "state.json")).read().vms
    assert sorted(vms) == sorted(f"k{i}" for i in range(n))
    lines = open(tmp_path / "state.json").read().splitlines()
    assert sum(1 for ln in lines if ln.startswith('  "k')) == n     # folded: each once


# A process whose threads commit transactions (group commit; a fold every few dozen
# lines, so the kill may land in one), each of two records: the thread's next VM and its
# "last" VM saying how far it got.  A name is printed once its transaction returned.
_WRITER = r"""
import sys, threading
from imgstor.state import Store, Vm
from imgstor.state import memory
memory.FOLD_MIN = 4096
s = Store(sys.argv[1], lock_timeout=60)
out = threading.Lock()
def work(t):
    for i in range(100000):
        with s.transaction() as st:
            st.vms[f"t{t}-{i}"] = Vm(name=f"t{t}-{i}", container="compute-0-0")
            st.vms[f"last{t}"] = Vm(name=f"last{t}", container="compute-0-0",
                                    extra={"i": i})
        with out:
            sys.stdout.write(f"{t} {i}\n")
            sys.stdout.flush()
for t in range(4):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_kill_9_mid_commits_every_reported_transaction_is_in_the_state(tmp_path):
    path = str(tmp_path / "state.json")
    p = subprocess.Popen([sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    reported: dict[int, int] = {}
    n = 0
    for ln in p.stdout:
        t, i = map(int, ln.split())
        reported[t] = max(reported.get(t, -1), i)
        n += 1
        if n >= 400:
            break
    os.kill(p.pid, signal.SIGKILL)
    rest, err = p.communicate(timeout=30)
    for ln in rest.splitlines():
        t, i = map(int, ln.split())
        reported[t] = max(reported.get(t, -1), i)
    assert n >= 400, err[-2000:]
    s = Store(path)
    vms = s.read().vms                            # readable, whatever the journal's tail
    for t in range(4):
        last = vms[f"last{t}"].extra["i"] if f"last{t}" in vms else -1
        assert last >= reported.get(t, -1)        # every transaction reported ok is there
        mine = {k for k in vms if k.startswith(f"t{t}-")}
        assert mine == {f"t{t}-{i}" for i in range(last + 1)}   # whole ones, no other
    with s.transaction() as st:                   # the next writer (cuts a torn tail)
        st.vms["after"] = Vm(name="after", container="compute-0-0")
    s.fold()
    whole = json.loads(open(path).read())["vms"]  # the JSON file alone holds it all
    assert set(whole) == set(vms) | {"after"}
    assert not os.path.exists(s.journal_path)


def test_imgstorageadmin_fold_makes_the_file_whole(imgstor, state_path):
    from imgstor import admin
    s = Store(str(state_path))
    _add(s, "a", "b")
    journal = state_path.parent / "state.json.journal"
    assert journal.exists() and '"b"' not in state_path.read_text()
    r = imgstor("fold", main=admin.main)
    assert r.rc == 0 and "journal folded in" in r.out
    assert not journal.exists() and '"b"' in state_path.read_text()
    assert "no journal" in imgstor("fold", main=admin.main).out
