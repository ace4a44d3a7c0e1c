"""qsd driver: block graph specs, the daemon's argv, QMP parsers, and the QMP client
against a unix-socket server speaking QEMU 7.2's wire format (greeting, capabilities,
events between a command and its reply, errors)."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from imgstor.errors import NotFound, StepError, UsageError
from imgstor.remote.drivers import qsd

SPEC = ('json:{"driver":"raw","file":{"driver":"iscsi","transport":"tcp","portal":'
        '"127.0.0.1:3261","target":"iqn.2001-04.com.nas-0-0-vm1-vol","lun":1,'
        '"initiator-name":"iqn.1994-05.com.redhat:compute-0-0"}}')


def test_origin_blockdev_read_only_with_node_names():
    d = qsd.origin_blockdev(SPEC)
    assert d["node-name"] == "origin" and d["read-only"] is True
    assert d["file"]["node-name"] == "origin-file" and d["file"]["driver"] == "iscsi"
    for bad in ("/dev/sda", "json:[1]", "json:{", 'json:{"driver":"raw"}'):
        with pytest.raises(UsageError):
            qsd.origin_blockdev(bad)


def test_local_blockdev_picks_host_device_for_dev():
    assert qsd.local_blockdev("/dev/zvol/tank/v")["file"]["driver"] == "host_device"
    assert qsd.local_blockdev("/mnt/tank/v/disk.raw")["file"]["driver"] == "file"
    for bad in ("disk.raw", "/mnt/../etc/passwd"):
        with pytest.raises(UsageError):
            qsd.local_blockdev(bad)


def test_paths_and_argv():
    p = qsd.paths("vm1-vol")
    assert (p.pidfile, p.qmp, p.nbd) == ("/run/imgstor/qsd/vm1-vol.pid",
                                         "/run/imgstor/qsd/vm1-vol.qmp",
                                         "/run/imgstor/nbd/vm1-vol.sock")
    with pytest.raises(UsageError, match="too long for a unix socket"):
        qsd.paths("v" * 100)
    argv = qsd.daemon_argv("vm1-vol", qsd.origin_blockdev(SPEC), "/x/overlay.qcow2", p)
    assert argv[:4] == ["qemu-storage-daemon", "--daemonize", "--pidfile", p.pidfile]
    assert "type=nbd,id=vm1-vol,node-name=ovl,name=vm1-vol,writable=on" in argv
    assert qsd.nbd_url("vm1-vol", p.nbd) == f"nbd+unix:///vm1-vol?socket={p.nbd}"
    with pytest.raises(UsageError):
        qsd.daemon_argv("a,b", qsd.origin_blockdev(SPEC), "/x", qsd.paths("a,b"))


def test_parsers():
    jobs = qsd.parse_jobs([{"id": "commit-local", "type": "commit", "status": "ready",
                            "current-progress": 5, "total-progress": 5}])
    assert jobs["commit-local"] == qsd.Job("commit-local", "commit", "ready", 5, 5, None)
    assert qsd.parse_exports([{"id": "v", "node-name": "#block044", "type": "nbd",
                               "shutting-down": False},
                              {"id": "w", "node-name": "x", "shutting-down": True}]) == \
        {"v": "#block044"}


@pytest.fixture
def server(tmp_path):
    """A one-connection QMP server: greeting, then canned replies with an event first."""
    path = str(tmp_path / "q.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    seen: list[dict] = []

    def run():
        c, _ = srv.accept()
        f = c.makefile("rwb")
        f.write(b'{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}}\n')
        f.flush()
        for line in f:
            req = json.loads(line)
            seen.append(req)
            f.write(b'{"event": "JOB_STATUS_CHANGE", "data": {"status": "running"}}\n')
            if req["execute"] == "bad":
                f.write(b'{"error": {"class": "GenericError", "desc": "no such thing"}}\n')
            else:
                f.write(json.dumps({"return": {"echo": req.get("arguments")}}).encode() + b"\n")
            f.flush()
        c.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield path, seen
    srv.close()


def test_qmp_client(server):
    path, seen = server
    q = qsd.connect(path)
    assert q.execute("query-jobs", {"a": 1}) == {"echo": {"a": 1}}
    with pytest.raises(StepError, match="QMP bad on .*: no such thing"):
        q.execute("bad")
    q.close()
    assert [r["execute"] for r in seen] == ["qmp_capabilities", "query-jobs", "bad"]


def test_qmp_connect_missing(tmp_path):
    with pytest.raises(NotFound):
        qsd.connect(str(tmp_path / "nope.sock"))
