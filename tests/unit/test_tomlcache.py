"""tomlcache: the config's parsed TOML kept between commands while the file is unchanged."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from imgstor import tomlcache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    (tmp_path / "varlib" / "cache").mkdir(mode=0o700, parents=True)
    monkeypatch.setattr(tomlcache, "CACHE_DIR", str(tmp_path / "varlib" / "cache"))
    return tmp_path / "varlib" / "cache"


def old(path: Path) -> None:
    """Make the file look written a minute ago (past the racy window)."""
    t = time.time() - 60
    os.utime(path, (t, t))


def test_kept_while_unchanged_and_reread_when_changed(tmp_path, cache):
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text('[state]\npath = "s.json"\n[hosts.nas-0-0]\nrole = "nas"\n')
    assert tomlcache.load(str(cfg)) == tomllib.loads(cfg.read_text())
    assert not cache.exists() or not list(cache.iterdir())      # just written: not kept
    old(cfg)
    first = tomlcache.load(str(cfg))
    [entry] = cache.iterdir()
    assert (cache.stat().st_mode & 0o777, entry.stat().st_mode & 0o777) == (0o700, 0o600)
    assert tomlcache.load(str(cfg)) == first
    cfg.write_text('[state]\npath = "other.json"\n')              # same size or not: seen
    old(cfg)
    assert tomlcache.load(str(cfg)) == {"state": {"path": "other.json"}}


def test_a_cache_hit_does_not_import_tomllib(tmp_path, cache):
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text('[state]\npath = "s.json"\n')
    old(cfg)
    code = ("import sys; from imgstor import tomlcache; tomlcache.CACHE_DIR = sys.argv[2]; "
            "r = tomlcache.load(sys.argv[1]); print(r['state']['path'], 'tomllib' in sys.modules)")
    outs = [subprocess.run([sys.executable, "-c", code, str(cfg), str(cache)],
                           capture_output=True, text=True, cwd=ROOT).stdout.split()
            for _ in range(2)]
    assert outs == [["s.json", "True"], ["s.json", "False"]]


def test_the_cache_is_in_the_state_directory_never_home(tmp_path, monkeypatch):
    """As root with HOME=/nonexistent it made /nonexistent/.cache/imgstor; now it is
    /var/lib/imgstor/cache, used only where it exists (the transport makes it for the node
    app)."""
    from imgstor.config import Config
    assert tomlcache.CACHE_DIR == os.path.join(os.path.dirname(Config.state_path), "cache")
    home = tmp_path / "nonexistent"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    (tmp_path / "varlib").mkdir(mode=0o700)
    monkeypatch.setattr(tomlcache, "CACHE_DIR", str(tmp_path / "varlib" / "cache"))
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text('[state]\npath = "s.json"\n')
    old(cfg)
    assert tomlcache.load(str(cfg)) == {"state": {"path": "s.json"}}
    assert not home.exists() and not (tmp_path / "varlib" / "cache").exists()


def test_others_cache_is_not_read(tmp_path, cache):
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text('[state]\npath = "s.json"\n')
    old(cfg)
    tomlcache.load(str(cfg))
    [entry] = cache.iterdir()
    key = tomlcache._key(str(cfg), cfg.stat())
    import marshal
    planted = marshal.dumps((key, {"state": {"path": "planted.json"}}))
    entry.write_bytes(planted)
    assert tomlcache.load(str(cfg))["state"]["path"] == "planted.json"   # ours: trusted
    entry.write_bytes(planted)
    os.chmod(entry, 0o666)                                        # writable by others
    assert tomlcache.load(str(cfg))["state"]["path"] == "s.json"
    entry.write_bytes(planted)
    os.chmod(entry, 0o600)
    os.chmod(cache, 0o755)                                        # a directory others may read
    assert tomlcache.load(str(cfg))["state"]["path"] == "s.json"


def test_bad_toml_and_dates(tmp_path, cache):
    cfg = tmp_path / "imgstor.toml"
    cfg.write_text("[state\n")
    old(cfg)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomlcache.load(str(cfg))
    cfg.write_text("when = 2020-01-01T00:00:00Z\n")              # marshal cannot keep dates
    old(cfg)
    assert tomlcache.load(str(cfg))["when"].year == 2020
    assert tomlcache.load(str(cfg))["when"].year == 2020


def test_entries_of_removed_files_are_dropped(tmp_path, cache):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    for p in (a, b):
        p.write_text("x = 1\n")
        old(p)
    tomlcache.load(str(a))
    a.unlink()
    tomlcache.load(str(b))                          # a write: prunes a's entry
    assert [p.name for p in cache.iterdir()] == [tomlcache._entry(str(cache), str(b))
                                                 .rsplit("/", 1)[1]]
