"""What ``imgstor --help``, ``imgstor COMMAND -h`` and Rocks' ``imgstor COMMAND help`` print,
made from the CLI's own command table (imgstor/cli.py passes it in: this module does not
import the CLI), and the words the shell completion asks for (``imgstor _complete``).

Every line fits 80 columns.  The man page and the bash completion script are made from
the same table by imgstor/docgen.py, so none of them can say something the parser does
not do (tests/unit/test_docs.py).
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["WIDTH", "FLAG_HELP", "KEY_HELP", "ARG_HELP", "ARG_KINDS", "GLOBAL_FLAGS",
           "groups", "visible", "synopsis", "overview", "command_help", "help_text",
           "complete", "arg_help", "arg_kind", "flag_help", "key_help", "metavar"]

WIDTH = 79                      # every line of help, so a terminal of 80 never wraps it
GLOBAL_FLAGS = [
    ("--json", "print JSON: {\"version\", \"command\", \"exit_code\", \"rows\" | "
               "\"message\" | \"error\", ...}; errors on stdout too"),
    ("-n, --dry-run", "run the read-only commands, print every change as SKIP> ... "
                      "and change nothing (the state included)"),
    ("-v, --debug", "show every remote command"),
    ("--config PATH", "the config file (default $IMGSTOR_CONFIG, else "
                      "/etc/imgstor/imgstor.toml)"),
    ("--version", "print the version and exit"),
]


# What a flag, key or argument means where its command does not say otherwise.
FLAG_HELP = {
    "--wait": "wait until the sync copy and merge (map) or the copy back to the NAS "
              "(unmap) is done, showing progress",
    "--force": "go on past errors on the node and a disk in use (its VM loses it)",
    "--verify": "compare each volume with its NAS's live targets (exit 9 on a difference)",
    "--yes": "do not ask for confirmation",
    "--quiet": "print nothing but errors (cron)",
    "--resume": "hand every job no monitor runs, failed ones too, to a monitor",
    "--pool": "run the jobs queued for pool KEY (started by imgstor itself)",
    "--jobs": "run up to N items at once (default 8)",
    "--destroy-orphans": "also destroy orphan temp-write stores and local copies (never "
                         "a NAS volume)",
    "--discard-node-data": "discard data on the node newer than the NAS's last copy",
    "--local": "only the checks on this frontend, no host is reached",
    "--timeout": "seconds to wait for the guest to shut down",
}
KEY_HELP = {
    "name": "the VM's name (makes the line safe to re-run)",
    "membership": "the Rocks membership the VM is named after",
    "showdisks": "yes: add each VM's disk (NAS:pool/volume or local) and its size",
    "nas": "the NAS (none: clear the assignment)",
    "zpool": "the NAS's pool (default: its least used img_zpool)",
    "img_sync": "yes|no: sync mode for this map, whatever the host's img_sync says",
    "adopt": "yes: export an existing dataset imgstor did not make",
    "size": "size of a new volume: a number with K, M, G or T (no unit: GiB)",
    "attr": "the attribute's name",
    "value": "the attribute's value",
    "mem": "the guest's memory: MiB, or with a unit (2G)",
    "cpus": "the guest's CPUs",
    "mac": "the guest's MAC address",
    "kernel": "boot this kernel (a path on the node; empty: the firmware boots the disk)",
    "initrd": "the initrd of kernel=",
    "append": "the kernel command line of kernel=",
    "network": "none, user, or bridge:NAME",
    "hook": "a program the runner calls around the guest's start and stop",
}
ARG_HELP = {
    "nas": "a NAS host of the config", "zpool": "a pool of that NAS", "vol": "a volume name",
    "host": "a compute host of the config", "container": "a compute host of the config",
    "vm": "a VM name", "vms": "VM names", "hosts": "host names (default: all)",
    "nases": "NAS names (default: all)", "size": "a number with K, M, G or T (no unit: GiB)",
    "job": "a job id (KIND-12 hex digits, as list host storagemap shows it)",
    "jobs": "job ids (KIND-12 hex digits, as list host storagemap shows them)",
    "membership": "the Rocks membership the VM is named after",
    "file": "a file of commands, - for stdin",
}
# What completes an argument, by its kind (default: its name); clihelp.complete answers
# the dynamic ones from the config and the state; "text" is free text (nothing offered).
ARG_KINDS = {"nas": "nas", "nases": "nas", "host": "compute", "container": "compute",
             "hosts": "host", "vm": "vm", "vms": "vm", "vol": "volume", "zpool": "zpool",
             "job": "job", "jobs": "job", "file": "file", "membership": "text", "size": "text"}


def groups(table: Sequence[Any]) -> list[str]:
    """The table's groups, in the order of their first command."""
    return list(dict.fromkeys(c.group for c in visible(table)))


