"""Tool output for the driver parser tests.

Two sources, kept apart on purpose:

* ``userspace(name)``: REAL output captured on this machine (zfs-fuse 0.7, tgt 1.0.85,
  libiscsi-bin, qemu-img 7.2) by tests/fixtures/userspace/capture.sh; each NAME has
  NAME.out / NAME.err / NAME.cmd (argv and rc).
* The constants below: FROM DOCUMENTATION, with the sources cited per sample (a few are
  assembled from a documented format where no verbatim example was found -- those say
  "constructed").  They stay: they cover shapes the lab never printed (two sessions, other
  vendors' targets).  The kernel lab's REAL output (OpenZFS, LIO, open-iscsi, dm in QEMU
  guests) is in tests/fixtures/kernel/ and is asserted, value by value, in
  test_drv_kernel_captures.py; no test here switches on whether a capture exists.
"""
from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
USERSPACE = FIXTURES / "userspace"



def userspace(name: str, part: str = "out") -> str:
    return (USERSPACE / f"{name}.{part}").read_text()


def userspace_rc(name: str) -> int:
    for line in (USERSPACE / f"{name}.cmd").read_text().splitlines():
        if line.startswith("rc: "):
            return int(line[4:])
    raise AssertionError(f"no rc in {name}.cmd")


# --------------------------------------------------------------------------- open-iscsi
# Source: RHEL/CentOS iSCSI walkthroughs quoting `iscsiadm -m session -P 0`
# ("tcp: [1] 192.168.4.4:3260,1 iqn.2018-02.com.example:randomnumber (non-flash)") and the
# Oracle gluster-block guide (two sessions).  FROM DOCUMENTATION.
ISCSIADM_SESSION = """\
tcp: [1] 192.168.4.4:3260,1 iqn.2018-02.com.example:randomnumber (non-flash)
tcp: [2] 127.43.0.10:3260,1 iqn.2001-04.com.nas-0-0-vm1-vol (non-flash)
"""

# Source: OpenEBS docs (docs.openebs.io, "resize a jiva volume"), `iscsiadm -m session -P 3`
# (indentation written as tabs, as iscsiadm prints it; the page shows spaces).
# FROM DOCUMENTATION.
ISCSIADM_SESSION_P3 = """\
iSCSI Transport Class version 2.0-870
version 2.0-873
Target: iqn.2016-09.com.openebs.jiva:pvc-8de2f9e7-64a3-11e8-994b-000c2959d9a2 (non-flash)
	Current Portal: 10.106.254.221:3260,1
	Persistent Portal: 10.106.254.221:3260,1
		**********
		Interface:
		**********
		Iface Name: default
		Iface Transport: tcp
		Iface Initiatorname: iqn.1993-08.org.debian:01:c6385a9091e6
		Iface IPaddress: 20.10.45.20
		Iface HWaddress: <empty>
		Iface Netdev: <empty>
		SID: 1
		iSCSI Connection State: LOGGED IN
		iSCSI Session State: LOGGED_IN
		Internal iscsid Session State: NO CHANGE
		*********
		Timeouts:
		*********
		Recovery Timeout: 120
		Target Reset Timeout: 30
		LUN Reset Timeout: 30
		Abort Timeout: 15
		*****
		CHAP:
		*****
		username: <empty>
		password: ********
		username_in: <empty>
		password_in: ********
		************************
		Negotiated iSCSI params:
		************************
		HeaderDigest: None
		DataDigest: None
		MaxRecvDataSegmentLength: 262144
		MaxXmitDataSegmentLength: 65536
		FirstBurstLength: 65536
		MaxBurstLength: 262144
		ImmediateData: Yes
		InitialR2T: Yes
		MaxOutstandingR2T: 1
		************************
		Attached SCSI devices:
		************************
		Host Number: 3	State: running
		scsi3 Channel 00 Id 0 Lun: 0
			Attached scsi disk sdb		State: running
"""

# Source: same OpenEBS page, `iscsiadm -m discovery -t st -p 10.106.254.221`; the second
# line from the Red Hat storage guide's sendtargets example.  FROM DOCUMENTATION.
ISCSIADM_DISCOVERY = """\
10.106.254.221:3260,1 iqn.2016-09.com.openebs.jiva:pvc-8de2f9e7-64a3-11e8-994b-000c2959d9a2
192.168.1.115:3260,1 iqn.2026-06.lab.local:alma-target01
"""

# `iscsiadm -m session` with no sessions: exit 21, this text on stderr (open-iscsi
# usr/iscsiadm.c "No active sessions."; os-brick matches the same text).  FROM DOCUMENTATION.
ISCSIADM_NO_SESSIONS_ERR = "iscsiadm: No active sessions.\n"

# /etc/iscsi/initiatorname.iscsi as Debian's open-iscsi package writes it.  FROM DOCUMENTATION.
INITIATORNAME_ISCSI = """\
## DO NOT EDIT OR REMOVE THIS FILE!
## If you remove this file, the iSCSI daemon will not start.
## If you change the InitiatorName, existing access control lists
## may reject this initiator.  The InitiatorName must be unique
## for each iSCSI initiator.  Do NOT duplicate iSCSI InitiatorNames.
InitiatorName=iqn.1993-08.org.debian:01:c6385a9091e6
"""

