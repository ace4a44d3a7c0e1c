"""Scenarios of the copy-job and sync-trust steps (run by test_copy_steps.py).

Extra keys beside test_step_scenarios.py's: ``env.jobs`` {job: {"progress", "spec",
"running"}} (job directories made in a temp dir; ``running`` holds the job's flock),
``env.files`` {path: [text, mode]} and ``env.dirs`` {path: mode}; ``launched`` (the spec
subset the job was started with, or None: nothing started); ``written`` {path: substring}
(what write_file wrote); ``skipped`` is a list of TEXTS here (a pipeline is one line).
``{tmp}`` in any string is the scenario's temp dir.

Answers of the sync gate are its JSON (imgstor/remote/syncgate.py ``state``); the zfs
texts are zfs-fuse's (tests/fixtures/userspace: zfs_list_missing).
"""
from __future__ import annotations

import shlex

from scn_common import cmd

SNAP = "tank/vm1-vol@imgstor-1"
BASE = "tank/vm1-vol@imgstor-0"
DEST = "tank/vm1-vol"
JOB = "copy@compute-0-14:tank%vm1-vol"
ADDR = "10.1.1.14"
SSH = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
       "-o", "StrictHostKeyChecking=yes",
       "-o", "UserKnownHostsFile=/root/.ssh/imgstor-sync/known_hosts",
       "-o", "GlobalKnownHostsFile=/dev/null", "-o", "HostKeyAlias=imgstor-compute-0-14",
       "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
       "-i", "/root/.ssh/imgstor-sync/id_ed25519",
       "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "Compression=no",
       "-p", "22", "-l", "root", "--", ADDR]
GATE_STATE = SSH + ["imgstor-sync-gate state tank/vm1-vol"]
GATE_ABORT = SSH + ["imgstor-sync-gate abort tank/vm1-vol"]
ZLIST = ["zfs", "list", "-H", "-o", "name", SNAP]
MISSING = {"rc": 1, "stderr": f"cannot open '{SNAP}': dataset does not exist\n"}
START = {"snapshot": SNAP, "to_address": ADDR, "to_alias": "compute-0-14", "to_dataset": DEST}
TO = {"address": ADDR, "alias": "compute-0-14", "dataset": DEST, "port": 22, "user": "root"}
SPEC = {"snapshot": SNAP, "base": None, "to": TO, "bwlimit": 0, "compress": "",
        "key_dir": "/root/.ssh/imgstor-sync", "connect_timeout": 10, "stall_timeout": 600,
        "rollback": False}
PIPE = (shlex.join(["zfs", "send", SNAP]) + " | zstd -qc | "
        + shlex.join(SSH + ["imgstor-sync-gate receive --zstd tank/vm1-vol"]))
RUNNING = {JOB: {"running": True, "spec": SPEC,
                 "progress": {"state": "running", "phase": "send", "bytes_done": 5,
                              "bytes_total": 10, "snapshot": SNAP}}}
STATE_TOKEN = '{"resume": true, "exists": true, "token": "1-abc-de-789", "snapshots": {}}\n'
STATE_NONE = '{"resume": false, "exists": false, "token": null, "snapshots": {}}\n'

