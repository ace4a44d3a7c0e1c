"""CHAP per target (issue 4): the frontend's credential store (imgstor/chap.py), 0600
files beside the state, never in it."""
from __future__ import annotations

import json
import os
import stat

import pytest

from imgstor import chap as chapstore
from imgstor.errors import StateError, UsageError


def test_credentials_file_is_0600_in_0700_dirs_and_reused(tmp_path):
    state = str(tmp_path / "state.json")
    c1 = chapstore.ensure(state, "nas-0-0", "vm1-vol")
    path = tmp_path / "chap" / "nas-0-0" / "vm1-vol.json"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == c1.wire()
    assert len(c1.password) == chapstore.PASSWORD_LEN and c1.password.isalnum()
    assert chapstore.USER_RE.match(c1.user)
    assert chapstore.ensure(state, "nas-0-0", "vm1-vol") == c1          # reused
    assert chapstore.load(state, "nas-0-0", "vm1-vol") == c1
    assert c1.password not in repr(c1) and c1.password not in str(c1)
    c2 = chapstore.ensure(state, "nas-0-0", "vm2-vol")
    assert c2.password != c1.password and c2.user != c1.user
    assert not list(path.parent.glob("*.tmp-*"))
    assert chapstore.remove(state, "nas-0-0", "vm1-vol") is True
    assert chapstore.remove(state, "nas-0-0", "vm1-vol") is False
    assert chapstore.load(state, "nas-0-0", "vm1-vol") is None


def test_credentials_permissions_tightened_and_dry_run_keeps_nothing(tmp_path):
    state = str(tmp_path / "state.json")
    c = chapstore.ensure(state, "nas-0-0", "vm1-vol", write=False)
    assert not (tmp_path / "chap").exists() and chapstore.PASSWORD_RE.match(c.password)
    c = chapstore.ensure(state, "nas-0-0", "vm1-vol")
    path = chapstore.path_for(state, "nas-0-0", "vm1-vol")
    os.chmod(path, 0o644)
    assert chapstore.ensure(state, "nas-0-0", "vm1-vol") == c
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_malformed_credentials_file_is_an_error_without_its_content(tmp_path):
    state = str(tmp_path / "state.json")
    chapstore.ensure(state, "nas-0-0", "vm1-vol")
    path = chapstore.path_for(state, "nas-0-0", "vm1-vol")
    with open(path, "w") as f:
        f.write('{"user": "x", "password": "s3cret with space"}')
    with pytest.raises(StateError) as ei:
        chapstore.load(state, "nas-0-0", "vm1-vol")
    assert "s3cret" not in str(ei.value)


def test_bad_names_refused_before_any_file(tmp_path):
    with pytest.raises(UsageError):
        chapstore.ensure(str(tmp_path / "s.json"), "../etc", "vm1-vol")
    with pytest.raises(UsageError):
        chapstore.ensure(str(tmp_path / "s.json"), "nas-0-0", "../../x")
