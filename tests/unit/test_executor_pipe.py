"""``LocalExecutor.pipe``: every stage's exit status, and one deadline for the whole pipeline
(armed at the start, enforced while the last stage's output is drained: code review Z2)."""
from __future__ import annotations

import time

import pytest

from imgstor.errors import RemoteCommandError
from imgstor.remote.executor import LocalExecutor


def test_every_stage_status_is_kept() -> None:
    ex = LocalExecutor("t")
    res = ex.pipe([["sh", "-c", "echo hi; exit 3"], ["cat"]], check=False)
    assert [r.rc for r in res] == [3, 0]
    assert res[-1].stdout == "hi\n"
    with pytest.raises(RemoteCommandError) as ei:
        ex.pipe([["sh", "-c", "echo oops >&2; exit 3"], ["cat"]])
    assert ei.value.rc == 3 and "oops" in ei.value.stderr


def test_a_hanging_first_stage_is_killed_at_the_deadline() -> None:
    ex = LocalExecutor("t")
    t0 = time.monotonic()
    res = ex.pipe([["sleep", "30"], ["cat"]], check=False, timeout=1)
    took = time.monotonic() - t0
    assert took < 10, took                      # not 30 s: the drain honours the deadline
    assert [r.rc for r in res] == [124, 124]
    assert "timed out" in res[0].stderr


def test_a_hanging_last_stage_that_closed_its_stdout_is_killed() -> None:
    ex = LocalExecutor("t")
    t0 = time.monotonic()
    res = ex.pipe([["echo", "x"], ["sh", "-c", "exec >&-; sleep 30"]], check=False, timeout=1)
    assert time.monotonic() - t0 < 10
    assert [r.rc for r in res] == [0, 124]


def test_output_before_the_hang_is_kept() -> None:
    ex = LocalExecutor("t")
    res = ex.pipe([["sh", "-c", "echo early; sleep 30"], ["cat"]], check=False, timeout=1)
    assert res[-1].stdout == "early\n"
    assert [r.rc for r in res] == [124, 124]


def test_missing_command_is_127_and_nothing_is_left_running() -> None:
    ex = LocalExecutor("t")
    res = ex.pipe([["sleep", "30"], ["no-such-tool-xyz"]], check=False, timeout=5)
    assert [r.rc for r in res] == [-9, 127]


def test_write_file_is_atomic_with_mode_and_skipped_in_a_dry_run(tmp_path) -> None:
    from imgstor.remote.executor import DryRunExecutor
    p = tmp_path / "d" / "f"
    LocalExecutor("t").write_file(str(p), b"one", mode=0o600)
    assert p.read_bytes() == b"one" and oct(p.stat().st_mode & 0o777) == "0o600"
    assert oct(p.parent.stat().st_mode & 0o777) == "0o700"
    dry = DryRunExecutor("t")
    dry.write_file(str(p), b"two")
    assert p.read_bytes() == b"one" and dry.skipped == [f"write-file {p} 0600"]
    assert [x.name for x in p.parent.iterdir()] == ["f"]      # no temp file left