SCENARIOS: list[dict] = [
    # ------------------------------------------------------------------ copy.start
    {"id": "starts-a-job", "step": "copy.start", "tags": ["changes"], "args": dict(START),
     "script": [cmd(ZLIST, stdout=SNAP + "\n")], "mutating": [],
     "launched": SPEC, "changed": True, "facts_include": {"started": True}},
    {"id": "makes-the-snapshot-first", "step": "copy.start", "tags": ["changes"],
     "args": {**START, "create_snapshot": True, "bwlimit": "12M", "compress": "zstd"},
     "script": [cmd(ZLIST, **MISSING), cmd(["zfs", "snapshot", SNAP])],
     "mutating": [["zfs", "snapshot", SNAP]],
     "launched": {"bwlimit": 12 << 20, "compress": "zstd"}, "changed": True,
     "facts_include": {"started": True, "snapshot_created": True}},
    {"id": "incremental-checks-the-base", "step": "copy.start", "tags": ["changes"],
     "args": {**START, "base": BASE, "rollback": True},
     "script": [cmd(["zfs", "list", "-H", "-o", "name", BASE], stdout=BASE + "\n"),
                cmd(ZLIST, stdout=SNAP + "\n")],
     "launched": {"base": BASE, "rollback": True}, "changed": True},
    {"id": "running-job-is-returned-not-doubled", "step": "copy.start", "tags": ["done"],
     "args": dict(START), "env": {"jobs": RUNNING}, "script": [], "mutating": [],
     "launched": None, "changed": False,
     "facts_include": {"started": False, "state": "running", "bytes_done": 5}},
    {"id": "dry-run-prints-the-pipeline", "step": "copy.start", "tags": ["dry-run"],
     "dry_run": True, "args": {**START, "compress": "zstd"},
     "script": [cmd(ZLIST, stdout=SNAP + "\n")], "skipped": [PIPE], "launched": None,
     "changed": True, "facts_include": {"started": False}},
    {"id": "snapshot-missing", "step": "copy.start", "tags": ["error"], "args": dict(START),
     "script": [cmd(ZLIST, **MISSING)], "raises": ("NotFound", "does not exist")},
    {"id": "hostile-dataset", "step": "copy.start", "tags": ["error"],
     "args": {**START, "to_dataset": "tank/x;rm -rf /"}, "script": [],
     "raises": ("UsageError", "bad dataset")},
    {"id": "option-as-address", "step": "copy.start", "tags": ["error"],
     "args": {**START, "to_address": "-oProxyCommand=sh"}, "script": [],
     "raises": ("UsageError", "address")},
    {"id": "base-of-another-dataset", "step": "copy.start", "tags": ["error"],
     "args": {**START, "base": "tank/other@s"}, "script": [],
     "raises": ("UsageError", "not a snapshot of")},
    {"id": "rollback-needs-base", "step": "copy.start", "tags": ["error"],
     "args": {**START, "rollback": True}, "script": [], "raises": ("UsageError", "rollback")},
    {"id": "bad-compress", "step": "copy.start", "tags": ["error"],
     "args": {**START, "compress": "xz"}, "script": [], "raises": ("UsageError", "compress")},
    # ------------------------------------------------------------------ copy.status
    {"id": "running-with-percent", "step": "copy.status", "tags": ["read"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST}, "env": {"jobs": RUNNING},
     "script": [], "mutating": [], "changed": False,
     "facts_include": {"state": "running", "percent": 50.0, "phase": "send"}},
    {"id": "never-started", "step": "copy.status", "tags": ["read"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST}, "script": [],
     "changed": False, "facts_include": {"state": "none", "job": JOB}},
    {"id": "died-without-result", "step": "copy.status", "tags": ["read"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST},
     "env": {"jobs": {JOB: {"progress": {"state": "running", "phase": "send"}}}},
     "script": [], "changed": False, "facts_include": {"state": "died"}},
    {"id": "failed-keeps-its-error", "step": "copy.status", "tags": ["read", "dry-run"],
     "dry_run": True, "args": {"to_alias": "compute-0-14", "to_dataset": DEST},
     "env": {"jobs": {JOB: {"progress": {"state": "failed", "error": "ssh exited 255"}}}},
     "script": [], "skipped": [], "changed": False,
     "facts_include": {"state": "failed", "error": "ssh exited 255"}},
    # ------------------------------------------------------------------ copy.cancel
    {"id": "kills-and-drops-the-partial", "step": "copy.cancel", "tags": ["changes"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST}, "env": {"jobs": RUNNING},
     "script": [cmd(GATE_STATE, stdout=STATE_TOKEN),
                cmd(GATE_ABORT, stdout='{"aborted": true, "exists": false}\n')],
     "mutating": [GATE_ABORT], "changed": True,
     "facts_include": {"state": "cancelled", "aborted_partial": True}},
    {"id": "waits-for-the-receiver-to-notice", "step": "copy.cancel", "tags": ["changes"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST}, "env": {"jobs": RUNNING},
     "script": [cmd(GATE_STATE, stdout=STATE_TOKEN.replace("{", '{"receiving": true, ', 1)),
                cmd(GATE_STATE, stdout=STATE_TOKEN),
                cmd(GATE_ABORT, stdout='{"aborted": true, "exists": false}\n')],
     "sleeps": 1, "changed": True, "facts_include": {"aborted_partial": True}},
    {"id": "keep-partial-for-a-resume", "step": "copy.cancel", "tags": ["changes"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST, "keep_partial": True},
     "env": {"jobs": RUNNING}, "script": [], "mutating": [], "changed": True,
     "facts_include": {"state": "cancelled", "aborted_partial": False}},
    {"id": "nothing-runs-nothing-partial", "step": "copy.cancel", "tags": ["done"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST},
     "env": {"jobs": {JOB: {"spec": SPEC, "progress": {"state": "failed"}}}},
     "script": [cmd(GATE_STATE, stdout=STATE_NONE)], "mutating": [], "changed": False,
     "facts_include": {"state": "failed", "aborted_partial": False}},
    {"id": "dry-run-kills-nothing", "step": "copy.cancel", "tags": ["dry-run"],
     "dry_run": True, "args": {"to_alias": "compute-0-14", "to_dataset": DEST},
     "env": {"jobs": RUNNING}, "script": [cmd(GATE_STATE, stdout=STATE_TOKEN)],
     "skipped": [f"kill job {JOB}", shlex.join(GATE_ABORT)], "changed": True,
     "facts_include": {"state": "running"}},
    {"id": "gate-unreachable", "step": "copy.cancel", "tags": ["error"],
     "args": {"to_alias": "compute-0-14", "to_dataset": DEST},
     "env": {"jobs": {JOB: {"spec": SPEC, "progress": {"state": "failed"}}}},
     "script": [cmd(GATE_STATE, rc=255, stderr="ssh: connect to host 10.1.1.14 port 22: "
                                               "Connection refused\n")],
     "raises": ("RemoteCommandError", "exited 255|rc 255|255")},
]

