"""A sync unmap refuses while the VM uses its overlay (audit M4), both drivers: exit 8
naming the user, nothing recorded; ``--force`` goes on and the sync back's quiesce takes
the device away (dm ``dmsetup remove --force``).  A scripted cluster; the lab tests
(tests/lab/test_trust2.py, tests/lab_kernel/test_trust2_kernel.py) run the real thing."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from imgstor import jobpool
from imgstor.state import Store, Volume


class UsersCluster:
    """Answers ``overlay.users`` with ``users``; records every step."""
    users: list[str] = []
    calls: list = []

    def __init__(self, config, *, dry_run=False, debug=False):
        pass

    def warm(self, hosts):
        pass

    def close(self):
        pass

    def step(self, host, name, /, **args):
        UsersCluster.calls.append((host, name, args))
        facts = {"overlay.users": {"users": list(self.users)}}.get(name, {})
        return SimpleNamespace(host=host, step=name, changed=False, facts=facts, message="")


@pytest.fixture
def unmap(config_path, imgstor, monkeypatch):
    monkeypatch.setattr("imgstor.transport.Cluster", UsersCluster)
    spawned: list[str] = []
    monkeypatch.setattr(jobpool, "launch", lambda store, cfg, ids, **kw: spawned.extend(ids)
                        or "started monitor pid 4242")
    UsersCluster.calls = []
    store = Store(str(config_path.parent / "state.json"))

    def run(state: str, overlay: str, users: list[str], *flags: str):
        UsersCluster.users = users
        with store.transaction() as st:
            v = Volume(nas="nas-0-0", zpool="tank", vol="v", state=state, mode="sync",
                       host="compute-0-0", target=None if state == "mapped" else "iqn.x",
                       extra={"overlay": overlay, "local_pool": "tank"})
            st.volumes[v.key] = v
            st.jobs.clear()
        return imgstor("remove", "host", "storagemap", "nas-0-0", "v", *flags), store, spawned
    return run


@pytest.mark.parametrize("state", ["mapped", "NAS->VM", "merging"])
@pytest.mark.parametrize("overlay,user", [
    ("qcow2", "pid 31337 (qemu-io), an NBD client of /run/imgstor/nbd/v.sock"),
    ("dm", "pid 77 (qemu-system-x86) has /dev/dm-3 open")])
def test_sync_unmap_refused_while_the_overlay_is_in_use(unmap, state, overlay, user) -> None:
    r, store, spawned = unmap(state, overlay, [user])
    assert r.rc == 8 and user in r.err and "--force" in r.err, r
    st = store.read()
    assert st.volumes["nas-0-0/v"].state == state and not st.jobs and not spawned
    assert st.volumes["nas-0-0/v"].busy is None
    assert [c[1] for c in UsersCluster.calls] == ["overlay.users"]
    assert UsersCluster.calls[0][2] == {"driver": overlay, "pool": "tank", "vol": "v"}


def test_force_goes_on_and_the_quiesce_is_forced(unmap) -> None:
    r, store, spawned = unmap("mapped", "dm", ["pid 77 (qemu) has /dev/dm-3 open"], "--force")
    assert r.rc == 0, r
    st = store.read()
    assert st.volumes["nas-0-0/v"].state == "NAS<-VM"
    (job,) = st.jobs.values()
    assert (job.kind, job.phase, job.extra.get("force"), spawned) == \
        ("sync-back", "quiesce", True, [job.id])
    assert not UsersCluster.calls                      # --force asks nobody
    # the quiesce passes --force to overlay.remove
    from imgstor.workflows.storagemap import sync
    ctx = SimpleNamespace(store=store, cluster=UsersCluster(None),
                          config=SimpleNamespace(host=lambda h: SimpleNamespace(
                              vm_container_zpool="tank", overlay="dm", volume_kind="zvol")))
    sync._back_quiesce(ctx, job, SimpleNamespace(read=store.read))
    assert UsersCluster.calls[-1][1:] == ("overlay.remove", {"driver": "dm", "pool": "tank",
                                                             "vol": "v", "force": True})


def test_nobody_using_it_unmaps_as_before(unmap) -> None:
    r, store, spawned = unmap("mapped", "qcow2", [])
    assert r.rc == 0 and "Success" in r.out, r
    assert store.read().volumes["nas-0-0/v"].state == "NAS<-VM" and spawned


def test_dry_run_says_it_would_be_refused(unmap) -> None:
    r, store, _ = unmap("mapped", "qcow2", ["1 NBD client(s) connected to /x (a VM?)"],
                        "--dry-run")
    assert r.rc == 8 and "in use" in r.err
    assert store.read().volumes["nas-0-0/v"].state == "mapped"

