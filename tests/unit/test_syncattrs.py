"""The roll's sync attributes (zvolattr / storageattr): their values checked before
anything is saved, their precedence (volume, NAS, config), the store sections (older files
read as before), and refresh's due interval from them."""
from __future__ import annotations

import json
import os
import time

import pytest

from imgstor.errors import StateError, UsageError
from imgstor.state.model import State, SyncAttrs, Volume
from imgstor.workflows import refresh as rf
from imgstor.workflows import syncattrs as sa
from imgstor.workflows.storagemap import sync as syncmod


@pytest.mark.parametrize("text,secs", [("300", 300), ("300s", 300), ("10m", 600),
                                       ("2h", 7200), ("1d", 86400), (" 90 ", 90),
                                       ("10M", 600)])
def test_frequency_values(text, secs) -> None:
    assert sa.parse_frequency(text) == secs


@pytest.mark.parametrize("text", ["0", "-5", "10x", "1.5m", "", "ten", "5 m s", "10m;ls"])
def test_bad_frequencies(text) -> None:
    with pytest.raises(UsageError, match="frequency"):
        sa.parse_frequency(text)


@pytest.mark.parametrize("text,rate", [("10M", 10 << 20), ("10m", 10 << 20), ("500K", 500 << 10),
                                       ("1G", 1 << 30), ("4096", 4096), ("0", 0),
                                       ("1.5M", 3 << 19)])
def test_speed_values(text, rate) -> None:
    assert sa.parse_speed("uploadspeed", text) == rate
    assert sa.fmt_rate(rate) == {"10m": "10M", "4096": "4K", "1.5M": "1536K"}.get(text, text)


@pytest.mark.parametrize("text", ["-1", "10X", "fast", "10 MB/s", "1e6"])
def test_bad_speeds(text) -> None:
    with pytest.raises(UsageError, match="downloadspeed: expected bytes per second"):
        sa.parse_speed("downloadspeed", text)


def test_none_unsets_and_attr_names() -> None:
    assert sa.parse_value("frequency", "None") is None
    assert sa.attr_name("Frequency") == "frequency"
    with pytest.raises(UsageError, match="not a sync attribute"):
        sa.attr_name("img_sync_workers")


# ------------------------------------------------------------- precedence
def _cfg(config_path, extra: str = ""):
    from imgstor.config import load_config
    if extra:
        config_path.write_text(config_path.read_text().replace("[defaults]",
                                                               "[defaults]\n" + extra))
    return load_config(str(config_path))


def _vol(vol: str, **kw) -> Volume:
    return Volume(nas="nas-0-0", zpool="tank", vol=vol, **kw)


def test_precedence_volume_then_nas_then_config(config_path) -> None:
    cfg = _cfg(config_path, "sync_frequency = 900\nsync_bwlimit = \"1M\"")
    st = State()
    v = _vol("a", host="compute-0-1")
    assert sa.effective(st, cfg, "nas-0-0", "a", "frequency") == (900,
                                                                   "config sync_frequency")
    assert sa.bwlimit(st, cfg, v, "up") == sa.bwlimit(st, cfg, v, "down") == 1 << 20
    st.storageattrs["nas-0-0"] = SyncAttrs(frequency=600, downloadspeed=2 << 20)
    assert sa.frequency(st, cfg, "nas-0-0", "a") == 600
    assert sa.frequency(st, cfg, "nas-0-1", "a") == 900          # another NAS: its own
    assert sa.bwlimit(st, cfg, v, "down") == 2 << 20
    assert sa.bwlimit(st, cfg, v, "up") == 1 << 20               # not set on the NAS
    st.zvolattrs["nas-0-0/a"] = SyncAttrs(frequency=60, uploadspeed=0)
    assert sa.effective(st, cfg, "nas-0-0", "a", "frequency") == (60, "zvolattr")
    assert sa.frequency(st, cfg, "nas-0-0", "b") == 600           # another volume: the NAS's
    assert sa.bwlimit(st, cfg, v, "up") == 0                      # 0: no limit, overriding
    assert sa.bwlimit(st, cfg, v, "down") == 2 << 20