# ---------------------------------------------------------------------- sync trust
PRIV = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n")
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAjcb7rsKiKWdB9fmPoz+DTkpqHVXOxGJ4Lyt8lOZPDX"
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEIMUE8ku9smpx2LlkFgDP+iF/f80G1g9/RdXaoI6dW2"
KD = "{tmp}/kd"
PINS = [{"alias": "compute-0-14", "keys": [HOSTKEY]}]
KH = f"imgstor-compute-0-14 {HOSTKEY}\n"
AK = "{tmp}/authorized_keys"
GATE = "{tmp}/gate.py"
LINE = (f'restrict,from="10.1.1.1",command="/usr/bin/python3 -I {GATE} --pool tank '
        f'--sender nas-0-0" {PUB} imgstor-sync:nas-0-0')
AUTH = {"public_key": PUB, "sender": "nas-0-0", "from_addresses": ["10.1.1.1"],
        "pools": ["tank"], "authorized_keys": AK, "gate_path": GATE,
        "python": "/usr/bin/python3"}
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther frontend-key\n"

SCENARIOS += [
    {"id": "installs-key-and-pin", "step": "sync.install_key", "tags": ["changes"],
     "args": {"private_key": PRIV, "pins": PINS, "key_dir": KD},
     "script": [cmd(["write-file", f"{KD}/id_ed25519", "0600"]),
                cmd(["write-file", f"{KD}/known_hosts", "0600"])],
     "written": {f"{KD}/id_ed25519": PRIV, f"{KD}/known_hosts": KH}, "changed": True},
    {"id": "replaces-an-old-pin-keeps-others", "step": "sync.install_key",
     "tags": ["changes"], "args": {"private_key": PRIV, "pins": PINS, "key_dir": KD},
     "env": {"dirs": {KD: 0o755},
             "files": {f"{KD}/id_ed25519": [PRIV, 0o600],
                       f"{KD}/known_hosts": ["imgstor-compute-0-14 ssh-ed25519 AAAAold\n"
                                             "imgstor-nas-0-1 ssh-ed25519 AAAAkeep\n", 0o600]}},
     "script": [cmd(["chmod", "0700", KD]), cmd(["write-file", f"{KD}/known_hosts", "0600"])],
     "written": {f"{KD}/known_hosts": "imgstor-nas-0-1 ssh-ed25519 AAAAkeep\n" + KH},
     "changed": True},
    {"id": "key-and-pin-current", "step": "sync.install_key", "tags": ["done"],
     "args": {"private_key": PRIV, "pins": PINS, "key_dir": KD},
     "env": {"dirs": {KD: 0o700}, "files": {f"{KD}/id_ed25519": [PRIV, 0o600],
                                            f"{KD}/known_hosts": [KH, 0o600]}},
     "script": [], "mutating": [], "changed": False},
    {"id": "dry-run-writes-nothing", "step": "sync.install_key", "tags": ["dry-run"],
     "dry_run": True, "args": {"private_key": PRIV, "pins": PINS, "key_dir": KD},
     "script": [], "skipped": [f"write-file {KD}/id_ed25519 0600",
                               f"write-file {KD}/known_hosts 0600"], "changed": True},
    {"id": "not-a-key", "step": "sync.install_key", "tags": ["error"],
     "args": {"private_key": "hello", "pins": PINS, "key_dir": KD}, "script": [],
     "raises": ("UsageError", "not an OpenSSH private key")},
    {"id": "no-host-key-to-pin", "step": "sync.install_key", "tags": ["error"],
     "args": {"private_key": PRIV, "pins": [{"alias": "compute-0-14", "keys": []}],
              "key_dir": KD}, "script": [], "raises": ("UsageError", "no host key")},
    {"id": "authorizes-keeps-other-lines", "step": "sync.authorize", "tags": ["changes"],
     "args": dict(AUTH), "env": {"files": {AK: [OTHER, 0o600]}},
     "script": [cmd(["write-file", GATE, "0700"]), cmd(["write-file", AK, "0600"])],
     "written": {AK: OTHER + LINE + "\n", GATE: "imgstor-sync-gate"}, "changed": True},
    {"id": "authorized-already", "step": "sync.authorize", "tags": ["done"],
     "args": dict(AUTH), "env": {"files": {AK: [OTHER + LINE + "\n", 0o600],
                                           GATE: ["@gate", 0o700]}},
     "script": [], "mutating": [], "changed": False, "facts_include": {"line": LINE}},
    {"id": "dry-run-authorizes-nothing", "step": "sync.authorize", "tags": ["dry-run"],
     "dry_run": True, "args": dict(AUTH), "script": [],
     "skipped": [f"write-file {GATE} 0700", f"write-file {AK} 0600"], "changed": True},
    {"id": "quote-in-from-address", "step": "sync.authorize", "tags": ["error"],
     "args": {**AUTH, "from_addresses": ['10.1.1.1",command="sh']}, "script": [],
     "raises": ("UsageError", "bad from addresses")},
    {"id": "newline-in-from-address", "step": "sync.authorize", "tags": ["error"],
     "args": {**AUTH, "from_addresses": ["10.1.1.1\n"]}, "script": [],
     "raises": ("UsageError", "bad from addresses")},
    {"id": "pull-back-key-on-a-nas", "step": "sync.authorize", "tags": ["changes"],
     "args": {**AUTH, "incremental": True}, "script": [cmd(["write-file", GATE, "0700"]),
                                                      cmd(["write-file", AK, "0600"])],
     "written": {AK: LINE.replace(" --sender nas-0-0",
                                  " --sender nas-0-0 --incremental-from nas-0-0")
                 + "\n"}, "changed": True},
    {"id": "pool-with-space", "step": "sync.authorize", "tags": ["error"],
     "args": {**AUTH, "pools": ["tank --pool x"]}, "script": [],
     "raises": ("UsageError", "bad pools")},
]

