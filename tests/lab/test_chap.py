"""CHAP per target on the userspace lab (tgtd + libiscsi), issue 4.

A config copy sets ``chap = true`` on the NAS and keeps its own state file in tmp_path, so
the credentials land in ``tmp_path/chap/nas-0-0/<vol>.json``.  The map must make them once
(0600 in 0700 directories, never in the state or the output, -v included), bind them to
the target, and log in with them; a login without them or with a wrong password is
refused; the unmap removes the account; removing the image removes the file."""
from __future__ import annotations

import json
import re
import shlex
import stat
import uuid
from pathlib import Path

import pytest

from imgstor.workflows.storagemap import target_iqn
from tests.conftest import Lab
from tests.lab.test_direct import NAS, MiB, cli, nas_sha

pytestmark = pytest.mark.lab
HOST = "compute-0-0"


def chap_config(lab: Lab, tmp_path: Path) -> Path:
    text = lab.config_path.read_text()
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{tmp_path / "state.json"}"', text, count=1)
    text = text.replace(f"[hosts.{NAS}]\n", f"[hosts.{NAS}]\nchap = true\n", 1)
    assert "chap = true" in text and str(tmp_path) in text
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text(text)
    return cfg


def url(lab: Lab, vol: str, user: str | None = None) -> str:
    who = f"{user}@" if user else ""
    return f"iscsi://{who}{lab.host(NAS)['address']}:3260/{target_iqn(NAS, vol)}/1"


def readcap(lab: Lab, vol: str, *, user: str | None = None, password: str | None = None):
    """iscsi-readcapacity16 on the compute node under its own initiator name; the password
    (if any) goes in LIBISCSI_CHAP_PASSWORD, as compute.attach passes it."""
    env = f"LIBISCSI_CHAP_PASSWORD={shlex.quote(password)} " if password else ""
    return lab.ssh(HOST, f"{env}iscsi-readcapacity16 -i {lab.host(HOST)['initiator']} "
                         f"{shlex.quote(url(lab, vol, user))}", check=False)


def qemu_opts(lab: Lab, vol: str, user: str) -> str:
    return (f"driver=iscsi,transport=tcp,portal={lab.host(NAS)['address']}:3260,"
            f"target={target_iqn(NAS, vol)},lun=1,initiator-name={lab.host(HOST)['initiator']},"
            f"user={user},password-secret=chap0")



def _on_disk(d) -> str:
    """The state file and its journal, as text: what is kept of the store on disk."""
    return "".join(p.read_text() for p in (d / "state.json", d / "state.json.journal")
                   if p.exists())

def test_chap_map_login_refusals_unmap_remove(lab: Lab, tmp_path: Path) -> None:
    cfg = chap_config(lab, tmp_path)
    vol = f"chap{uuid.uuid4().hex[:8]}-vol"
    cred = tmp_path / "chap" / NAS / f"{vol}.json"

    # ---- map: credentials made once, 0600 in 0700 directories, never printed
    p = cli(lab, "-v", "add", "host", "storagemap", NAS, "tank", vol, HOST, "64M", config=cfg)
    assert re.fullmatch(rf"mapping  {NAS} : tank / {vol}  on  {HOST}\niscsi://\S+\n", p.stdout), \
        p.stdout
    creds = json.loads(cred.read_text())
    user, password = creds["user"], creds["password"]
    assert re.fullmatch(r"imgstor-[0-9a-f]{12}", user) and len(password) == 16
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert stat.S_IMODE(cred.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cred.parent.parent.stat().st_mode) == 0o700
    assert password not in p.stdout + p.stderr
    assert "tgtadm --lld iscsi --mode account --op new" in p.stderr      # -v shows the plan
    assert "--password '***'" in p.stderr or "--password ***" in p.stderr
    state = _on_disk(tmp_path)
    assert password not in state and user in state

    show = lab.out(NAS, "tgtadm --lld iscsi --mode target --op show")
    block = show.split(f": {target_iqn(NAS, vol)}\n", 1)[1].split("\nTarget ", 1)[0]
    assert f"Account information:\n        {user}\n" in block, block
    assert lab.host(HOST)["initiator"] in block

    # ---- re-run: same credentials, nothing new; a dry run prints no password either
    p2 = cli(lab, "-v", "add", "host", "storagemap", NAS, "tank", vol, HOST, "64M", config=cfg)
    assert json.loads(cred.read_text()) == creds
    assert password not in p2.stdout + p2.stderr
    assert "--op new" not in p2.stderr          # account exists and is bound: no change
    p3 = cli(lab, "-n", "-v", "add", "host", "storagemap", NAS, "tank", vol, HOST, "64M",
             config=cfg)
    assert password not in p3.stdout + p3.stderr

    # ---- logins: with the credentials it works and the data is right ...
    assert readcap(lab, vol, user=user, password=password).returncode == 0
    lab.ssh(HOST, f"umask 077; printf %s {shlex.quote(password)} > /tmp/{vol}.pw; "
                  f"head -c {4 * MiB} /dev/urandom > /tmp/{vol}.bin && "
                  f"qemu-img convert -n -f raw /tmp/{vol}.bin "
                  f"--object secret,id=chap0,file=/tmp/{vol}.pw "
                  f"--target-image-opts '{qemu_opts(lab, vol, user)}'")
    want = lab.out(HOST, f"sha256sum < /tmp/{vol}.bin; rm -f /tmp/{vol}.bin").split()[0]
    assert nas_sha(lab, vol, 4 * MiB) == want
    got = lab.out(HOST, f"qemu-img convert -O raw --object secret,id=chap0,file=/tmp/{vol}.pw "
                        f"--image-opts '{qemu_opts(lab, vol, user)}' /tmp/{vol}.r && "
                        f"head -c {4 * MiB} /tmp/{vol}.r | sha256sum; rm -f /tmp/{vol}.r "
                        f"/tmp/{vol}.pw").split()[0]
    assert got == want

    # ... without them, or with a wrong password (or user), it is refused
    for kw in ({}, {"user": user, "password": "Wrong" + password[5:]},
               {"user": "imgstor-000000000000", "password": password}):
        r = readcap(lab, vol, **kw)
        assert r.returncode == 10, (kw.keys(), r)
        assert b"Authentication failure(513)" in r.stderr, r.stderr

    # list host storagedev logs in with the credentials too
    devs = json.loads(cli(lab, "--json", "list", "host", "storagedev", HOST,
                          config=cfg).stdout)["rows"]
    assert next(d for d in devs if d["zvol"] == vol)["status"] == "ok"

    # ---- unmap: target and account gone; the credentials stay until the image goes
    p4 = cli(lab, "-v", "remove", "host", "storagemap", NAS, vol, config=cfg)
    assert password not in p4.stdout + p4.stderr
    assert target_iqn(NAS, vol) not in lab.out(NAS, "tgtadm --lld iscsi --mode target --op show")
    assert user not in lab.out(NAS, "tgtadm --lld iscsi --mode account --op show")
    assert cred.exists()

    # ---- remove the image: the credentials file goes with it
    cli(lab, "remove", "host", "storageimg", NAS, "tank", vol, config=cfg)
    assert not cred.exists()
    assert password not in _on_disk(tmp_path)