# --------------------------------------------------------------------------- device-mapper
# Source: Linux Documentation/admin-guide/device-mapper/snapshot.rst ("How snapshot is
# used by LVM2" and "How snapshot-merge is used by LVM2").  FROM DOCUMENTATION.
DMSETUP_TABLE = """\
volumeGroup-base-real: 0 2097152 linear 8:19 384
volumeGroup-snap-cow: 0 204800 linear 8:19 2097536
volumeGroup-snap: 0 2097152 snapshot 254:11 254:12 P 16
volumeGroup-base: 0 2097152 snapshot-origin 254:11
"""
DMSETUP_STATUS_SNAPSHOT = "0 8388608 snapshot 397896/2097152 1560\n"
DMSETUP_STATUS_MERGING = "0 8388608 snapshot-merge 281688/2097152 1104\n"
DMSETUP_STATUS_MERGED = "0 8388608 snapshot-merge 16/2097152 16\n"
# Status words of an invalidated / failed snapshot: kernel drivers/md/dm-snap.c
# snapshot_status() ("Invalid", "Merge failed", "Overflow").  Constructed around them.
DMSETUP_STATUS_INVALID = "0 8388608 snapshot Invalid\n"
DMSETUP_STATUS_MERGE_FAILED = "0 8388608 snapshot-merge Merge failed\n"

# --------------------------------------------------------------------------- OpenZFS
# First line of OpenZFS `zpool upgrade -v` (cmd/zpool/zpool_main.c) and `zfs version`
# (zfs-2.1.11 on Debian 12 bookworm-backports).  FROM DOCUMENTATION.
OPENZFS_ZPOOL_UPGRADE_V = """\
This system supports ZFS pool feature flags.

The following features are supported:

FEAT DESCRIPTION
-------------------------------------------------------------
async_destroy                         (read-only compatible)
     Destroy filesystems asynchronously.
"""
OPENZFS_VERSION = "zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n"
# `zfs list -H -p -o name,type,used,available,referenced,volsize,mountpoint -t all -r tank`:
# constructed from zfs-list(8) (-H tab-separated, -p exact bytes, "-" for n/a).
OPENZFS_LIST_P = """\
tank	filesystem	1125646336	8990887424	98304	-	/tank
tank/vm1-vol	volume	1125122048	10116009472	57344	1073741824	-
tank/vm1-vol@imgstor-1	snapshot	0	-	57344	1073741824	-
"""
OPENZFS_ZPOOL_LIST_P = "tank\t10200547328\t1125646336\t9074900992\tONLINE\n"

# --------------------------------------------------------------------------- targetcli
# Source: oVirt vdsm PR #264 / #139 (`targetcli ls /iscsi/…` with explicit portals) and a
# CentOS LIO guide (ACL with mapped_lun0).  Combined into one tree of the
# `targetcli ls /iscsi` shape.  FROM DOCUMENTATION.
TARGETCLI_LS_ISCSI = """\
o- iscsi .......................................................................... [Targets: 2]
  o- iqn.2003-01.org.alpine.05 ....................................................... [TPGs: 1]
  | o- tpg50 ............................................................ [gen-acls, no-auth]
  |   o- acls ......................................................................... [ACLs: 0]
  |   o- luns ......................................................................... [LUNs: 2]
  |   | o- lun0 ................................. [fileio/05-00 (/target/05/00) (default_tg_pt_gp)]
  |   | o- lun1 ................................. [fileio/05-01 (/target/05/01) (default_tg_pt_gp)]
  |   o- portals ................................................................... [Portals: 2]
  |     o- 192.168.122.34:3260 ............................................................ [OK]
  |     o- 192.168.122.35:3260 ............................................................ [OK]
  o- iqn.2017-05.com.master:ip149 .................................................... [TPGs: 1]
    o- tpg1 ........................................................... [no-gen-acls, no-auth]
      o- acls ......................................................................... [ACLs: 1]
      | o- iqn.2017-05.com.master:ip149 ................................... [Mapped LUNs: 1]
      |   o- mapped_lun0 ...................................................... [lun0 block/sdb1_iscsi (rw)]
      o- luns ......................................................................... [LUNs: 1]
      | o- lun0 ....................................... [block/sdb1_iscsi (/dev/vg_iscsi/lv_iscsi)]
      o- portals ................................................................... [Portals: 1]
        o- 0.0.0.0:3260 ................................................................... [OK]
"""
# Source: targetcli-fb issue threads quoting `targetcli` start-up without a system bus.
# FROM DOCUMENTATION.
TARGETCLI_NO_DBUS_ERR = (
    "dbus.exceptions.DBusException: org.freedesktop.DBus.Error.FileNotFound: "
    "Failed to connect to socket /run/dbus/system_bus_socket: No such file or directory\n")