def visible(table: Sequence[Any]) -> list[Any]:
    return [c for c in table if not c.hidden]


def _wrap(text: str, indent: str = "", first: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_on_hyphens=False) or [indent]


def _two_columns(rows: Sequence[tuple[str, str]], indent: str = "  ",
                 width: int = 24) -> list[str]:
    """``name  text`` lines, the text wrapped under itself; a name wider than the column
    puts its text on the next line."""
    out = []
    pad = indent + " " * width
    for name, text in rows:
        head = indent + name
        if len(head) + 2 > len(pad):
            out.append(head)
            out += _wrap(text, pad)
        else:
            out += _wrap(text, pad, first=head.ljust(len(pad)))
    return out


def metavar(a: Any) -> str:
    m = a.metavar or a.name.upper()
    return {None: m, "?": f"[{m}]", "*": f"[{m}...]", "+": f"{m}..."}.get(a.nargs, m)


def synopsis(cmd: Any, prog: str) -> str:
    parts = [prog, cmd.name, *(metavar(a) for a in cmd.args)]
    parts += [f"[{k}=VALUE]" for k in cmd.keys]
    parts += [f"[{f}]" for f in cmd.flags]
    parts += [f"[{o} {o.lstrip('-').upper()}]" for o, _ in cmd.options]
    return " ".join(parts)


def arg_help(cmd: Any, a: Any) -> str:
    return a.help or ARG_HELP.get(a.name, "")


def flag_help(cmd: Any, flag: str) -> str:
    return cmd.flag_help.get(flag) or FLAG_HELP.get(flag, "")


def key_help(cmd: Any, key: str) -> str:
    return cmd.key_help.get(key) or KEY_HELP.get(key, "")


def arg_kind(a: Any) -> str:
    """What completes argument ``a``: its ``kind``, else ARG_KINDS by its name."""
    return a.kind or ARG_KINDS.get(a.name, "")


def overview(table: Sequence[Any], prog: str, prefix: Sequence[str] = ()) -> str:
    """The grouped list of commands (those starting with ``prefix``), examples, global
    flags and exit codes."""
    from imgstor.exitcodes import table_text
    cmds = [c for c in visible(table) if tuple(c.words[:len(prefix)]) == tuple(prefix)]
    lines = [f"usage: {prog} [global flags] COMMAND [ARGS] [key=value...]", ""]
    for g in groups(table):
        these = [c for c in cmds if c.group == g]
        if not these:
            continue
        lines.append(f"{g or 'Other'}:")
        lines += _two_columns([(c.name, c.help) for c in these], width=25)
        lines.append("")
    if prefix:
        lines.append(f"`{prog} COMMAND help` or `{prog} COMMAND -h`: a command's "
                     "arguments")
        return "\n".join(lines)
    examples = []
    for g in groups(table):             # the first two of each group
        shown = [c.examples[0] for c in cmds if c.group == g and c.examples][:2]
        examples += [f"  {prog} {e}" for e in shown]
    if examples:
        lines += ["Examples (more in each command's help):", *examples, ""]
    lines += ["Global flags (before or after the command):"]
    lines += _two_columns(GLOBAL_FLAGS)
    lines += ["", "Exit status:", table_text(WIDTH, "  "), ""]
    lines += _wrap(f"`{prog} COMMAND -h` or `{prog} COMMAND help` shows a command's "
                   f"arguments, flags and examples; `man 8 imgstor` the whole manual.")
    return "\n".join(lines)