def test_state_sections_roundtrip_and_older_files(tmp_path) -> None:
    from imgstor.state.store import Store
    store = Store(str(tmp_path / "state.json"))
    with store.transaction() as st:
        st.volumes["nas-0-0/a"] = _vol("a")
    store.fold()                       # the journal into the file (issue 25)
    raw = json.loads(open(store.path).read())
    assert "zvolattrs" not in raw and "storageattrs" not in raw   # as before when unset
    with store.transaction() as st:
        st.zvolattrs["nas-0-0/a"] = SyncAttrs(frequency=60)
        st.storageattrs["nas-0-0"] = SyncAttrs(uploadspeed=1 << 20)
    store.fold()
    raw = json.loads(open(store.path).read())
    assert raw["zvolattrs"] == {"nas-0-0/a": {"frequency": 60}}
    assert raw["storageattrs"] == {"nas-0-0": {"uploadspeed": 1 << 20}}
    assert list(raw)[:2] == ["schema", "vms"]          # read_attrs' fast path untouched
    st = store.read()
    assert st.zvolattrs["nas-0-0/a"].frequency == 60
    # a file written before these sections (schema 2, no such keys) reads as before
    old = {"schema": 2, "vms": {}, "volumes": {}, "jobs": {}}
    assert State.from_dict(old).zvolattrs == {}


@pytest.mark.parametrize("section,bad,match", [
    ("zvolattrs", {"nas-0-0/a": {"frequency": 0}}, "frequency must be an integer >= 1"),
    ("zvolattrs", {"nas-0-0/a": {"uploadspeed": "10M"}}, "uploadspeed must be an integer"),
    ("zvolattrs", {"nas-0-0/a": {}}, "no attribute set"),
    ("zvolattrs", {"nas-0-0/a": {"img_sync": True}}, "unknown field"),
    ("zvolattrs", {"nas-0-0": {"frequency": 5}}, "bad volume key"),
    ("storageattrs", {"-x": {"frequency": 5}}, "storageattrs"),
])
def test_state_sections_strict(section, bad, match) -> None:
    with pytest.raises(StateError, match=match):
        State.from_dict({"schema": 2, section: bad})


