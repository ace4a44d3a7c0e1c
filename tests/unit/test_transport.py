"""The transport without a network: which host key policy a connection has when it
connects, that no Fabric/Invoke/ssh_config file is read, known_hosts markers (L2), trust
on first use (M6), the command deadline (L14), the node boot check (L1), and that commands
that need no SSH import no SSH library."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import paramiko
import pytest

from imgstor import hostkeys
from imgstor.config import SshConfig, load_config
from imgstor.connections import connection as _connection
from imgstor.connections import fabric_config
from imgstor.errors import HostKeyError, TransportError
from imgstor.transport import Cluster

ROOT = Path(__file__).resolve().parents[2]
_KEYS: list = []


def key(i: int = 0) -> paramiko.PKey:
    while len(_KEYS) <= i:
        _KEYS.append(paramiko.RSAKey.generate(1024))
    return _KEYS[i]


def kh_line(names: str, k: paramiko.PKey, marker: str = "") -> str:
    return f"{marker + ' ' if marker else ''}{names} {k.get_name()} {k.get_base64()}\n"


def cluster_config(tmp_path: Path, *, pin: bool = False, port: int = 22,
                   identity: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "id").write_text("not a key\n")
    p = tmp_path / "imgstor.toml"
    p.write_text(textwrap.dedent(f"""\
        [state]
        path = "state.json"
        [ssh]
        user = "root"
        known_hosts = "known_hosts"
        identity = "{'id' if identity else ''}"
        connect_timeout = 2
        accept_unknown_host_keys = {str(pin).lower()}
        [hosts.nas-0-0]
        role = "nas"
        address = "192.0.2.10"
        port = {port}
        """))
    return p


# ------------------------------------------------------------ policy before connect
def test_policy_and_only_configured_known_hosts_are_in_place_at_connect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfgfile = cluster_config(tmp_path)
    (tmp_path / "known_hosts").write_text(kh_line("192.0.2.10", key(0)))
    seen = {}

    def connect(self, hostname, **kw):
        seen.update(policy=self._policy, keys=list(self.get_host_keys().keys()),
                    system=list(self._system_host_keys.keys()), hostname=hostname, kw=kw)
        raise socket.timeout("timed out")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    with Cluster(load_config(str(cfgfile))) as c:
        with pytest.raises(TransportError) as ei:
            c.connection("nas-0-0")
    assert ei.value.details.get("stage") == "connect"
    assert isinstance(seen["policy"], hostkeys.Policy) and seen["policy"].pin is False
    assert not isinstance(seen["policy"], paramiko.AutoAddPolicy)
    assert seen["keys"] == ["192.0.2.10"] and seen["system"] == []
    assert seen["hostname"] == "192.0.2.10" and seen["kw"]["port"] == 22
    assert seen["kw"]["key_filename"] == [str(tmp_path / "id")]
    assert seen["kw"]["look_for_keys"] is False and seen["kw"]["allow_agent"] is False
    assert seen["kw"]["timeout"] == 2 and seen["kw"]["auth_timeout"] == 2


def test_a_connection_without_our_policy_refuses_to_open(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(str(cluster_config(tmp_path)))
    (tmp_path / "known_hosts").write_text("")
    called = []
    monkeypatch.setattr(paramiko.SSHClient, "connect", lambda *a, **k: called.append(1))
    conn = _connection(cfg, "nas-0-0", err=sys.stderr)
    conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(HostKeyError, match="host key policy"):
        conn.open()
    assert called == []


def test_no_fabric_invoke_or_ssh_config_file_is_read(tmp_path: Path) -> None:
    """HOME holds an ssh_config and Fabric/Invoke files that would redirect, re-user and
    proxy the connection; an audit hook records every file opened."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    evil = "Host *\n  Hostname evil.invalid\n  User nobody\n  Port 1\n" \
           "  ProxyCommand /bin/false\n  IdentityFile /tmp/evil\n  ForwardAgent yes\n"
    (home / ".ssh" / "config").write_text(evil)
    for name in (".fabric.yaml", ".fabric.yml", ".invoke.yaml"):
        (home / name).write_text("user: nobody\nport: 1\nforward_agent: true\n"
                                 "connect_kwargs: {look_for_keys: true, allow_agent: true}\n")
    (home / ".fabric.py").write_text("raise SystemExit('~/.fabric.py was executed')\n")
    cfgfile = cluster_config(tmp_path / "c")
    (tmp_path / "c" / "known_hosts").write_text(kh_line("192.0.2.10", key(0)))
    script = textwrap.dedent(f"""\
        import json, socket, sys
        opened = []
        sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" else None)
        import paramiko
        seen = {{}}
        def connect(self, hostname, **kw):
            seen.update(hostname=hostname, port=kw["port"], user=kw["username"],
                        sock="sock" in kw, look=kw["look_for_keys"], agent=kw["allow_agent"],
                        keys=kw.get("key_filename"))
            raise socket.timeout()
        paramiko.SSHClient.connect = connect
        from imgstor.config import SshConfig, load_config
        from imgstor.transport import Cluster
        from imgstor.errors import TransportError
        c = Cluster(load_config({str(cfgfile)!r}))
        try:
            c.connection("nas-0-0")
        except TransportError:
            pass
        print(json.dumps({{"opened": opened, "seen": seen}}))
        """)
    env = {**os.environ, "HOME": str(home), "INVOKE_RUNTIME_CONFIG": str(home / ".fabric.py"),
           "FABRIC_RUNTIME_CONFIG": str(home / ".fabric.py")}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["seen"] == {"hostname": "192.0.2.10", "port": 22, "user": "root",
                           "sock": False, "look": False, "agent": False,
                           "keys": [str(tmp_path / "c" / "id")]}
    bad = [f for f in out["opened"]
           if f.startswith((str(home), "/etc/ssh", "/etc/fabric", "/etc/invoke"))]
    assert bad == []
    assert str(tmp_path / "c" / "known_hosts") in out["opened"]


