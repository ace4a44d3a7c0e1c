"""The ``imgstor`` command line: grammar only, no logic.

    imgstor [--json] [-n|--dry-run] [-v|--debug] [--config PATH] <verb> host <noun...> [args] [key=value...]
    imgstor ping | hosts | unbusy NAS VOL
    imgstor monitor JOB | monitor --resume
    imgstor --version

Global flags may also come after the command.  The command words are matched against
``COMMANDS`` by longest prefix (``list host vm nas`` beats ``list host vm``); what follows
is split into ``key=value`` pairs (only the keys the entry declares) and positional
arguments (parsed by argparse from the entry's ``args``).  The handler is imported lazily
from its dotted name and called as ``handler(ctx, **parsed)``; it returns an
``imgstor.output.Output`` table, a message string or None.

Adding a command is one entry in ``COMMANDS``, e.g.::

    Cmd(words=("list", "host", "storagemap"), handler="imgstor.workflows.storagemap:list_maps",
        args=[Arg("nas", nargs="?")], keys={"force": bool}, help="list volume mappings"),

``Arg(name, nargs=None|"?"|"*"|"+", help=...)`` becomes the keyword ``name`` (``-`` -> ``_``);
``keys`` maps each allowed key to ``str``, ``int``, ``bool`` (yes/no/true/false/1/0/on/off)
or any callable raising ``ValueError``; keys not given are not passed, so the handler's
defaults apply.  ``aliases`` are extra word tuples for the same entry (``("hosts",)``).

``main()`` catches ``ImgstorError`` only (prints ``error: <message>``, returns its exit
code); any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from imgstor.errors import ImgstorError, UsageError

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any, NoReturn

__all__ = ["Arg", "Cmd", "COMMANDS", "main", "entry", "run", "parse", "rocks_main", "split_globals",
           "report_error", "bind_plain"]


@dataclass(frozen=True)
class Arg:
    """A positional argument of a command (argparse's name, nargs, help, metavar)."""
    name: str
    nargs: str | int | None = None
    help: str = ""
    metavar: str | None = None


@dataclass(frozen=True)
class Cmd:
    """One command of the table: its words, handler, arguments, keys and flags."""
    words: tuple[str, ...]
    handler: str                                  # "package.module:function"
    args: Sequence[Arg] = ()
    keys: dict[str, Callable[[str], Any]] = field(default_factory=dict)
    help: str = ""
    aliases: tuple[tuple[str, ...], ...] = ()
    flags: tuple[str, ...] = ()                   # boolean options, e.g. ("--verify",)
    options: tuple[tuple[str, Callable[[str], Any]], ...] = ()   # (("--jobs", int),)

    @property
    def name(self) -> str:
        return " ".join(self.words)


_VMS = "imgstor.workflows.vms"
_MAP = "imgstor.workflows.storagemap"
_ATTRS = "imgstor.workflows.attrs"
_SATTRS = "imgstor.workflows.syncattrs"
_MACHINE: dict[str, Callable[[str], Any]] = {k: str for k in (
    "mem", "cpus", "mac", "kernel", "initrd", "append", "network", "hook")}
COMMANDS: list[Cmd] = [
    Cmd(("add", "host", "vm"), f"{_VMS}:add_vm",
        [Arg("container", help="compute node"),
         Arg("membership", nargs="?", help="names the VM as Rocks does: compute on "
             "vm-container-0-14 -> compute-0-14-0")],
        {"name": str, "membership": str, **_MACHINE},
        "add a VM on compute node CONTAINER (name: MEMBERSHIP-RACK-RANK-N, else CONTAINER-N); "
        "its definition for a VM runner: mem=MiB|2G cpus=N mac=MAC kernel=PATH initrd=PATH "
        "append=ARGS (direct boot; default: the firmware boots the disk) "
        "network=none|user|bridge:NAME hook=PATH"),
    Cmd(("set", "host", "vm"), "imgstor.workflows.vmspec:set_vm", [Arg("vm")], dict(_MACHINE),
        "change a VM's definition (mem= cpus= mac= kernel= initrd= append= network= hook=; "
        "kernel= empty: the firmware boots the disk); applies from its next start"),
    Cmd(("move", "host", "vm"), "imgstor.workflows.vmspec:move_vm",
        [Arg("vm"), Arg("container", help="compute node")], {},
        "move a stopped VM (disk unmapped, guest not running) to another container: its "
        "next start runs there"),
    Cmd(("list", "host", "vm"), f"{_VMS}:list_vms", [Arg("vms", nargs="*", metavar="VM")],
        {"showdisks": bool}, "list VMs with their container, NAS, zpool and mode "
        "(showdisks=1: each VM's disk NAS:pool/volume or local, and its size); with VM "
        "definitions also MEM, CPUS and GUEST (running, stopped, exited, failed: as the "
        "last command or refresh saw it)"),
    Cmd(("remove", "host", "vm"), f"{_VMS}:remove_vm", [Arg("vm")], {},
        "remove a VM (refused while its volume is mapped)"),
    Cmd(("set", "host", "vm", "nas"), f"{_VMS}:set_vm_nas", [Arg("vm")],
        {"nas": str, "zpool": str},
        "assign VM's volume to nas=NAS [zpool=POOL] (nas=none clears)"),
    Cmd(("list", "host", "vm", "nas"), f"{_VMS}:list_vm_nas",
        [Arg("vms", nargs="*", metavar="VM")], {}, "list the NAS and zpool of each VM"),
    Cmd(("remove", "host", "vm", "nas"), f"{_VMS}:remove_vm_nas", [Arg("vm")], {},
        "clear the NAS assignment of a VM"),
    Cmd(("dump", "host", "vm", "nas"), f"{_VMS}:dump_vm_nas", [Arg("vm", nargs="?")], {},
        "print the commands that recreate the NAS assignments"),
    Cmd(("add", "host", "storagemap"), f"{_MAP}:map_volume",
        [Arg("nas"), Arg("zpool"), Arg("vol"), Arg("host"), Arg("size")],
        {"img_sync": bool, "adopt": bool},
        "create volume VOL if needed on NAS:ZPOOL and map it to HOST over iSCSI "
        "(adopt=yes exports an existing dataset imgstor did not make; img_sync=yes|no "
        "overrides HOST's; --wait: until a sync copy and merge are done)",
        flags=("--wait",)),
    Cmd(("remove", "host", "storagemap"), f"{_MAP}:unmap_volume", [Arg("nas"), Arg("vol")],
        {}, "unmap volume VOL of NAS from its host (--force goes past node errors and a "
        "disk in use; --wait: until a sync volume is back on the NAS)",
        flags=("--force", "--wait")),
    Cmd(("clean", "host", "storagemap"), f"{_MAP}.clean:clean_map", [Arg("nas"), Arg("vol")],
        {}, "reset a sync volume to the NAS's last copy, discarding its node's copy (says "
        "what is lost, asks; --yes; refused while its VM uses it, and when the node holds "
        "newer data unless --discard-node-data)", flags=("--yes", "--discard-node-data")),
    Cmd(("remove", "host", "storageimg"), f"{_MAP}:remove_image",
        [Arg("nas"), Arg("zpool"), Arg("vol")], {}, "destroy an unmapped volume"),
    Cmd(("list", "host", "storagemap"), f"{_MAP}:list_maps", [Arg("nas", nargs="?")], {},
        "volumes and where they are mapped (--verify checks the NAS live)",
        flags=("--verify",)),
    Cmd(("list", "host", "storagedev"), f"{_MAP}:list_devs", [Arg("host")], {},
        "what is mapped on compute node HOST, read live from the node"),
    Cmd(("start", "host", "vm"), "imgstor.workflows.vmctl:start_vm",
        [Arg("vms", nargs="+", metavar="VM")],
        {"size": str}, "map each VM's disk <vm>-vol on its container (size= if new), then "
        "start its guest with the container's vm_runner (none: the disk only; a guest that "
        "fails to start leaves the disk mapped); several VMs at once: one line each, exit 1 "
        "if any failed", flags=("--wait",)),
    Cmd(("stop", "host", "vm"), "imgstor.workflows.vmctl:stop_vm",
        [Arg("vms", nargs="+", metavar="VM")], {},
        "shut each VM's guest down (ACPI powerdown, up to --timeout SECONDS, default the "
        "container's vm_stop_timeout; still running: exit 8, disk kept mapped, unless "
        "--force: a hard stop), then unmap its disk",
        flags=("--force", "--wait"), options=(("--timeout", float),)),
    Cmd(("set", "host", "attr"), f"{_ATTRS}:set_attr",
        [Arg("args", nargs="+", metavar="ARG", help="HOST... ATTR [VALUE], or HOST... with "
             "attr=ATTR value=VALUE")], {"attr": str, "value": str},
        "set a storage attribute (img_sync, vm_container_zpool, img_zpools, ib_net, "
        "vm_runner) on hosts: "
        "set host attr nas-0-0 img_zpools value=tank1,tank2"),
    Cmd(("list", "host", "attr"), f"{_ATTRS}:list_attrs",
        [Arg("args", nargs="*", metavar="HOST_OR_ATTR", help="hosts and attribute names, "
             "in any order (default: all)")], {"attr": str},
        "each host's storage attributes and where each value comes from"),
    Cmd(("remove", "host", "attr"), f"{_ATTRS}:remove_attr",
        [Arg("args", nargs="+", metavar="ARG", help="HOST... ATTR, or HOST... with attr=ATTR")],
        {"attr": str},
        "drop an attribute set by command: the config's value applies again"),
    Cmd(("set", "host", "zvolattr"), f"{_SATTRS}:set_zvolattr",
        [Arg("args", nargs="+", metavar="ARG", help="NAS VOL ATTR VALUE, or NAS VOL with "
             "attr=ATTR value=VALUE")], {"attr": str, "value": str},
        "set a volume's sync attribute: frequency (seconds, or 10m, 2h), uploadspeed "
        "(NAS->node) or downloadspeed (node->NAS) in bytes/s like 10M (0: no limit); "
        "VALUE None unsets"),
    Cmd(("list", "host", "zvolattr"), f"{_SATTRS}:list_zvolattr",
        [Arg("nas"), Arg("vol", nargs="?")], {},
        "the sync attributes of NAS's volumes (in parentheses: inherited) and NEXTSYNC"),
    Cmd(("remove", "host", "zvolattr"), f"{_SATTRS}:remove_zvolattr",
        [Arg("args", nargs="+", metavar="ARG", help="NAS VOL ATTR, or NAS VOL with attr=ATTR")],
        {"attr": str}, "drop a volume's sync attribute: the NAS's or the config's applies"),
    Cmd(("set", "host", "storageattr"), f"{_SATTRS}:set_storageattr",
        [Arg("args", nargs="+", metavar="ARG", help="NAS ATTR VALUE, or NAS with "
             "attr=ATTR value=VALUE")], {"attr": str, "value": str},
        "set a NAS's sync attribute for all its volumes (frequency, uploadspeed, "
        "downloadspeed; VALUE None unsets)"),
    Cmd(("list", "host", "storageattr"), f"{_SATTRS}:list_storageattr",
        [Arg("nases", nargs="*", metavar="NAS")], {},
        "each NAS's sync attributes and where each value comes from"),
    Cmd(("remove", "host", "storageattr"), f"{_SATTRS}:remove_storageattr",
        [Arg("args", nargs="+", metavar="ARG", help="NAS ATTR, or NAS with attr=ATTR")],
        {"attr": str}, "drop a NAS's sync attribute: the config's value applies again"),
    Cmd(("ping",), "imgstor.workflows.hosts:ping", [Arg("hosts", nargs="*", metavar="HOST")], {},
        "reach every host (or those named) and show its tools and pools; --trust HOST…: "
        "confirm host keys pinned on first use (the sync hop uses them only then)",
        aliases=(("hosts",),), flags=("--trust",)),
    Cmd(("monitor",), "imgstor.workflows.monitor:monitor",
        [Arg("jobs", nargs="*", metavar="JOB")], {},
        "run jobs JOB... to their end in this process (sync maps and unmaps start them "
        "detached); --resume hands every job no monitor runs, failed ones too, to a "
        "detached monitor (--pool KEY: the pool monitor that does, internal)",
        flags=("--resume",), options=(("--pool", str),)),
    Cmd(("batch",), "imgstor.batch:run_batch",
        [Arg("file", help="one imgstor command per line (- : stdin); # comments")], {},
        "run the commands of FILE in parallel (--jobs N, default 8; same volume or VM: in "
        "file order); one result line per item; exit 0 if all succeeded, else 1; global "
        "flags (--dry-run…) apply to every item", options=(("--jobs", int),)),
    Cmd(("refresh",), "imgstor.workflows.refresh:refresh", [], {},
        "cron's every-minute run: restart dead monitors, put back targets, sessions and "
        "overlays that a reboot or a daemon restart lost, start due periodic pulls of sync "
        "volumes, write the metrics file (a second run at once exits 0 quietly)",
        flags=("--quiet",)),
    Cmd(("check",), "imgstor.workflows.check:check", [], {},
        "compare the store with the NASes' live targets and marked volumes, the nodes' "
        "sessions, overlays and marked datasets, busy markers and monitors (read-only; exit "
        "9 when anything differs)"),
    Cmd(("repair",), "imgstor.workflows.check:repair", [], {},
        "fix what `check` finds (--dry-run: the plan); leaves what may hold a VM's only "
        "data and says how to remove it (--destroy-orphans: orphan temp-writes and local "
        "copies too; never a NAS volume)", flags=("--destroy-orphans",)),
    Cmd(("rebuild",), "imgstor.workflows.rebuild:rebuild", [], {},
        "make the lost state file again from the hosts (the NAS volumes' imgstor: "
        "properties, the nodes' local copies and overlays, the live targets); refused "
        "while one exists unless --force; says what it could not restore",
        flags=("--force",)),
    Cmd(("unbusy",), "imgstor.admin:unbusy", [Arg("nas"), Arg("vol")], {},
        "clear the busy marker of volume VOL on NAS (when its process is gone)"),
]

_BOOL = {"yes": True, "true": True, "1": True, "on": True,
         "no": False, "false": False, "0": False, "off": False}
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_GLOBAL_HELP = ("global flags (before or after the command): --json, -n/--dry-run, "
                "-v/--debug, --config PATH; --version alone prints the version")


def _Parser(**kw: Any) -> "argparse.ArgumentParser":
    import argparse  # only where bind_plain cannot decide

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # argparse would sys.exit(2)
            raise UsageError(f"{self.prog}: {message}")
    return Parser(**kw)


def split_globals(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Pull the global flags out of ``argv`` wherever they are (up to a ``--``)."""
    opts: dict[str, Any] = {"json": False, "dry_run": False, "debug": False,
                            "config_path": None}
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--":
            rest.append(a)
            rest.extend(it)
            break
        if a == "--json":
            opts["json"] = True
        elif a == "--dry-run":
            opts["dry_run"] = True
        elif a == "--debug":
            opts["debug"] = True
        elif re.fullmatch(r"-[nv]+", a):
            opts["dry_run"] |= "n" in a
            opts["debug"] |= "v" in a
        elif a == "--config":
            opts["config_path"] = next(it, None)
            if not opts["config_path"]:
                raise UsageError("--config needs a PATH")
        elif a.startswith("--config="):
            opts["config_path"] = a.split("=", 1)[1]
        else:
            rest.append(a)
    return opts, rest


def _match(words: list[str], table: Sequence[Cmd]) -> tuple[Cmd, int] | None:
    best: tuple[Cmd, int] | None = None
    for cmd in table:
        for w in (cmd.words, *cmd.aliases):
            if tuple(words[:len(w)]) == w and (best is None or len(w) > best[1]):
                best = (cmd, len(w))
    return best


def _usage(table: Sequence[Cmd], prog: str) -> str:
    width = max(len(c.name) for c in table) + 2
    lines = [f"usage: {prog} [global flags] <command> [args] [key=value...]", "",
             "commands:"]
    for c in table:
        lines.append(f"  {c.name.ljust(width)}{c.help}")
    lines += ["", _GLOBAL_HELP, f"`{prog} <command> -h` shows a command's arguments"]
    return "\n".join(lines)


def _unknown(words: list[str], table: Sequence[Cmd], prog: str) -> UsageError:
    import difflib
    text = " ".join(w for w in words if "=" not in w and not w.startswith("-"))
    names = [c.name for c in table]
    close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
    close += [n for n in names if n.startswith(text.split(" ")[0] + " ") and n not in close]
    hint = "; did you mean: " + ", ".join(close[:6]) if close and text else \
        f"; run `{prog} --help` for the list"
    return UsageError(f"unknown command {text!r}{hint}")


def _convert(cmd: Cmd, key: str, value: str) -> Any:
    conv = cmd.keys[key]
    try:
        if conv is bool:
            if value.lower() not in _BOOL:
                raise ValueError("expected yes or no")
            return _BOOL[value.lower()]
        return conv(value)
    except ValueError as e:
        raise UsageError(f"{cmd.name}: bad value for {key}: {value!r:.60} ({e})") from None


def parse(argv: Sequence[str], table: Sequence[Cmd], prog: str
          ) -> tuple[dict[str, Any], Cmd | None, dict[str, Any]]:
    """Split ``argv`` into (global options, matched command, handler kwargs).
    The command is None when only help was asked for."""
    opts, rest = split_globals(argv)
    if rest[:1] == ["--version"]:
        from imgstor import __version__
        print(f"{prog} {__version__}")
        return opts, None, {}
    if not rest or rest[0] in ("-h", "--help", "help"):
        if not rest:
            raise UsageError("no command given\n" + _usage(table, prog))
        print(_usage(table, prog))
        return opts, None, {}
    found = _match(rest, table)
    if found is None:
        raise _unknown(rest, table, prog)
    cmd, n = found
    keys: dict[str, Any] = {}
    positional: list[str] = []
    for tok in rest[n:]:
        k, eq, v = tok.partition("=")
        if eq and _KEY_RE.fullmatch(k):
            if k not in cmd.keys:
                allowed = ", ".join(f"{x}=" for x in cmd.keys) or "none"
                raise UsageError(f"{cmd.name}: unknown key {k!r}; allowed keys: {allowed}")
            if k in keys:
                raise UsageError(f"{cmd.name}: key {k!r} given twice")
            keys[k] = _convert(cmd, k, v)
        else:
            positional.append(tok)
    bound = bind_plain(cmd, positional)
    if bound is None:
        try:
            bound = vars(_argparser(cmd, prog).parse_args(positional))
        except SystemExit as e:  # -h
            if e.code == 0:
                return opts, None, {}
            raise
    for k in keys:                      # `add host vm C compute membership=compute`
        if bound.get(k) not in (None, []):
            raise UsageError(f"{cmd.name}: {k} given twice (as an argument and as {k}=)")
    return opts, cmd, {**bound, **keys}


def _dest(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _argparser(cmd: Cmd, prog: str) -> argparse.ArgumentParser:
    epilog = ("keys: " + " ".join(f"{k}=VALUE" for k in cmd.keys) + "\n" if cmd.keys else "")
    p = _Parser(prog=f"{prog} {cmd.name}", description=cmd.help, epilog=epilog + _GLOBAL_HELP,
                allow_abbrev=False)
    for f in cmd.flags:
        p.add_argument(f, action="store_true", dest=_dest(f))
    for f, conv in cmd.options:
        p.add_argument(f, type=conv, dest=_dest(f), metavar=f.lstrip("-").upper())
    for a in cmd.args:
        p.add_argument(_dest(a.name), nargs=a.nargs, help=a.help,
                       metavar=a.metavar or a.name.upper())
    return p


def bind_plain(cmd: Cmd, words: Sequence[str]) -> dict[str, Any] | None:
    """The handler's arguments for ``words`` exactly as argparse binds them (flags False,
    options None, ``?`` None, ``*`` a list), without argparse: its import, help formatter
    and gettext are ~4 ms of a command that lists 10,000 VMs in ~60.  None when argparse
    must decide: a word starting with ``-`` (a flag, ``-h``, ``-`` for stdin), a table
    entry with more than one variable argument or one not last, or a count that does not
    fit (argparse's error message).  tests/unit/test_cli_vms.py checks both agree."""
    if any(w[:1] == "-" for w in words):
        return None
    args = cmd.args
    fixed = [a for a in args if a.nargs is None]
    extra = len(words) - len(fixed)
    if extra < 0 or len(args) - len(fixed) > 1 or (len(fixed) < len(args)
                                                   and args[-1].nargs is None):
        return None
    out: dict[str, Any] = {_dest(f): False for f in cmd.flags}
    out.update({_dest(f): None for f, _ in cmd.options})
    for a, w in zip(fixed, words):
        out[_dest(a.name)] = w
    if len(fixed) == len(args):
        return out if extra == 0 else None
    last, rest = args[-1], list(words[len(fixed):])
    if last.nargs == "?" and extra <= 1:
        out[_dest(last.name)] = rest[0] if rest else None
    elif last.nargs == "*" or (last.nargs == "+" and rest):
        out[_dest(last.name)] = rest
    else:
        return None
    return out


# Commands that always reach hosts: Fabric (with invoke and paramiko, ~0.1 s of CPU) is
# imported in the background from their start, beside the handler's own imports and the
# store's read, instead of when the first connection is opened.
REACHES_HOSTS = frozenset({f"{_MAP}:map_volume", f"{_MAP}:unmap_volume",
                           f"{_MAP}:remove_image", f"{_MAP}.clean:clean_map",
                           "imgstor.workflows.vmctl:start_vm",
                           "imgstor.workflows.vmctl:stop_vm"})


def _preload_ssh() -> None:
    # Not a daemon: the interpreter waits for it before it finalizes.  A command that ends
    # while a daemon thread is still importing (cryptography's extension modules) may
    # crash in its exit (SIGSEGV, about 1 in 10 quick refusals on the lab).
    import threading
    threading.Thread(target=importlib.import_module, args=("fabric",)).start()


def _load(handler: str) -> Callable[..., Any]:
    module, _, func = handler.partition(":")
    return getattr(importlib.import_module(module), func)


def run(argv: Sequence[str], table: Sequence[Cmd], *, prog: str) -> int:
    """Parse, call the handler, print its result.  Raises ImgstorError."""
    opts, cmd, kwargs = parse(argv, table, prog)
    if cmd is None:
        return 0
    if cmd.handler in REACHES_HOSTS:
        _preload_ssh()
    from imgstor.workflows.context import Ctx
    ctx = Ctx(**opts)
    try:
        result = _load(cmd.handler)(ctx, **kwargs)
    finally:
        if "cluster" in ctx.__dict__:        # only if the command reached hosts
            ctx.cluster.close()
    from imgstor.output import emit
    emit(result, json=ctx.json)
    return int(getattr(result, "exit_code", 0) or 0)


def report_error(e: ImgstorError, argv: Sequence[str]) -> int:
    from imgstor.output import printable
    print(f"error: {printable(e.message)}", file=sys.stderr)
    if "-v" in argv or "--debug" in argv:
        import traceback
        traceback.print_exc()
    return e.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv, COMMANDS, prog="imgstor")
    except ImgstorError as e:
        return report_error(e, argv)


def entry() -> int:
    """The ``imgstor`` program (console script, ``python -m imgstor``, bin/imgstor, the
    one-file build): ``main()`` with the cyclic collector tuned for a command, whose tens of
    thousands of containers (10,000 VMs: ~40,000) live until it exits: young objects are
    collected every 50,000 allocations instead of 700 (cycles are still collected, in a
    long-running monitor too), and what is left at the end is frozen (``gc.freeze``) so
    that the collections the interpreter runs while exiting do not walk it all.  Together
    ~8 ms of the ~65 ms that listing 10,000 VMs takes (bench/bench_list_vm_nas.py); for a
    command that reached hosts the exit's collection walks every object Fabric, invoke,
    paramiko and cryptography made (refresh of one host, 8 runs: CPU 0.21 -> 0.17 s, wall
    0.52 -> 0.35 s).  Files and connections are closed by then (``run`` closes the cluster)."""
    import gc
    gc.set_threshold(50_000, 10, 10)
    rc = main()
    gc.freeze()
    return rc


ROCKS_NOUNS = (("vm",), ("storagemap",), ("storagedev",), ("storageimg",), ("attr",),
               ("zvolattr",), ("storageattr",))
ROCKS_HELP = ("rocks <verb> host vm|vm nas|storagemap|storagedev|storageimg ..., "
              "rocks start|stop|move host vm ..., rocks set|list|remove host attr with "
              "img_sync, vm_container_zpool, img_zpools, IB_net, rocks set|list|remove "
              "host zvolattr|storageattr with frequency, uploadspeed, downloadspeed")


def rocks_main(argv: Sequence[str] | None = None) -> int:
    """``rocks <verb> host <storage noun> ...``: forward to imgstor, refuse the rest."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _, rest = split_globals(argv)
    except ImgstorError as e:
        return report_error(e, argv)
    words = [w for w in rest if "=" not in w][:3]
    if len(words) < 3 or words[1] != "host" or (words[2],) not in ROCKS_NOUNS:
        print(f"rocks: {' '.join(rest)!r} is not an imgstor storage command; "
              f"imgstor handles only: {ROCKS_HELP}", file=sys.stderr)
        return 2
    return main(argv)