# ------------------------------------------------------------- the commands
def test_set_list_remove_zvolattr_and_storageattr(imgstor, state_path) -> None:
    r = imgstor("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "frequency", "10m")
    assert r.rc == 0 and "nas-0-0/vm1-vol: frequency = 600" in r.out, r
    assert "no such volume in the store yet" in r.out
    r = imgstor("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "attr=downloadspeed",
                "value=10M")
    assert r.rc == 0 and "downloadspeed = 10M" in r.out, r
    r = imgstor("set", "host", "storageattr", "nas-0-0", "frequency", "300")
    assert r.rc == 0, r
    r = imgstor("--json", "list", "host", "zvolattr", "nas-0-0")
    (row,) = json.loads(r.out)["rows"]
    # --json: numbers (seconds, bytes/s) and where each comes from
    assert (row["zvol"], row["frequency"], row["downloadspeed"], row["uploadspeed"]) == \
        ("vm1-vol", 600, 10 << 20, 0), row
    assert row["downloadspeed_source"] == "zvolattr" and row["uploadspeed_source"] == \
        "config sync_bwlimit of nas-0-0"
    r = imgstor("list", "host", "zvolattr", "nas-0-0")
    assert r.out.split("\n")[0].split() == ["NAS", "ZVOL", "FREQUENCY", "NEXTSYNC",
                                            "UPLOADSPEED", "DOWNLOADSPEED"], r.out
    assert r.out.split("\n")[1].split() == ["nas-0-0", "vm1-vol", "600", "----------",
                                            "(0)", "10M"], r.out
    r = imgstor("--json", "list", "host", "storageattr", "nas-0-0")
    rows = {x["attr"]: x for x in json.loads(r.out)["rows"]}
    assert rows["frequency"]["value"] == 300 and rows["frequency"]["source"] == \
        "set by command"
    assert rows["uploadspeed"]["source"] == "config sync_bwlimit"
    # None unsets (the roll's way); remove does too; the empty entries go
    assert imgstor("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "frequency",
                   "None").rc == 0
    r = imgstor("remove", "host", "zvolattr", "nas-0-0", "vm1-vol", "downloadspeed")
    assert r.rc == 0 and "removed downloadspeed" in r.out
    assert imgstor("remove", "host", "storageattr", "nas-0-0", "frequency").rc == 0
    from imgstor.state.store import Store
    Store(str(state_path)).fold()      # the journal into the file (issue 25)
    raw = json.loads(state_path.read_text())
    assert "zvolattrs" not in raw and "storageattrs" not in raw, raw
    r = imgstor("remove", "host", "storageattr", "nas-0-0", "frequency")
    assert r.rc == 0 and "was not set" in r.out


@pytest.mark.parametrize("argv,match", [
    (("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "frequency", "0"), "at least 1"),
    (("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "uploadspeed", "fast"),
     "uploadspeed: expected bytes per second"),
    (("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "color", "red"),
     "not a sync attribute"),
    (("set", "host", "zvolattr", "compute-0-0", "vm1-vol", "frequency", "60"),
     "not a nas host"),
    (("set", "host", "zvolattr", "nas-9", "vm1-vol", "frequency", "60"), "unknown host"),
    (("set", "host", "zvolattr", "nas-0-0", "../x", "frequency", "60"), "volume"),
    (("set", "host", "zvolattr", "nas-0-0", "frequency", "60"), "expected NAS VOL ATTR"),
    (("set", "host", "storageattr", "nas-0-0", "img_sync_workers", "8"),
     "not a sync attribute"),
])
def test_bad_input_is_refused_before_anything_is_saved(imgstor, state_path, argv,
                                                       match) -> None:
    r = imgstor(*argv)
    assert r.rc != 0 and match in r.err, r
    assert not state_path.exists()


def test_dry_run_saves_nothing(imgstor, state_path) -> None:
    r = imgstor("--dry-run", "set", "host", "storageattr", "nas-0-0", "uploadspeed", "5M")
    assert r.rc == 0 and r.out.startswith("dry run, nothing saved"), r
    assert not state_path.exists() or "storageattrs" not in state_path.read_text()


def test_rocks_shim_forwards_them(imgstor) -> None:
    from imgstor.cli import rocks_main
    r = imgstor("set", "host", "zvolattr", "nas-0-0", "vm1-vol", "frequency", "120",
                main=rocks_main)
    assert r.rc == 0, r
    r = imgstor("list", "host", "storageattr", main=rocks_main)
    assert r.rc == 0 and "nas-0-1" in r.out, r


# ------------------------------------------------------------- refresh uses them
@pytest.fixture
def ctx(imgstor, config_path, monkeypatch):
    from imgstor.workflows.context import Ctx
    spawned: list[str] = []
    monkeypatch.setattr(syncmod, "start_jobs",
                        lambda c, jobs: spawned.extend(j.id for j in jobs) or True)
    monkeypatch.setattr(rf, "_restore", lambda c: [])     # no hosts here (test_reconcile)
    c = Ctx(config_path=str(config_path))
    c.spawned = spawned
    return c


def test_refresh_pulls_the_volume_whose_own_frequency_is_due(ctx) -> None:
    now = time.time()
    with ctx.store.transaction() as st:
        for name in ("fast", "slow"):
            v = _vol(name, host="compute-0-1", state="mapped", mode="sync", since=now - 120)
            st.volumes[v.key] = v
        st.storageattrs["nas-0-0"] = SyncAttrs(frequency=3600)
        st.zvolattrs["nas-0-0/fast"] = SyncAttrs(frequency=60)
    rows = {r["volume"]: r for r in rf.refresh(ctx).rows}
    assert rows["nas-0-0/fast"]["action"] == "started (NAS<-VM sched)"
    assert rows["nas-0-0/slow"]["action"].startswith("next in 34"), rows
    (job,) = ctx.store.read().jobs.values()
    assert job.volume == "nas-0-0/fast" and ctx.spawned == [job.id]
    assert os.path.exists(ctx.store.path)
