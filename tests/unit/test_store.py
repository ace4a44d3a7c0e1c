"""state/: locked JSON store (concurrency, atomic replace, modes, schema, lock holder)
and busy markers (refusal, stale takeover, zombies, pid reuse)."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import time

import pytest

from imgstor.errors import BusyError, LockTimeout, NotFound, StateError
from imgstor.remote import procfs
from imgstor.state import Busy, State, Store, Vm, Volume
from imgstor.state import store as store_mod
from imgstor.state.model import Job

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "sub" / "state.json"), lock_timeout=5)


def _vol(nas="nas-0-0", vol="vm1-vol"):
    return Volume(nas=nas, zpool="tank", vol=vol)


# ---- transactions ----

def test_missing_file_is_empty_and_modes(store, tmp_path):
    assert store.read() == State()
    with store.transaction() as st:
        st.vms["vm1"] = Vm(name="vm1", container="compute-0-0")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.lock_path).st_mode) == 0o600
    assert not os.path.exists(store.holder_path)
    raw = json.loads(open(store.path).read())
    assert raw["schema"] == 2 and raw["vms"]["vm1"]["container"] == "compute-0-0"
    assert store.read().vms["vm1"] == Vm(name="vm1", container="compute-0-0")


def test_roundtrip_full_model(store):
    v = Volume(nas="nas-0-0", zpool="tank", vol="vm1-vol", size=10 * 2**30,
               host="compute-0-0", target="iqn.2024-01.org.imgstor:vm1", state="NAS->VM",
               mode="sync", device="/dev/sdb", since=123.5, error=None,
               busy=Busy(op="map", pid=1, host="fe", since=1.0, starttime=5),
               extra={"chap_user": "u"})
    with store.transaction() as st:
        st.volumes[v.key] = v
        st.jobs["j1"] = j = Job(id="j1", kind="sync-in", volume=v.key, phase="copy",
                                created=1.0, updated=1.5, attempts=2, last_error="x",
                                extra={"snapshot": "imgstor-1"})
    st = store.read()
    assert st.volumes["nas-0-0/vm1-vol"] == v and st.jobs == {"j1": j}


def test_exception_writes_nothing(store):
    with store.transaction() as st:
        st.vms["a"] = Vm(name="a", container="c")
    before = open(store.path, "rb").read()
    with pytest.raises(RuntimeError):
        with store.transaction() as st:
            st.vms["b"] = Vm(name="b", container="c")
            raise RuntimeError("boom")
    assert open(store.path, "rb").read() == before


def _worker(path, i, n):
    s = Store(path, lock_timeout=120)
    for j in range(n):
        with s.transaction() as st:
            st.vms[f"vm{i}-{j}"] = Vm(name=f"vm{i}-{j}", container=f"c{i}")
    os._exit(0)


def test_concurrent_writers(store):
    procs = [FORK.Process(target=_worker, args=(store.path, i, 20)) for i in range(50)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    vms = store.read().vms
    assert len(vms) == 1000
    assert all(f"vm{i}-{j}" in vms for i in range(50) for j in range(20))


def _killed_writer(path):
    s = Store(path)
    s._before_replace = lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
    with s.transaction() as st:
        st.vms["new"] = Vm(name="new", container="c")
    s.fold()                     # the whole file written: killed before its replace
    os._exit(0)  # not reached


def test_writer_killed_mid_write_leaves_old_file(store):
    with store.transaction() as st:
        st.vms["old"] = Vm(name="old", container="c")
    before = open(store.path, "rb").read()
    p = FORK.Process(target=_killed_writer, args=(store.path,))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert open(store.path, "rb").read() == before
    # its transaction was durable in the journal before the fold began
    assert sorted(store.read().vms) == ["new", "old"]
    assert os.path.exists(f"{store.path}.tmp-{p.pid}")      # the half-done temp file
    with store.transaction() as st:                          # lock free again
        st.vms["next"] = Vm(name="next", container="c")
    store.fold()                                             # cleans up
    assert not os.path.exists(f"{store.path}.tmp-{p.pid}")
    assert sorted(store.read().vms) == ["new", "next", "old"]
    assert sorted(Store(store.path).read().vms) == ["new", "next", "old"]


@pytest.mark.parametrize("content,match", [
    (b'{"schema": 3, "vms": {}}', "schema 3"),
    (b'{"schema": true, "vms": {}}', "schema True"),
    (b'{"schema": 1, "jobs": {"j": {}}}', "never wrote"),
    (b'{"schema": 2, "jobs": {"j": {"id": "j", "kind": "dance", "volume": "n/v", "phase": "a", '
     b'"created": 0, "updated": 0}}}', "unknown job kind"),
    (b'{"schema": 2, "jobs": {"j": {"id": "k", "kind": "pull", "volume": "n/v", "phase": "a", '
     b'"created": 0, "updated": 0}}}', "does not match id"),
    (b'{"vms": {}}', "schema None"),
    (b'{"schema": 1, "vms": {"a": {"name": "a"}}}', "container"),
    (b'{"schema": 1, "vms": {}, "colour": 1}', "colour"),
    (b'{"schema": 1, "volumes": {"n/v": {"nas": "n", "zpool": "t", "vol": "v", "state": "odd"}}}', "odd"),
    (b'{"schema": 1, "volumes": {"x/v": {"nas": "n", "zpool": "t", "vol": "v"}}}', "key"),
    (b'{"schema": 1, "vms": {', "not valid JSON"),
    (b'[1, 2]', "not an object"),
])
def test_unreadable_file_refused_and_kept(store, content, match):
    os.makedirs(os.path.dirname(store.path), exist_ok=True)
    with open(store.path, "wb") as f:
        f.write(content)
    with pytest.raises(StateError, match=match) as e:
        store.read()
    assert store.path in e.value.message
    with pytest.raises(StateError):
        with store.transaction() as st:
            st.vms["x"] = Vm(name="x", container="c")
    assert open(store.path, "rb").read() == content


def _holder(path, ready, done):
    s = Store(path)
    with s.transaction():
        ready.set()
        done.wait(30)
    os._exit(0)


def test_lock_timeout_names_holder(store):
    ready, done = FORK.Event(), FORK.Event()
    p = FORK.Process(target=_holder, args=(store.path, ready, done))
    p.start()
    try:
        assert ready.wait(30)
        s = Store(store.path, lock_timeout=0.2)
        with pytest.raises(LockTimeout) as e:
            with s.transaction():
                pass
        msg = e.value.message
        assert f"pid {p.pid}" in msg and store_mod.this_host() in msg and store.path in msg
        assert isinstance(e.value, BusyError)
    finally:
        done.set()
        p.join(30)
    with Store(store.path, lock_timeout=1).transaction():
        pass


# ---- busy markers ----

def test_busy_refuses_second_op(store):
    v = store.acquire_busy("nas-0-0/vm1-vol", "map", create=_vol)
    assert v.busy.pid == os.getpid() and v.busy.op == "map"
    assert v.busy.starttime == store_mod.proc_starttime(os.getpid())
    with pytest.raises(BusyError) as e:
        store.acquire_busy("nas-0-0/vm1-vol", "unmap")
    msg = e.value.message
    assert msg.startswith("nas-0-0/vm1-vol is busy: map by pid")
    assert "imgstorageadmin unbusy nas-0-0 vm1-vol" in msg
    assert store.release_busy("nas-0-0/vm1-vol")
    assert store.read().volumes["nas-0-0/vm1-vol"].busy is None
    store.acquire_busy("nas-0-0/vm1-vol", "unmap").busy.op == "unmap"


def test_acquire_missing_volume(store):
    with pytest.raises(NotFound):
        store.acquire_busy("nas-0-0/nope-vol", "map")
    assert not os.path.exists(store.path)


def test_busy_context_releases_on_exception(store):
    with pytest.raises(RuntimeError):
        with store.busy("nas-0-0/vm1-vol", "map", create=_vol) as v:
            assert store.read().volumes[v.key].busy.op == "map"
            raise RuntimeError("remote step failed")
    assert store.read().volumes["nas-0-0/vm1-vol"].busy is None


def test_release_only_by_holder(store):
    store.acquire_busy("nas-0-0/vm1-vol", "map", create=_vol)
    assert not store.release_busy("nas-0-0/vm1-vol", pid=os.getpid() + 1)
    assert store.read().volumes["nas-0-0/vm1-vol"].busy is not None
    assert store.unbusy("nas-0-0/vm1-vol").op == "map"
    assert store.unbusy("nas-0-0/vm1-vol") is None


def _busy_and_die(path):
    s = Store(path)
    s.acquire_busy("nas-0-0/vm1-vol", "map", create=_vol)
    os._exit(0)   # no release: a killed command


def test_stale_marker_taken_over(store, capsys):
    p = FORK.Process(target=_busy_and_die, args=(store.path,))
    p.start()
    p.join(30)
    assert store.read().volumes["nas-0-0/vm1-vol"].busy.pid == p.pid
    v = store.acquire_busy("nas-0-0/vm1-vol", "unmap")
    assert v.busy.pid == os.getpid()
    assert "stale busy marker" in capsys.readouterr().err


def test_zombie_counts_as_dead(store):
    pid = os.fork()
    if pid == 0:
        try:
            Store(store.path).acquire_busy("nas-0-0/vm1-vol", "map", create=_vol)
        finally:
            os._exit(0)
    try:
        for _ in range(200):                       # wait for the child to be a zombie
            st = procfs.stat(pid)
            if st and st.state == "Z":
                break
            time.sleep(0.05)
        assert procfs.stat(pid).state == "Z"
        assert not store_mod.pid_alive(pid)
        assert store.acquire_busy("nas-0-0/vm1-vol", "unmap").busy.pid == os.getpid()
    finally:
        os.waitpid(pid, 0)


def test_reused_pid_is_stale(store):
    # Our parent is alive, but the marker's start time belongs to another process.
    ppid = os.getppid()
    with store.transaction() as st:
        v = st.volumes["nas-0-0/vm1-vol"] = _vol()
        v.busy = Busy(op="map", pid=ppid, host=store_mod.this_host(), since=time.time(),
                      starttime=(store_mod.proc_starttime(ppid) or 0) + 1)
    assert store.acquire_busy("nas-0-0/vm1-vol", "unmap").busy.pid == os.getpid()


def test_live_marker_of_other_process_refused(store):
    ppid = os.getppid()
    with store.transaction() as st:
        v = st.volumes["nas-0-0/vm1-vol"] = _vol()
        v.busy = Busy(op="map", pid=ppid, host=store_mod.this_host(), since=time.time(),
                      starttime=store_mod.proc_starttime(ppid))
    with pytest.raises(BusyError, match=f"pid {ppid}"):
        store.acquire_busy("nas-0-0/vm1-vol", "unmap")


def test_marker_from_other_host_refused(store):
    with store.transaction() as st:
        v = st.volumes["nas-0-0/vm1-vol"] = _vol()
        v.busy = Busy(op="map", pid=999999999, host="other-frontend", since=time.time())
    with pytest.raises(BusyError, match="on other-frontend"):
        store.acquire_busy("nas-0-0/vm1-vol", "unmap")


def test_state_directory_writable_by_others_is_refused(tmp_path) -> None:
    """Audit L13: root does not write its state into a directory others can write."""
    import os

    from imgstor.errors import StateError
    from imgstor.state.store import Store
    d = tmp_path / "st"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    with pytest.raises(StateError, match="not writable by group or others"):
        with Store(str(d / "state.json")).transaction():
            pass
    assert not (d / "state.json").exists()


def test_schema_1_is_read_and_written_back_as_2(tmp_path) -> None:
    from imgstor.state.model import Job, Lease
    from imgstor.state.store import Store
    p = tmp_path / "state.json"
    p.write_text('{"schema": 1, "vms": {"a": {"name": "a", "container": "c"}}, '
                 '"volumes": {}, "jobs": {}}')
    os.chmod(p, 0o600)
    store = Store(str(p))
    assert store.read().vms["a"].container == "c"
    with store.transaction() as st:
        st.jobs["j1"] = Job(id="j1", kind="sync-in", volume="nas-0-0/v", phase="copy",
                            created=1.0, updated=2.0,
                            owner=Lease(pid=7, host="fe", since=1.0, starttime=9))
    raw = json.loads(p.read_text())
    assert raw["schema"] == 2 and raw["jobs"]["j1"]["owner"]["pid"] == 7
    again = store.read()
    assert again.jobs["j1"].owner.starttime == 9 and again.jobs_of("nas-0-0/v")[0].id == "j1"


# ---- attrs: the storage attributes `set host attr` keeps (issue 12) ----

def test_attrs_roundtrip_and_layout(store):
    from imgstor.state.model import HostAttrs
    with store.transaction() as st:
        st.vms["vm1"] = Vm(name="vm1", container="compute-0-0")
    store.fold()
    assert b'"attrs"' not in open(store.path, "rb").read()      # none set: not written
    assert store.read_attrs() == {}
    with store.transaction() as st:
        st.attrs["nas-0-0"] = HostAttrs(img_zpools=["tank1", "tank2"])
        st.attrs["compute-0-1"] = HostAttrs(img_sync=True, ib_net="ibnet")
    store.fold()
    raw = json.loads(open(store.path).read())
    assert list(raw)[:2] == ["schema", "attrs"]                  # where read_attrs looks
    assert raw["attrs"] == {"compute-0-1": {"img_sync": True, "ib_net": "ibnet"},
                            "nas-0-0": {"img_zpools": ["tank1", "tank2"]}}
    assert store.read().attrs == store.read_attrs() == {
        "compute-0-1": HostAttrs(img_sync=True, ib_net="ibnet"),
        "nas-0-0": HostAttrs(img_zpools=["tank1", "tank2"])}
    # a hand-edited file with attrs elsewhere is still read (a full parse)
    raw = {k: raw[k] for k in ("schema", "vms", "volumes", "jobs", "attrs")}
    with open(store.path, "w") as f:
        json.dump(raw, f)
    assert store.read_attrs()["nas-0-0"].img_zpools == ["tank1", "tank2"]


@pytest.mark.parametrize("attrs,match", [
    ({"nas-0-0": {"img_zpool": ["t"]}}, "unknown field"),
    ({"nas-0-0": {"img_zpools": []}}, "non-empty list"),
    ({"nas-0-0": {"img_zpools": "tank"}}, "non-empty list"),
    ({"nas-0-0": {"img_zpools": ["ta;nk"]}}, "img_zpools entry"),
    ({"c": {"img_sync": "yes"}}, "true or false"),
    ({"c": {"vm_container_zpool": "$(id)"}}, "vm_container_zpool"),
    ({"c": {"ib_net": "a b"}}, "ib_net"),
    ({"c": {}}, "no attribute set"),
    ({"Bad_Host": {"img_sync": True}}, "host name"),
    ({"c": ["img_sync"]}, "expected an object"),
    ([], "attrs: expected an object"),
])
def test_attrs_strict(store, attrs, match):
    os.makedirs(os.path.dirname(store.path), mode=0o700)
    for layout in ("first", "last"):
        raw = {"schema": 2, "attrs": attrs, "vms": {}} if layout == "first" else \
            {"schema": 2, "vms": {}, "attrs": attrs}
        with open(store.path, "w") as f:
            json.dump(raw, f)
        for read in (store.read, store.read_attrs):
            with pytest.raises(StateError, match=match):
                read()