# ------------------------------------------------------------------ jobs.watch
# ``facts_sub``: a nested subset of the facts (test_copy_steps.py).  The overlay entries
# run the dm driver's reads on the kernel lab's captures (scn_overlay.py).
from scn_overlay import S_SNAP, T_NONE, T_SNAP  # noqa: E402

WKEY = f"compute-0-14:{DEST}"
OVL = ["dm", "tank", "vm1-vol"]
SCENARIOS += [
    {"id": "copies-and-overlays-in-one-read", "step": "jobs.watch", "tags": ["read"],
     "args": {"copies": [["compute-0-14", DEST], ["compute-0-15", DEST]],
              "overlays": [OVL]},
     "env": {"jobs": RUNNING}, "script": [T_SNAP, S_SNAP], "mutating": [], "changed": False,
     "facts_sub": {"copies": {WKEY: {"state": "running", "percent": 50.0, "job": JOB},
                              f"compute-0-15:{DEST}": {"state": "none"}},
                   "overlays": {"dm/tank/vm1-vol": {"exists": True, "phase": "snapshot"}}}},
    {"id": "one-items-error-is-its-answer", "step": "jobs.watch", "tags": ["read"],
     "args": {"overlays": [["nbd", "tank", "vm1-vol"], OVL]}, "script": [T_NONE],
     "changed": False,
     "facts_sub": {"copies": {},
                   "overlays": {"nbd/tank/vm1-vol": {"error": {"code": "UsageError"}},
                                "dm/tank/vm1-vol": {"exists": False}}}},
    {"id": "dry-run-reads", "step": "jobs.watch", "tags": ["read", "dry-run"], "dry_run": True,
     "args": {"copies": [["compute-0-14", DEST]]}, "env": {"jobs": RUNNING}, "script": [],
     "skipped": [], "changed": False,
     "facts_sub": {"copies": {WKEY: {"state": "running"}}}},
    {"id": "bad-items", "step": "jobs.watch", "tags": ["error"],
     "args": {"copies": [["compute-0-14"]]}, "script": [],
     "raises": ("UsageError", "copies must be a list")},
]


