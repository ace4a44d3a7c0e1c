"""The frontend's log (imgstor/log.py): one logger tree under "imgstor", shown on stderr
with -v, set up by cli.run; nothing without it."""
from __future__ import annotations

import logging

import pytest

from imgstor import cli, log


def logs(ctx):
    logging.getLogger("imgstor.test_log").debug("a step ran on %s", "nas-0-0")
    return "done"


@pytest.fixture
def table(monkeypatch):
    t = [cli.Cmd(("logs",), f"{__name__}:logs")]
    yield t
    log.setup(0)


def test_v_shows_the_imgstor_loggers_on_stderr(table, config_path, capsys):
    assert cli.run(["--config", str(config_path), "-v", "logs"], table, prog="imgstor") == 0
    out, err = capsys.readouterr()
    assert out == "done\n"
    assert err == "[imgstor.test_log] a step ran on nas-0-0\n"


def test_without_v_nothing_is_shown(table, config_path, capsys):
    cli.run(["--config", str(config_path), "--debug", "logs"], table, prog="imgstor")
    capsys.readouterr()
    cli.run(["--config", str(config_path), "logs"], table, prog="imgstor")
    assert capsys.readouterr() == ("done\n", "")


def test_setup_again_replaces_its_handler(capsys):
    for _ in range(3):
        log.setup(1)
    root = logging.getLogger(log.ROOT)
    assert [h.get_name() for h in root.handlers].count("imgstor-stderr") == 1
    logging.getLogger("imgstor.x").info("once")
    assert capsys.readouterr().err == "[imgstor.x] once\n"   # written to the stderr of now
    log.setup(0)
    assert "imgstor-stderr" not in [h.get_name() for h in root.handlers]