def command_help(cmd: Any, prog: str) -> str:
    """One command: synopsis, description, arguments, keys, flags, examples."""
    lines = _wrap(synopsis(cmd, prog), " " * (len(prog) + 8), first="usage: ")
    lines.append("")
    lines += _wrap(cmd.help[:1].upper() + cmd.help[1:] + ".")
    if cmd.details:
        lines += [""] + _wrap(cmd.details)
    if cmd.args:
        lines += ["", "arguments:"]
        lines += _two_columns([(metavar(a), arg_help(cmd, a)) for a in cmd.args])
    if cmd.keys:
        lines += ["", "keys (key=value, anywhere after the command):"]
        lines += _two_columns([(f"{k}=VALUE", key_help(cmd, k)) for k in cmd.keys])
    if cmd.flags or cmd.options:
        lines += ["", "flags:"]
        lines += _two_columns([(f, flag_help(cmd, f)) for f in cmd.flags]
                              + [(f"{o} {o.lstrip('-').upper()}", flag_help(cmd, o))
                                 for o, _ in cmd.options])
    if cmd.examples:
        lines += ["", "examples:"]
        for e in cmd.examples:
            lines += _wrap(f"{prog} {e}", "      ", first="  ")
    lines += [""] + _wrap("global flags: --json, -n/--dry-run, -v/--debug, --config PATH "
                          f"(`{prog} --help`)")
    return "\n".join(lines)


def help_text(words: Sequence[str], table: Sequence[Any], prog: str) -> str:
    """``help``, ``help COMMAND``, ``help list host`` (the commands under it)."""
    from imgstor.errors import UsageError
    words = [w for w in words if w not in ("-h", "--help", "help")]
    if not words:
        return overview(table, prog)
    exact = [c for c in visible(table) if list(c.words) == words or
             any(list(a) == words for a in c.aliases)]
    if exact:
        return command_help(exact[0], prog)
    if any(tuple(c.words[:len(words)]) == tuple(words) for c in visible(table)):
        return overview(table, prog, prefix=words)
    raise UsageError(f"no command {' '.join(words)!r}; `{prog} --help` lists them")


# ------------------------------------------------------------------ completion
def complete(ctx: Any, what: str, words: list[str] | None = None) -> Any:
    """``imgstor _complete WHAT [WORDS]``: the words the bash completion offers for an
    argument of kind WHAT (one per line): hosts, NAS or compute hosts of the config, VMs,
    volumes (of the NAS in WORDS), a NAS's zpools, job ids, attribute names.  Never an
    error: a missing config or an unreadable state offers nothing."""
    from imgstor.errors import ImgstorError
    from imgstor.output import Lines
    try:
        return Lines(_words(ctx, what, list(words or [])))
    except (ImgstorError, OSError):
        return Lines([])


def _words(ctx: Any, what: str, words: list[str]) -> list[str]:
    hosts = ctx.file_config.hosts
    if what in ("host", "nas", "compute"):
        return [h for h, c in hosts.items() if what == "host" or c.role == what]
    if what == "zpool":
        nas = hosts.get(words[0]) if words else None
        return list(nas.img_zpools) if nas is not None else []
    if what == "attr":
        from imgstor.state.model import HOST_ATTR_NAMES
        return list(HOST_ATTR_NAMES)
    if what == "syncattr":
        from imgstor.state.model import SYNC_ATTR_NAMES
        return list(SYNC_ATTR_NAMES)
    st = ctx.store.read()
    if what == "vm":
        return list(st.vms)
    if what == "volume":
        return sorted(v.vol for v in st.volumes.values() if not words or v.nas == words[0])
    if what == "job":
        return list(st.jobs)
    return []
