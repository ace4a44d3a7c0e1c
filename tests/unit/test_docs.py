"""Help, the man page and the bash completion are made from the command table (issue 26):
they cannot drift from the parser, every line fits 80 columns, every flag has help, the
exit-code table is the same everywhere, Rocks' `… help` works, the man page renders and
bash loads the completion."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgstor import admin, cli, clihelp, docgen, errors, exitcodes

ROOT = Path(__file__).resolve().parents[2]


def test_generated_files_are_what_the_table_makes():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-docs"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (ROOT / docgen.MAN_PATH).read_text() == docgen.man_page(cli.COMMANDS)
    assert (ROOT / docgen.COMPLETION_PATH).read_text() == docgen.completion(cli.COMMANDS)


def test_a_new_command_shows_up_in_help_man_page_and_completion():
    extra = cli.Cmd(("frobnicate", "host", "thing"), "m:f", [cli.Arg("nas")], {"size": str},
                    "frobnicate a thing", flags=("--force",), group="Volumes and maps")
    table = [*cli.COMMANDS, extra]
    assert "frobnicate host thing" in clihelp.overview(table, "imgstor")
    assert "\\fBfrobnicate host thing\\fR" in docgen.man_page(table)
    assert '"frobnicate host thing|nas|size=|--force --help"' in docgen.completion(table)
    assert docgen.man_page(table) != (ROOT / docgen.MAN_PATH).read_text()


def _all_help(table, prog):
    yield clihelp.overview(table, prog)
    for c in clihelp.visible(table):
        yield clihelp.command_help(c, prog)


@pytest.mark.parametrize("table,prog", [(cli.COMMANDS, "imgstor"),
                                        (admin.ADMIN_COMMANDS, "imgstorageadmin")])
def test_help_fits_80_columns(table, prog):
    for text in _all_help(table, prog):
        long = [line for line in text.splitlines() if len(line) > 80]
        assert long == [], long


def test_every_flag_key_and_argument_has_help():
    for c in clihelp.visible(cli.COMMANDS):
        assert c.help and len(c.help) <= 50 and c.group, c.name
        for f in c.flags:
            assert clihelp.flag_help(c, f), (c.name, f)
        for o, _ in c.options:
            assert clihelp.flag_help(c, o), (c.name, o)
        for k in c.keys:
            assert clihelp.key_help(c, k), (c.name, k)
        for a in c.args:
            assert clihelp.arg_help(c, a), (c.name, a.name)
            assert clihelp.arg_kind(a), (c.name, a.name)     # the completion knows it


def test_grouped_help_with_examples(imgstor):
    r = imgstor("--help")
    assert r.rc == 0
    for heading in ("VMs and their NAS:", "Volumes and maps:", "Attributes:",
                    "Health and repair:", "Examples (more in each command's help):",
                    "Exit status:"):
        assert heading in r.out.splitlines(), heading
    assert "  imgstor add host storagemap nas-0-0 tank vol1 compute-0-1 10G" in r.out
    assert "_complete" not in r.out
    r = imgstor("add", "host", "storagemap", "-h")
    assert r.rc == 0 and "examples:" in r.out and "--wait" in r.out and "SIZE" in r.out


def test_rocks_help_argument(imgstor, capsys):
    """Rocks' `… help`: `rocks list host storagemap help` was `unknown host 'help'`."""
    r = imgstor("list", "host", "storagemap", "help", main=cli.rocks_main)
    assert r.rc == 0 and r.err == "", r
    assert r.out.startswith("usage: imgstor list host storagemap [NAS] [--verify]")
    r = imgstor("list", "host", "help", main=cli.rocks_main)
    assert r.rc == 0 and "list host storagemap" in r.out and "add host vm" not in r.out, r
    r = imgstor("help", main=cli.rocks_main)
    assert r.rc == 0 and "remove host storagemap" in r.out and "ping" not in r.out, r
    r = imgstor("help", "remove", "host", "storagemap")
    assert r.rc == 0 and r.out.startswith("usage: imgstor remove host storagemap NAS VOL")
    r = imgstor("help", "list", "host", "nothing")
    assert r.rc == 2 and "no command 'list host nothing'" in r.err
    r = imgstor("--", "list", "host", "vm")          # review §2: `--` was the command
    assert r.rc == 0 and r.out.startswith("VM "), r


