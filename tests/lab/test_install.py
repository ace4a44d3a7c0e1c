"""The README's install block, run verbatim by a new administrator on a lab host that
becomes a frontend (nas-0-1, left out of the cluster it manages), then what they do next:
the config edited (hosts added; no ``[ssh] identity``: root's default key, as ssh would),
``imgstor ping`` and a direct map through the installed file (data by sha256 on the node),
``imgstorageadmin`` through its link, contrib's systemd units verified against the
installed file, and the cron line's command run by hand, with cron's environment.

Lab hosts share this machine's file tree, so everything runs in a private mount namespace
inside the host's: tmpfs over /usr/local/bin, /etc/cron.d, /etc/imgstor and
/var/lib/imgstor, and /etc itself an overlay (its upper layer in a tmpfs) because
/etc/imgstor may not exist to mount on.  Nothing lands in the real ones (checked)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Lab
from tests.lab.test_direct import MiB, read_through, targets, write_through

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
FRONTEND, NAS, NODE = "nas-0-1", "nas-0-0", "compute-0-0"
INSTALL_MARK = "**Install** (as root on the frontend, in a checkout of imgstor):"
# a root login shell's environment (no venv, no PYTHONPATH)
ADMIN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "LOGNAME": "root"}
REAL = ("/usr/local/bin/imgstor", "/usr/local/bin/imgstorageadmin", "/etc/cron.d/imgstor",
        "/etc/imgstor", "/var/lib/imgstor/state.json", "/var/lib/imgstor/shiv")


def install_block() -> str:
    text = (ROOT / "README.md").read_text()
    i = text.index(INSTALL_MARK)
    m = re.search(r"```sh\n(.*?)```", text[i:], re.S)
    assert m, "README: no sh block after the install mark"
    return m.group(1)


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


class Frontend:
    """A private mount namespace in FRONTEND's namespaces, held by a ``sleep``."""

    def __init__(self, lab: Lab) -> None:
        anchor = str(lab.host(FRONTEND)["anchor"])
        self.proc = subprocess.Popen(
            ["nsenter", "-t", anchor, "-m", "-u", "-n", "--", "unshare", "--mount",
             "--propagation", "private", "--fork", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = 0
        for _ in range(500):
            kids = [k for k in _children(self.proc.pid)
                    if Path(f"/proc/{k}/comm").read_text().strip() == "sleep"]
            if kids:
                self.pid = kids[0]
                break
            time.sleep(0.02)
        assert self.pid, "the frontend's namespace did not start"
        self.sh("mount -t tmpfs -o mode=0700 imgstor-test-upper /mnt && mkdir /mnt/u /mnt/w && "
                "mount -t overlay imgstor-test-etc -o lowerdir=/etc,upperdir=/mnt/u,"
                "workdir=/mnt/w /etc && "
                f"mount --bind {lab.dir / 'etc_hosts'} /etc/hosts && mkdir -p /etc/imgstor && "
                "for d in /usr/local/bin /etc/cron.d /etc/imgstor /var/lib/imgstor; do "
                "mount -t tmpfs -o mode=0755 imgstor-test $d; done")

    def sh(self, script: str, *, input: str | None = None, env: dict | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "--",
                            "bash", "-c", f"cd {ROOT} && {script}"],
                           input=input, capture_output=True, text=True, timeout=600,
                           env=env or ADMIN_ENV)
        if check and p.returncode != 0:
            raise AssertionError(f"{script!r} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def close(self) -> None:
        for pid in (self.pid, self.proc.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def built() -> None:
    """The one file built beforehand, with this machine's network (the lab host has none):
    the block's own `scripts/build-onefile` then finds it up to date."""
    p = subprocess.run([str(ROOT / "scripts" / "build-onefile")], capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, f"build-onefile failed:\n{p.stdout}\n{p.stderr}"


def _config(lab: Lab, example: str) -> str:
    """The administrator's edit: the lab's drivers, and the two hosts at the end."""
    for key, value in (("volume_kind", '"file"'), ("target_driver", '"tgt"'),
                       ("initiator", '"userspace"'), ("overlay", '"qcow2"')):
        example, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", example, flags=re.M)
        assert n == 1, key
    hosts = "".join(f'\n[hosts.{h}]\nrole = "{lab.host(h)["role"]}"\n'
                    f'address = "{lab.host(h)["address"]}"\n'
                    f'data_address = "{lab.host(h)["data_address"]}"\n' for h in (NAS, NODE))
    return example + hosts


def test_the_readmes_install_block_then_ping_map_and_cron(lab: Lab, built: None) -> None:
    if not {FRONTEND, NAS, NODE} <= set(lab.names()):
        pytest.skip(f"needs {FRONTEND}, {NAS} and {NODE} in the lab (its default hosts)")
    before = {p: os.path.lexists(p) for p in REAL}
    fe = Frontend(lab)
    vol = f"inst-{uuid.uuid4().hex[:6]}"
    mapped = False
    try:
        # 1. the block, verbatim, as root in the checkout
        p = fe.sh("bash -ex", input=install_block())
        assert "build-onefile: dist/imgstor is up to date" in p.stdout, p.stdout
        from imgstor import __version__
        assert p.stdout.rstrip().endswith(f"imgstor {__version__}"), p.stdout
        got = fe.sh("stat -c '%a %U %n' /usr/local/bin/imgstor /etc/imgstor "
                    "/etc/imgstor/imgstor.toml /var/lib/imgstor /etc/cron.d/imgstor; "
                    "readlink /usr/local/bin/imgstorageadmin").stdout.split("\n")
        assert got[:6] == ["755 root /usr/local/bin/imgstor", "700 root /etc/imgstor",
                           "600 root /etc/imgstor/imgstor.toml", "700 root /var/lib/imgstor",
                           "644 root /etc/cron.d/imgstor", "imgstor"], got
        # 2. the config: hosts added, no [ssh] identity (root's default key, as ssh takes it)
        example = fe.sh("cat /etc/imgstor/imgstor.toml").stdout
        assert example == (ROOT / "contrib" / "imgstor.toml.example").read_text()
        assert 'identity = ""' in example
        fe.sh("cat > /etc/imgstor/imgstor.toml", input=_config(lab, example))
        assert fe.sh("test -f /root/.ssh/id_ed25519 && echo key").stdout == "key\n"

        # 3. ping and one direct map through the installed file
        out = fe.sh("imgstor ping").stdout
        for h in (NAS, NODE):
            assert re.search(rf"^{h}\s", out, re.M), out
        assert FRONTEND not in out
        p = fe.sh(f"imgstor add host storagemap {NAS} tank {vol} {NODE} 16M")
        mapped = True
        assert re.search(rf"mapping\s+{NAS} : tank / {vol}\s+on\s+{NODE}", p.stdout), p.stdout
        assert "no state file /var/lib/imgstor/state.json" in p.stderr, p.stderr
        want = write_through(lab, NODE, vol, 4, f"install-{vol}")
        assert read_through(lab, NODE, vol, 4 * MiB) == want
        assert vol in targets(lab)
        assert re.search(rf"^{vol}\s+{NODE}\s", fe.sh(f"imgstor list host storagemap {NAS}")
                         .stdout, re.M)
        assert vol in fe.sh("imgstorageadmin list").stdout
        # contrib's units, verified against the installed file
        if shutil.which("systemd-analyze"):
            p = fe.sh("systemd-analyze verify contrib/imgstor-refresh.service "
                      "contrib/imgstor-refresh.timer", check=False)
            assert (p.returncode, p.stderr) == (0, ""), p.stderr

        # 4. the cron line's command, by hand, with cron's environment: nothing to say
        cron = (ROOT / "contrib" / "imgstor.cron").read_text().splitlines()
        cron_env = dict(ln.split("=", 1) for ln in cron if re.match(r"[A-Z]+=", ln))
        (job,) = [ln for ln in cron if ln and not ln.startswith("#") and "=" not in
                  ln.split()[0]]
        fields = job.split(None, 6)
        assert fields[5] == "root"
        env = {**cron_env, "HOME": "/root", "LOGNAME": "root"}
        p = fe.sh(fields[6], env=env, check=False)
        assert (p.returncode, p.stdout, p.stderr) == (0, "", ""), p
        assert fe.sh("test -s /var/lib/imgstor/state.json.hosts.json && echo ok").stdout == "ok\n"

        fe.sh(f"imgstor remove host storagemap {NAS} {vol}")
        mapped = False
        fe.sh(f"imgstor remove host storageimg {NAS} tank {vol}")
    finally:
        if mapped:
            fe.sh(f"imgstor remove host storagemap {NAS} {vol} --force; "
                  f"imgstor remove host storageimg {NAS} tank {vol}", check=False)
        fe.close()
    assert {p: os.path.lexists(p) for p in REAL} == before, "something landed in the real tree"
