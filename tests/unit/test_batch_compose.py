"""Batches that compose (issue 26): lines stream as items finish (--json: JSON lines),
a line may start with `imgstor` or `rocks`, and what `dump host vm`, `dump host vm nas`
and `dump host attr` print is what `batch` replays."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imgstor import cli
from imgstor.state import Store

ROOT = Path(__file__).resolve().parents[2]
RELEASE = threading.Event()
SEEN_FIRST = threading.Event()


def slow(ctx, tag: str) -> str:
    """Waits until the test has seen the first item's line (or gives up)."""
    RELEASE.wait(30)
    return f"slow {tag}: {'released' if RELEASE.is_set() else 'never released'}"


class Watch:
    """stdout for the batch: releases the slow item once the first item's line is out."""
    def __init__(self, marker: str) -> None:
        self.text, self.marker = "", marker

    def write(self, s: str) -> int:
        self.text += s
        if self.marker in self.text and not SEEN_FIRST.is_set():
            SEEN_FIRST.set()
            RELEASE.set()
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("json_flag", [False, True])
def test_lines_stream_as_items_finish(config_path, tmp_path, monkeypatch, json_flag):
    """Item 2 waits until item 1's line has been printed: on a batch that prints only at
    the end it would wait in vain (and say so)."""
    RELEASE.clear()
    SEEN_FIRST.clear()
    table = [*cli.COMMANDS, cli.Cmd(("slow",), f"{__name__}:slow", [cli.Arg("tag")],
                                    help="test")]
    monkeypatch.setattr(cli, "COMMANDS", table)
    f = tmp_path / "b.txt"
    f.write_text("add host vm compute-0-0 name=first\nslow two\n")
    out = Watch('"item": 1' if json_flag else "added VM first")
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["--config", str(config_path), "batch", str(f)] + (["--json"] if json_flag else [])
    assert cli.main(argv) == 0
    assert SEEN_FIRST.is_set()
    assert "slow two: released" in out.text, out.text
    if json_flag:
        lines = [json.loads(x) for x in out.text.splitlines()]
        assert [x.get("item") for x in lines] == [1, 2, None]
        assert lines[-1]["summary"] == {"items": 2, "ok": 2, "failed": 0}
    else:
        assert out.text.splitlines()[-1] == "2 items: 2 ok, 0 failed"


def test_lines_may_start_with_imgstor_or_rocks(imgstor, tmp_path, state_path):
    f = tmp_path / "b.txt"
    f.write_text("imgstor add host vm compute-0-0 name=a\n"
                 "/usr/local/bin/imgstor add host vm compute-0-0 name=b\n"
                 "rocks add host vm compute-0-1 name=c\n"
                 "rocks add appliance attr compute x y\n"
                 "rocks set host vm nas c nas=nas-0-0\n")
    r = imgstor("batch", str(f))
    assert r.rc == 1, r
    rows = {int(line.split()[0]): line for line in r.out.splitlines()[1:-1]}
    assert "not a storage command rocks forwards" in rows[4] and rows[4].split()[2] == "2"
    assert all(rows[i].split()[2] == "0" for i in (1, 2, 3, 5)), r.out
    st = Store(str(state_path)).read()
    assert sorted(st.vms) == ["a", "b", "c"] and st.vms["c"].nas == "nas-0-0"


def _imgstor(config: Path, *argv: str, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "imgstor", "--config", str(config), *argv],
                          input=stdin, capture_output=True, text=True, cwd=ROOT)


def test_dump_then_batch_round_trip(config_path, imgstor, tmp_path):
    """Everything the store-only commands keep, dumped and replayed into an empty state
    through `imgstor batch -` (review: `dump host vm nas | imgstor batch -` failed)."""
    for argv in (("add", "host", "vm", "compute-0-0", "compute"),
                 ("add", "host", "vm", "compute-0-0", "name=web1"),
                 ("add", "host", "vm", "compute-0-1", "name=db1", "mem=2G", "cpus=2",
                  "kernel=/boot/vmlinuz", "append=root=/dev/vda1 console=ttyS0"),
                 ("set", "host", "vm", "nas", "web1", "nas=nas-0-0", "zpool=tank2"),
                 ("set", "host", "vm", "nas", "compute-0-0-0", "nas=nas-0-1"),
                 ("set", "host", "attr", "compute-0-0", "img_sync", "value=true"),
                 ("set", "host", "attr", "compute-0-1", "compute-0-0", "ib_net", "value=ibnet"),
                 ("set", "host", "storageattr", "nas-0-0", "frequency", "600"),
                 ("set", "host", "storageattr", "nas-0-1", "uploadspeed", "10M"),
                 ("set", "host", "zvolattr", "nas-0-0", "web1-vol", "downloadspeed", "5M")):
        assert imgstor(*argv).rc == 0, argv
    lists = [("list", "host", "vm"), ("list", "host", "vm", "nas"), ("list", "host", "attr"),
             ("list", "host", "storageattr"), ("list", "host", "zvolattr", "nas-0-0")]
    before = [_imgstor(config_path, *a, "--json").stdout for a in lists]
    dump = "".join(_imgstor(config_path, "dump", "host", *what.split()).stdout
                   for what in ("vm", "vm nas", "attr"))
    assert "imgstor add host vm compute-0-0 name=compute-0-0-0 membership=compute\n" in dump
    assert "imgstor set host vm nas web1 nas=nas-0-0 zpool=tank2\n" in dump
    assert "mem=2048 cpus=2 mac=52:54:00:" in dump and \
        "'append=root=/dev/vda1 console=ttyS0'" in dump
    assert "imgstor set host attr compute-0-0 img_sync value=true\n" in dump
    assert "imgstor set host storageattr nas-0-1 uploadspeed 10M\n" in dump
    assert "imgstor set host zvolattr nas-0-0 web1-vol downloadspeed 5M\n" in dump
    # a new, empty state, the same config: replay the dump through a pipe
    other = tmp_path / "other"
    other.mkdir()
    cfg2 = other / "imgstor.toml"
    cfg2.write_text(config_path.read_text())
    p = subprocess.run(["bash", "-c", f"set -o pipefail; ( {sys.executable} -m imgstor "
                        f"--config {config_path} dump host vm; {sys.executable} -m imgstor "
                        f"--config {config_path} dump host vm nas; {sys.executable} -m "
                        f"imgstor --config {config_path} dump host attr ) | "
                        f"{sys.executable} -m imgstor --config {cfg2} batch -"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == f"{dump.count(chr(10))} items: " \
        f"{dump.count(chr(10))} ok, 0 failed"
    after = [_imgstor(cfg2, *a, "--json").stdout for a in lists]
    strip = [json.loads(x)["rows"] for x in before], [json.loads(x)["rows"] for x in after]
    assert strip[0] == strip[1]
    # and again: every line is "already done"
    p = _imgstor(cfg2, "batch", "-", stdin=dump)
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.path.exists(other / "state.json")