def test_one_exit_code_table_everywhere(imgstor):
    codes = [c for c, _ in exitcodes.EXIT_CODES]
    assert len(codes) == len(set(codes)) and 13 in codes and 130 in codes

    def classes(c):
        yield c
        for s in c.__subclasses__():
            yield from classes(s)
    for c in classes(errors.ImgstorError):
        assert c.exit_code in codes, c
    table = exitcodes.table_text(clihelp.WIDTH, "  ")
    assert table in imgstor("--help").out
    readme = (ROOT / "README.md").read_text()
    for code, text in exitcodes.EXIT_CODES:
        assert f"| {code} | {text.replace('|', chr(92) + '|')} |" in readme
    man = docgen.man_page(cli.COMMANDS)
    exit_status = man[man.index(".SH EXIT STATUS"):]
    for code in codes:
        assert f".TP\n\\fB{code}\\fR\n" in exit_status


def test_man_page_renders(tmp_path):
    # man-db and groff-base are in lab/lab install's package list (scripts/setup)
    assert shutil.which("man") and shutil.which("groff"), "install man-db and groff-base"
    docs = ROOT / "docs"
    p = subprocess.run(["groff", "-man", "-ww", "-z", "imgstor.8"], cwd=docs,
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80",
           "HOME": str(tmp_path)}
    p = subprocess.run(["man", "./imgstor.8"], cwd=docs, capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr
    for section in ("NAME", "SYNOPSIS", "COMMANDS", "OPTIONS", "FILES", "ENVIRONMENT",
                    "EXIT STATUS"):
        assert f"\n{section}\n" in p.stdout, section
    assert "remove host storagemap NAS VOL" in p.stdout
    assert "IMGSTOR_CONFIG" in p.stdout and "/etc/imgstor/imgstor.toml" in p.stdout


def _bash(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_completion_loads():
    p = _bash(f"source {docgen.COMPLETION_PATH}; complete -p imgstor; complete -p rocks")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["complete -F _imgstor imgstor",
                                     "complete -F _imgstor rocks"]


def _complete(line: str, env: dict) -> list[str]:
    """What bash offers for ``line`` (the word under the cursor is its last)."""
    words = line.split(" ")
    script = (f"source {docgen.COMPLETION_PATH}; COMP_WORDS=({' '.join(map(repr, words))});"
              f" COMP_CWORD={len(words) - 1}; _imgstor; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    p = _bash(script, env)
    assert p.returncode == 0, p.stderr
    return sorted(w for w in p.stdout.splitlines() if w)


def test_completion_offers_commands_hosts_and_volumes(tmp_path, config_path, imgstor):
    assert imgstor("add", "host", "vm", "compute-0-0", "name=web1").rc == 0
    from imgstor.state import Store, Volume
    with Store(str(config_path.parent / "state.json")).transaction() as st:
        v = Volume(nas="nas-0-1", zpool="data", vol="vol7")
        st.volumes[v.key] = v
    wrapper = tmp_path / "bin" / "imgstor"         # what the completion runs: imgstor
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m imgstor "
                       '"$@"\n')
    wrapper.chmod(0o755)
    env = {"IMGSTOR_CONFIG": str(config_path)}
    prog = str(wrapper)
    assert _complete(f"{prog} list host st", env) == ["storageattr", "storagedev",
                                                      "storagemap"]
    assert _complete(f"{prog} list host vm ", env) == ["nas", "showdisks=", "web1"]
    assert _complete(f"{prog} add host storagemap ", env) == ["adopt=", "img_sync=",
                                                             "nas-0-0", "nas-0-1"]
    assert _complete(f"{prog} add host storagemap nas-0-1 ", env) == [
        "adopt=", "data", "img_sync="]
    assert _complete(f"{prog} remove host storagemap nas-0-1 ", env) == ["vol7"]
    assert _complete(f"{prog} remove host storagemap nas-0-1 vol7 --f", env) == ["--force"]
    assert _complete(f"{prog} start host vm ", env) == ["size=", "web1"]
    got = _complete(f"{prog} --config {config_path} add host vm ", env)
    assert {"compute-0-0", "compute-0-1", "membership=", "name=", "mem="} <= set(got), got
    assert "nas-0-0" not in got
    # a config that cannot be read offers nothing, and says nothing
    got = _complete(f"{prog} add host vm ", {"IMGSTOR_CONFIG": "/nonexistent"})
    assert got and all(w.endswith("=") for w in got), got


def test_complete_command_is_quiet_and_hidden(imgstor):
    r = imgstor("_complete", "nas")
    assert (r.rc, r.out.split(), r.err) == (0, ["nas-0-0", "nas-0-1"], "")
    r = imgstor("_complete", "zpool", "nas-0-1")
    assert r.out.split() == ["data"]
    assert "_complete" not in docgen.man_page(cli.COMMANDS)