# ------------------------------------------------------------------ copy.prepare (issue 18)
LSNAPS = ["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-d", "1",
          DEST]
GUIDS = ["zfs", "get", "-H", "-p", "-o", "name,value", "guid", BASE, SNAP]
SCENARIOS += [
    {"id": "snapshots-and-tells-guids", "step": "copy.prepare", "tags": ["changes"],
     "args": {"snapshot": SNAP, "create_snapshot": True},
     "script": [cmd(ZLIST, **MISSING), cmd(["zfs", "snapshot", SNAP]),
                cmd(LSNAPS, stdout=f"{BASE}\n{SNAP}\n"),
                cmd(GUIDS, stdout=f"{BASE}\t11\n{SNAP}\t12\n")],
     "mutating": [["zfs", "snapshot", SNAP]], "changed": True,
     "facts_include": {"guid": "12", "older": [["imgstor-0", "11"]]}},
    {"id": "snapshot-there", "step": "copy.prepare", "tags": ["done"],
     "args": {"snapshot": SNAP, "create_snapshot": True},
     "script": [cmd(ZLIST, stdout=SNAP + "\n"), cmd(LSNAPS, stdout=f"{BASE}\n{SNAP}\n"),
                cmd(GUIDS, stdout=f"{BASE}\t11\n{SNAP}\t12\n")],
     "mutating": [], "changed": False, "facts_include": {"guid": "12"}},
    {"id": "dry-run-makes-no-snapshot", "step": "copy.prepare", "tags": ["dry-run"],
     "dry_run": True, "args": {"snapshot": SNAP, "create_snapshot": True},
     "script": [cmd(ZLIST, **MISSING)], "skipped": [shlex.join(["zfs", "snapshot", SNAP])],
     "changed": True},
    {"id": "no-such-snapshot", "step": "copy.prepare", "tags": ["error"],
     "args": {"snapshot": SNAP}, "script": [cmd(ZLIST, **MISSING)],
     "raises": ("NotFound", "does not exist")},
]

# ------------------------------------------------------------------ sync.expect (issue 18)
EXP_DIR = "{tmp}/expect/tank%vm1-vol"
EXP_FULL = f"{EXP_DIR}/nas-0-0@0@12"
EXPECT = {"dataset": DEST, "sender": "nas-0-0", "kind": "local-copy", "type": "volume",
          "toguid": "12"}