def test_fabric_config_is_imgstors_only() -> None:
    cfg = fabric_config(SshConfig(user="admin", port=2222))
    assert cfg.load_ssh_configs is False and cfg.forward_agent is False
    assert cfg.user == "admin" and cfg.port == 2222 and cfg.gateway is None
    assert cfg._system_path is None and cfg._user_path is None     # never loaded
    assert cfg._project_path is None and cfg._runtime_path is None
    assert cfg._given_explicit_object is True and cfg.base_ssh_config._config == []


# ------------------------------------------------------------ known_hosts (L2)
def test_known_hosts_markers_do_not_crash_and_revoked_keys_are_refused(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    text = ("# comment\n\n"
                  + kh_line("*.example.org", key(2), "@cert-authority")
                  + kh_line("nas-0-0,192.0.2.10", key(0), "@revoked")
                  + kh_line("nas-0-0,192.0.2.10", key(0))
                  + kh_line("192.0.2.11", key(1))
                  + "192.0.2.12 ssh-ed25519 !!notbase64!!\n"
                  + "@weird 192.0.2.13 ssh-rsa AAAA\n")
    kh.write_text(text)
    loaded = hostkeys.load_known_hosts(str(kh), missing_ok=False)
    assert loaded.revoked == {key(0).asbytes()}
    assert loaded.keys.lookup("192.0.2.10") is None           # revoked: as if unknown
    assert loaded.keys.lookup("192.0.2.11")[key(1).get_name()] == key(1)
    assert [w.split(": ", 1)[0] for w in loaded.warnings] == \
        [f"{kh}:3", f"{kh}:7", f"{kh}:8"]
    assert "@cert-authority ignored" in loaded.warnings[0]
    for pin in (False, True):                                  # pinning never accepts it
        pol = hostkeys.Policy(loaded, pin=pin, host="nas-0-0", address="192.0.2.10", port=22)
        with pytest.raises(HostKeyError, match="@revoked") as ei:
            pol.missing_host_key(paramiko.SSHClient(), "192.0.2.10", key(0))
        assert ei.value.exit_code == 12 and ei.value.details["stage"] == "connect"
    assert kh.read_text() == text                              # nothing pinned


def test_unreadable_revocation_is_an_error(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("@revoked 192.0.2.10 ssh-ed25519 %%%\n")
    with pytest.raises(HostKeyError, match="unreadable @revoked"):
        hostkeys.load_known_hosts(str(kh), missing_ok=False)


def test_missing_known_hosts_is_refused_without_pinning(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError) as ei:
        hostkeys.load_known_hosts(str(tmp_path / "nope"), missing_ok=False)
    assert "accept_unknown" not in str(ei.value) and "ssh-keyscan" in str(ei.value)


def test_an_empty_known_hosts_setting_is_refused() -> None:
    with pytest.raises(HostKeyError, match="known_hosts is empty"):
        hostkeys.load_known_hosts("", missing_ok=True)


def test_unknown_key_refused_message_says_verify_not_accept(tmp_path: Path) -> None:
    loaded = hostkeys.load_known_hosts(str(tmp_path / "kh"), missing_ok=True)
    pol = hostkeys.Policy(loaded, pin=False, host="nas-0-0", address="192.0.2.10", port=22)
    with pytest.raises(HostKeyError) as ei:
        pol.missing_host_key(paramiko.SSHClient(), "192.0.2.10", key(0))
    msg = str(ei.value)
    assert "not in" in msg and "ssh-keyscan" in msg and hostkeys.fingerprint(key(0)) in msg
    assert "accept_unknown_host_keys" not in msg
    assert not (tmp_path / "kh").exists()


# ------------------------------------------------------------ trust on first use (M6)
def test_first_use_pins_the_key_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ssh" / "known_hosts"
    loaded = hostkeys.load_known_hosts(str(path), missing_ok=True)
    client = paramiko.SSHClient()
    pol = hostkeys.Policy(loaded, pin=True, host="nas-0-0", address="192.0.2.10", port=2222)
    pol.missing_host_key(client, "[192.0.2.10]:2222", key(0))
    # pinned unattended: marked unconfirmed (audit L5) until `imgstor ping --trust`
    assert path.read_text() == kh_line("[192.0.2.10]:2222", key(0)).replace(
        "\n", f" {hostkeys.UNCONFIRMED}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    err = capsys.readouterr().err
    assert err.count(hostkeys.fingerprint(key(0))) == 1 and "pinned" in err
    assert client.get_host_keys().lookup("[192.0.2.10]:2222")
    again = hostkeys.load_known_hosts(str(path), missing_ok=True)
    assert again.keys.lookup("[192.0.2.10]:2222")[key(0).get_name()] == key(0)
    # a file without a final newline is not glued onto
    path.write_text(path.read_text().rstrip("\n"))
    pol.missing_host_key(client, "192.0.2.11", key(1))
    assert path.read_text().splitlines()[-1] == \
        kh_line("192.0.2.11", key(1)).strip() + f" {hostkeys.UNCONFIRMED}"
    # both pins are unconfirmed; `ping --trust` confirms only the hosts it names
    again = hostkeys.load_known_hosts(str(path), missing_ok=True)
    assert again.unconfirmed == {("[192.0.2.10]:2222", key(0).asbytes()),
                                 ("192.0.2.11", key(1).asbytes())}
    assert len(hostkeys.confirm(str(path), ["192.0.2.11"])) == 1
    again = hostkeys.load_known_hosts(str(path), missing_ok=True)
    assert again.unconfirmed == {("[192.0.2.10]:2222", key(0).asbytes())}
    assert again.keys.lookup("192.0.2.11")[key(1).get_name()] == key(1)
    assert hostkeys.confirm(str(path), ["192.0.2.11"]) == []


def test_pinning_refuses_a_symlinked_known_hosts(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("")
    (tmp_path / "known_hosts").symlink_to(tmp_path / "target")
    loaded = hostkeys.KnownHosts(str(tmp_path / "known_hosts"), paramiko.HostKeys())
    pol = hostkeys.Policy(loaded, pin=True, host="h", address="192.0.2.10", port=22)
    with pytest.raises(HostKeyError, match="cannot pin"):
        pol.missing_host_key(paramiko.SSHClient(), "192.0.2.10", key(0))
    assert (tmp_path / "target").read_text() == ""


# ------------------------------------------------------------ command deadline (L14)
class _ChattyChannel:
    """Always has stdout ready: the old loop never reached its deadline check."""

    closed = eof_received = False

    def __init__(self) -> None:
        self.status_event = threading.Event()

    def exec_command(self, cmd): pass
    def sendall(self, data): pass
    def shutdown_write(self): pass
    def recv_ready(self): return True
    def recv(self, n): return b"y\n" * 64
    def recv_stderr_ready(self): return False
    def close(self): self.closed = True


class _Conn:
    is_connected = True

    def __init__(self, chan, *, active: bool = True) -> None:
        self.chan = chan
        self.transport = self
        self.active = active

    def is_active(self) -> bool:
        return self.active

    def open_session(self, timeout=None):
        return self.chan


def test_command_timeout_holds_against_endless_output(tmp_path: Path) -> None:
    cfg = load_config(str(cluster_config(tmp_path)))
    c = Cluster(cfg)
    chan = _ChattyChannel()
    c._conns["nas-0-0"] = _Conn(chan)
    t = time.monotonic()
    with pytest.raises(TransportError, match="timed out") as ei:
        c.exec("nas-0-0", ["yes"], timeout=0.3)
    assert time.monotonic() - t < 5
    assert ei.value.details["stage"] == "command" and chan.closed


class _DroppedChannel(_ChattyChannel):
    """The transport died mid-command: paramiko closes the channel, exit status -1."""

    closed = True

    def __init__(self) -> None:
        super().__init__()
        self.status_event.set()

    def recv_ready(self): return False
    def recv_exit_status(self): return -1


def test_a_connection_lost_mid_command_is_a_transport_error(tmp_path: Path) -> None:
    c = Cluster(load_config(str(cluster_config(tmp_path))))
    c._conns["nas-0-0"] = _Conn(_DroppedChannel(), active=False)
    with pytest.raises(TransportError, match="connection lost") as ei:
        c.exec("nas-0-0", ["zfs", "list"])
    assert ei.value.details["stage"] == "command"
    assert "nas-0-0" not in c._conns             # the next use reconnects


# ------------------------------------------------------------ node boot check (L1)
@pytest.mark.skipif(os.geteuid() != 0, reason="the boot check wants root-owned files")
def test_boot_runs_only_a_verified_app_from_a_root_only_dir(tmp_path: Path) -> None:
    from imgstor.zipapp import BOOT, BOOT_MISSING, BOOT_UNSAFE, node_app
    app = node_app()
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    path = d / "imgstor-x.pyz"

    def boot(p: Path = path, digest: str = app.sha256) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-I", "-c", BOOT, str(p), digest, "node",
                               "no.such.step"], input=b'{"args": {}}', capture_output=True,
                              timeout=60)

    assert boot().returncode == BOOT_MISSING
    path.write_bytes(app.data)
    r = boot()
    assert r.returncode != BOOT_MISSING and json.loads(r.stdout.splitlines()[-1])["ok"] is False
    assert boot(digest="0" * 64).returncode == BOOT_MISSING          # not this content
    d.chmod(0o755)
    r = boot()
    assert r.returncode == BOOT_UNSAFE and b"not a root-owned 0700 directory" in r.stderr
    d.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(d)
    assert boot(link / path.name).returncode == BOOT_UNSAFE             # symlinked dir
    (d / "l.pyz").symlink_to(path)
    assert boot(d / "l.pyz").returncode == BOOT_UNSAFE                  # symlinked file
    os.chown(path, 1, 1)
    assert boot().returncode == BOOT_UNSAFE                             # not root's file


def test_zipapp_cache_gives_the_same_app(tmp_path: Path) -> None:
    from imgstor.zipapp import _build, node_app
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    first = node_app(str(cache))
    files = list(cache.iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    node_app.cache_clear()
    assert node_app(str(cache)) == first == _build()
    files[0].chmod(0o666)                       # writable by others: not trusted, rebuilt
    node_app.cache_clear()
    assert node_app(str(cache)) == first


# ------------------------------------------------------------ lazy imports
@pytest.mark.parametrize("argv", [
    ("--help",),
    ("add", "host", "vm", "compute-0-0"),
    ("list", "host", "storagemap", "nas-0-0"),
    ("list", "host", "vm"),
])
def test_commands_without_ssh_import_no_ssh_library(config_path: Path, argv) -> None:
    script = ("import json, sys\nfrom imgstor import cli\n"
              "rc = cli.main(sys.argv[1:])\n"
              "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in "
              "('fabric', 'paramiko', 'invoke', 'cryptography', 'nacl'))]))\n")
    p = subprocess.run([sys.executable, "-c", script, "--config", str(config_path), *argv],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    rc, mods = json.loads(p.stdout.splitlines()[-1])
    assert rc == 0, p.stderr
    assert mods == []


# ------------------------------------------------------------ threads at the command's end

def test_a_prepared_steps_opener_has_ended_when_the_cluster_closes(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A command that ends before it needs a prepared step: close() waits for the opener
    (its connection closed there, no thread in paramiko when the interpreter exits)."""
    c = Cluster(load_config(str(cluster_config(tmp_path))))

    def slow_app():
        time.sleep(0.5)
        raise TransportError("no app here")
    monkeypatch.setattr(c, "_app", slow_app)
    p = c.prepare("nas-0-0", "probe")
    p.cancel()
    c.close()
    assert p._thread is not None and not p._thread.is_alive()


