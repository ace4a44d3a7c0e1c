"""validate.py: strict patterns; the hostile corpus is refused directly and via the CLI
(exit 2, store byte-for-byte unchanged)."""
from __future__ import annotations

import pytest

from imgstor import validate
from imgstor.errors import UsageError

HOSTILE = [
    "", "a;b", "vm1;rm -rf /", "$(reboot)", "${IFS}", "`id`", "vm 1", " vm1", "vm1 ",
    "..", "../etc", "a/../b", "a/b", "vm1\n", "vm1\nrm", "vm1\r", "vm1\t", "vm1\x00",
    "x" * 300, "vm\uff11", "\uff56m1", "vm\u0131", "vm1\u200b", "v\u0430m",  # lookalikes
    "-rf", "-vm1", "--foo=1", "a|b", "a&b", "a>b", "a<b", "*", "?", "~root", "'a'", '"a"',
    "a\\b", "a,b", "a b", "a=b",
]


@pytest.mark.parametrize("check", [validate.host, validate.vm, validate.zpool,
                                   validate.volume, validate.iqn])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_refused(check, value):
    with pytest.raises(UsageError) as e:
        check(value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("value", ["compute-0-0", "nas-0-0", "a", "0", "nas-0-0.ibnet",
                                   "a" * 63, ".".join(["a" * 63] * 3)])
def test_host_ok(value):
    assert validate.host(value) == value


@pytest.mark.parametrize("value", ["Compute-0-0", "a-", "-a", "a" * 64, "a..b", "a.",
                                   ".a", "a_b", "a" * 63 + "." + "b" * 200])
def test_host_bad(value):
    with pytest.raises(UsageError, match="host name"):
        validate.host(value)


@pytest.mark.parametrize("value", ["tank", "Tank_2", "data.pool", "t-1", "a" * 64])
def test_zpool_ok(value):
    assert validate.zpool(value) == value


@pytest.mark.parametrize("value", ["mirror", "mirror1", "raidz2", "spare", "log", "logs",
                                   "c0", "c1t0d0", "1tank", "_tank", "a..b", "a" * 65,
                                   "tank/vol"])
def test_zpool_bad(value):
    with pytest.raises(UsageError, match="zpool"):
        validate.zpool(value)


@pytest.mark.parametrize("value", ["vm1-vol", "compute-0-0-0-vol", "a:b", "a.b", "A_1",
                                   "a" * 128])
def test_volume_ok(value):
    assert validate.volume(value) == value


@pytest.mark.parametrize("value", ["a..b", "a" * 129, "-a", ".a", "a/b", ":a"])
def test_volume_bad(value):
    with pytest.raises(UsageError, match="volume"):
        validate.volume(value)


@pytest.mark.parametrize("value", ["iqn.2001-04.com.example:storage.disk2.sys1.xyz",
                                   "iqn.2024-01.org.imgstor", "iqn.2024-01.edu.ucsd:nas-0-0:vm1-vol"])
def test_iqn_ok(value):
    assert validate.iqn(value) == value


@pytest.mark.parametrize("value", ["iqn.24-01.org.x", "eui.02004567A425678D",
                                   "iqn.2024-01.ORG.x", "iqn.2024-01.org.x:a b",
                                   "iqn.2024-01.org.x:" + "a" * 220, "iqn.2024-1.org.x"])
def test_iqn_bad(value):
    with pytest.raises(UsageError, match="IQN"):
        validate.iqn(value)


@pytest.mark.parametrize("text,expect", [
    ("10", 10 * 2**30), ("10G", 10 * 2**30), ("10g", 10 * 2**30), ("512M", 512 * 2**20),
    ("1T", 2**40), ("100K", 102400), ("1.5G", 3 * 2**29), (36, 36 * 2**30),
    ("8589934591G", 2**63 - 2**30), ("9223372036854775807K", None),
])
def test_parse_size_ok(text, expect):
    if expect is None:                       # past the limit in bytes: refused
        with pytest.raises(UsageError, match="too large"):
            validate.parse_size(text)
        return
    assert validate.parse_size(text) == expect


@pytest.mark.parametrize("text", ["0", "0G", "-1", "-10G", "1.5x", "10GB", "10 G", " 10",
                                  "10 ", "", "G", "1e3", "0x10", "1,000", "\uff11\uff10",
                                  "8589934593G", "8589934592G", "8192P", "9" * 40,
                                  "1.0000000000000000000000000001G", "10\n", "1.", ".5", "nan",
                                  "inf", "0.0000000001K", True, 1.5, None, -3])
def test_parse_size_bad(text):
    with pytest.raises(UsageError, match="size"):
        validate.parse_size(text)


def test_message_names_field_and_truncates():
    with pytest.raises(UsageError) as e:
        validate.volume("x" * 300, "volume")
    assert e.value.message.startswith("invalid volume 'xxx")
    assert len(e.value.message) < 250


# ---- the corpus through the CLI ----

CLI_CASES = [
    ("add", "host", "vm", "{h}"),
    ("add", "host", "vm", "compute-0-0", "name={h}"),
    ("set", "host", "vm", "nas", "{h}", "nas=nas-0-0"),
    ("set", "host", "vm", "nas", "compute-0-0-0", "nas={h}"),
    ("set", "host", "vm", "nas", "compute-0-0-0", "nas=nas-0-0", "zpool={h}"),
    ("remove", "host", "vm", "{h}"),
    ("remove", "host", "vm", "nas", "{h}"),
    ("list", "host", "vm", "nas", "{h}"),
    ("unbusy", "{h}", "compute-0-0-0-vol"),
    ("unbusy", "nas-0-0", "{h}"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: " ".join(c))
def test_hostile_via_cli(imgstor, state_path, case):
    assert imgstor("add", "host", "vm", "compute-0-0").rc == 0
    assert imgstor("set", "host", "vm", "nas", "compute-0-0-0", "nas=nas-0-0").rc == 0
    before = state_path.read_bytes()
    for h in HOSTILE:
        argv = [a.replace("{h}", h) for a in case]
        r = imgstor(*argv)
        assert r.rc == 2, (h, r)
        assert r.err.startswith("error: "), (h, r)
        assert state_path.read_bytes() == before, h