DSLIST = ["zfs", "list", "-H", "-o", "name", DEST]
SCENARIOS += [
    {"id": "announces-a-full-copy", "step": "sync.expect", "tags": ["changes"],
     "args": dict(EXPECT), "env": {"dirs": {EXP_DIR: 0o700}},
     "script": [cmd(["write-file", EXP_FULL, "0600"])], "changed": True,
     "written": {EXP_FULL: '"fromguid": "0"'}, "facts_include": {"fromguid": "0"}},
    {"id": "picks-the-base-like-the-job", "step": "sync.expect", "tags": ["changes"],
     "args": {**EXPECT, "dataset": DEST, "sender": "compute-0-14", "kind": "volume",
              "candidates": [["imgstor-0", "11"], ["imgstor-x", "99"]], "rollback": True},
     "env": {"dirs": {EXP_DIR: 0o700}},
     "script": [cmd(DSLIST, stdout=DEST + "\n"), cmd(LSNAPS, stdout=f"{BASE}\n"),
                cmd(["zfs", "get", "-H", "-p", "-o", "name,value", "guid", BASE],
                    stdout=f"{BASE}\t11\n"),
                cmd(["write-file", f"{EXP_DIR}/compute-0-14@11@12", "0600"])],
     "changed": True, "facts_include": {"fromguid": "11"},
     "written": {f"{EXP_DIR}/compute-0-14@11@12": '"rollback": true'}},
    {"id": "announced-already", "step": "sync.expect", "tags": ["done"],
     "args": dict(EXPECT),
     "env": {"files": {EXP_FULL: ['{"dataset": "tank/vm1-vol", "expires": 99999999999, '
                                  '"fromguid": "0", "kind": "local-copy", "rollback": false, '
                                  '"sender": "nas-0-0", "toguid": "12", "type": "volume"}',
                                  0o600]}},
     "script": [], "mutating": [], "changed": False},
    {"id": "dry-run-announces-nothing", "step": "sync.expect", "tags": ["dry-run"],
     "dry_run": True, "args": dict(EXPECT), "script": [],
     "skipped": ["mkdir -m 0700 -p {tmp}/expect", f"mkdir -m 0700 -p {EXP_DIR}",
                 f"write-file {EXP_FULL} 0600"], "changed": True},
    {"id": "only-pool-slash-name", "step": "sync.expect", "tags": ["error"],
     "args": {**EXPECT, "dataset": "tank/a/b"}, "script": [],
     "raises": ("UsageError", "exactly POOL/NAME")},
    {"id": "bad-guid", "step": "sync.expect", "tags": ["error"],
     "args": {**EXPECT, "toguid": "12; rm"}, "script": [],
     "raises": ("UsageError", "bad toguid")},
]

# ------------------------------------------------------------------ sync.revoke, sync.audit
SCENARIOS += [
    {"id": "revokes-the-senders-line", "step": "sync.revoke", "tags": ["changes"],
     "args": {"sender": "nas-0-0", "authorized_keys": AK},
     "env": {"files": {AK: [OTHER + LINE + "\n", 0o600],
                       f"{EXP_DIR}/nas-0-0@0@12": ["{}", 0o600],
                       f"{EXP_DIR}/nas-0-1@0@13": ["{}", 0o600]}},
     "script": [cmd(["write-file", AK, "0600"]),
                cmd(["rm", "-f", "--", f"{EXP_DIR}/nas-0-0@0@12"])],
     "written": {AK: OTHER}, "changed": True},
    {"id": "forgets-the-pin-then-the-key", "step": "sync.revoke", "tags": ["changes"],
     "args": {"receiver": "compute-0-14", "key_dir": KD},
     "env": {"files": {f"{KD}/id_ed25519": [PRIV, 0o600], f"{KD}/known_hosts": [KH, 0o600]}},
     "script": [cmd(["rm", "-f", "--", f"{KD}/known_hosts", f"{KD}/id_ed25519"])],
     "changed": True},
    {"id": "nothing-to-revoke", "step": "sync.revoke", "tags": ["done"],
     "args": {"sender": "nas-0-0", "authorized_keys": AK},
     "env": {"files": {AK: [OTHER, 0o600]}}, "script": [], "mutating": [], "changed": False},
    {"id": "dry-run-revokes-nothing", "step": "sync.revoke", "tags": ["dry-run"],
     "dry_run": True, "args": {"sender": "nas-0-0", "authorized_keys": AK},
     "env": {"files": {AK: [OTHER + LINE + "\n", 0o600]}}, "script": [],
     "skipped": [f"write-file {AK} 0600"], "changed": True},
    {"id": "bad-sender", "step": "sync.revoke", "tags": ["error"],
     "args": {"sender": "nas 0", "authorized_keys": AK}, "script": [],
     "raises": ("UsageError", "bad sender")},
    {"id": "audits-lines-and-gate", "step": "sync.audit", "tags": ["read"],
     "args": {"authorized_keys": AK, "gate_path": GATE, "key_dir": KD},
     "env": {"files": {AK: [OTHER + LINE + "\n", 0o600], GATE: ["old gate", 0o700]}},
     "script": [], "changed": False, "facts_include": {"gate_current": False, "pins": []}},
    {"id": "dry-run-audits", "step": "sync.audit", "tags": ["read", "dry-run"],
     "dry_run": True, "args": {"authorized_keys": AK, "gate_path": GATE, "key_dir": KD},
     "env": {"files": {GATE: ["@gate", 0o700]}}, "script": [], "changed": False,
     "skipped": [],
     "facts_include": {"gate_current": True, "lines": []}},
]
