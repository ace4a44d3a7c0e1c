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
        args=[Arg("nas", nargs="?")], keys={"force": bool}, help="list volume mappings",
        details="…", group=_G_MAP, examples=("list host storagemap nas-0-0",)),

The same entry is what ``--help``, ``COMMAND -h`` / ``COMMAND help`` (imgstor/clihelp.py),
the man page imgstor(8) and the bash completion (imgstor/docgen.py) say: a flag, key or
argument without help of its own takes clihelp's FLAG_HELP / KEY_HELP / ARG_HELP, and
tests/unit/test_docs.py refuses one with none, a line over 80 columns and a generated
file that differs from what this table makes.

``Arg(name, nargs=None|"?"|"*"|"+", help=...)`` becomes the keyword ``name`` (``-`` -> ``_``);
``keys`` maps each allowed key to ``str``, ``int``, ``bool`` (yes/no/true/false/1/0/on/off)
or any callable raising ``ValueError``; keys not given are not passed, so the handler's
defaults apply.  ``aliases`` are extra word tuples for the same entry (``("hosts",)``).

``main()`` catches ``ImgstorError`` only (prints ``error: <message>``, or with ``--json``
the error document on stdout; returns its exit code, imgstor/exitcodes.py) and Ctrl-C
(exit 130); any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imgstor import log
from imgstor.errors import ImgstorError, UsageError

TYPE_CHECKING = False            # typing's import is ~2 ms of a command's start-up
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any, NoReturn

__all__ = ["Arg", "Cmd", "COMMANDS", "CHANGING_VERBS", "CHANGING_FLAGS", "main", "entry",
           "run", "parse", "rocks_main", "split_globals", "report_error", "wants_json",
           "bind_plain", "call", "strip_program"]


@dataclass(frozen=True)
class Arg:
    """A positional argument of a command (argparse's name, nargs, help, metavar).  ``kind``
    says what completes it (clihelp.ARG_KINDS); by default the one named like the argument."""
    name: str
    nargs: str | int | None = None
    help: str = ""
    metavar: str | None = None
    kind: str = ""


class Cmd:
    """One command of the table: its words, handler, arguments, keys and flags, and what
    ``--help``, the man page and the shell completion say about it (imgstor/clihelp.py,
    imgstor/docgen.py: all made from this table).  A plain class, not a dataclass: with
    its 15 fields, making the dataclass and its 40 entries was ~1 ms of every command's
    start-up (bench/bench_list_vm_nas.py)."""
    __slots__ = ("words", "handler", "args", "keys", "help", "aliases", "flags", "options",
                 "details", "group", "examples", "flag_help", "key_help", "hidden", "audit")

    def __init__(self, words: tuple[str, ...], handler: str,       # "package.module:function"
                 args: Sequence[Arg] = (), keys: dict[str, Callable[[str], Any]] | None = None,
                 help: str = "",                      # one line (the overview; <= 50 columns)
                 aliases: tuple[tuple[str, ...], ...] = (),
                 flags: tuple[str, ...] = (),         # boolean options, e.g. ("--verify",)
                 options: tuple[tuple[str, Callable[[str], Any]], ...] = (),  # (("--jobs", int),)
                 *, details: str = "",                # the rest of the description (-h, man)
                 group: str = "",                     # its heading in --help and the man page
                 examples: tuple[str, ...] = (),      # command lines without the program name
                 flag_help: dict[str, str] | None = None,   # else clihelp.FLAG_HELP's
                 key_help: dict[str, str] | None = None,    # else clihelp.KEY_HELP's
                 hidden: bool = False,                # not in help, man page or completion
                 audit: bool | None = None) -> None:  # logs an audit line; None: by its verb
        self.words, self.handler, self.args, self.keys = words, handler, args, keys or {}
        self.help, self.aliases, self.flags, self.options = help, aliases, flags, options
        self.details, self.group, self.examples = details, group, examples
        self.flag_help, self.key_help = flag_help or {}, key_help or {}
        self.hidden, self.audit = hidden, audit

    def __repr__(self) -> str:
        return f"Cmd({self.name!r}, {self.handler!r})"

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def audited(self) -> bool:
        """Whether a run logs one audit line (imgstor/audit.py): commands that change
        something; refresh and monitor log each of their actions themselves."""
        return self.audit if self.audit is not None else self.words[0] in CHANGING_VERBS

    def audits(self, kwargs: dict[str, Any]) -> bool:
        """Whether this run logs an audit line: an audited command, or one given a flag
        that makes it change something (``ping --trust`` confirms pinned host keys)."""
        return self.audited or any(kwargs.get(_dest(f)) for f in self.flags
                                   if f in CHANGING_FLAGS)


CHANGING_VERBS = frozenset({"add", "set", "remove", "move", "start", "stop", "clean",
                            "unbusy", "repair", "rebuild", "set-state"})
CHANGING_FLAGS = frozenset({"--trust"})
# The headings of --help and of the man page (in this order: their first command's).
_G_VM, _G_MAP, _G_ATTR, _G_HEALTH, _G_BG, _G_MANY = (
    "VMs and their NAS", "Volumes and maps", "Attributes", "Health and repair",
    "Background work", "Many at once")
_VMS = "imgstor.workflows.vms"
_MAP = "imgstor.workflows.storagemap"
_ATTRS = "imgstor.workflows.attrs"
_SATTRS = "imgstor.workflows.syncattrs"
_MACHINE: dict[str, Callable[[str], Any]] = {k: str for k in (
    "mem", "cpus", "mac", "kernel", "initrd", "append", "network", "hook")}
COMMANDS: list[Cmd] = [
    Cmd(("add", "host", "vm"), f"{_VMS}:add_vm",
        [Arg("container", help="the compute node that runs the VM"),
         Arg("membership", nargs="?", help="names the VM as Rocks does: compute on "
             "vm-container-0-14 -> compute-0-14-0")],
        {"name": str, "membership": str, **_MACHINE}, "add a VM on a compute node",
        details="The VM is named MEMBERSHIP-RACK-RANK-N after its container, else "
                "CONTAINER-N; name= gives it a name (then the line is safe to re-run).  "
                "The other keys are its definition for a VM runner (direct boot with "
                "kernel=; default: the firmware boots the disk).",
        group=_G_VM, examples=("add host vm vm-container-0-14 compute",
                               "add host vm compute-0-14 name=web1 mem=2G cpus=2")),
    Cmd(("set", "host", "vm"), f"{_VMS}:set_vm", [Arg("vm")], dict(_MACHINE),
        "change a VM's definition",
        details="mem= cpus= mac= kernel= initrd= append= network= hook= (kernel= empty: "
                "the firmware boots the disk); applies from its next start.", group=_G_VM,
        examples=("set host vm web1 kernel=/boot/vmlinuz initrd=/boot/initrd.img",)),
    Cmd(("move", "host", "vm"), f"{_VMS}:move_vm",
        [Arg("vm"), Arg("container", help="the compute node its next start runs on")], {},
        "move a stopped VM to another container",
        details="Its disk unmapped and its guest not running; its next start runs there.",
        group=_G_VM, examples=("move host vm web1 compute-0-15",)),
    Cmd(("list", "host", "vm"), f"{_VMS}:list_vms", [Arg("vms", nargs="*", metavar="VM")],
        {"showdisks": bool}, "list VMs: container, NAS, zpool, mode",
        details="MODE is the mode of the VM's mapping while it has one, else the one its "
                "next start would use (sync if its container has img_sync).  With VM "
                "definitions also MEM, CPUS and GUEST (running, stopped, exited, failed: as "
                "the last command or refresh saw it).",
        group=_G_VM, examples=("list host vm showdisks=1",)),
    Cmd(("remove", "host", "vm"), f"{_VMS}:remove_vm", [Arg("vm")], {},
        "remove a VM (refused while its volume is mapped)", group=_G_VM),
    Cmd(("dump", "host", "vm"), f"{_VMS}:dump_vms", [Arg("vms", nargs="*", metavar="VM")], {},
        "print the commands that recreate the VMs",
        details="One `imgstor add host vm CONTAINER name=VM` line per VM, which `imgstor "
                "batch` reads back.", group=_G_VM,
        examples=("dump host vm > vms.batch",)),
    Cmd(("set", "host", "vm", "nas"), f"{_VMS}:set_vm_nas", [Arg("vm")],
        {"nas": str, "zpool": str}, "assign a VM's volume to a NAS (and pool)",
        details="nas=NAS [zpool=POOL]; without zpool= the NAS's least used img_zpool; "
                "nas=none clears.", group=_G_VM,
        examples=("set host vm nas compute-0-14-0 nas=nas-0-0",)),
    Cmd(("list", "host", "vm", "nas"), f"{_VMS}:list_vm_nas",
        [Arg("vms", nargs="*", metavar="VM")], {}, "list the NAS and zpool of each VM",
        group=_G_VM),
    Cmd(("remove", "host", "vm", "nas"), f"{_VMS}:remove_vm_nas", [Arg("vm")], {},
        "clear the NAS assignment of a VM", group=_G_VM),
    Cmd(("dump", "host", "vm", "nas"), f"{_VMS}:dump_vm_nas", [Arg("vm", nargs="?")], {},
        "print the commands that recreate the assignments",
        details="One `imgstor set host vm nas VM nas=NAS zpool=POOL` line per assigned VM, "
                "which `imgstor batch` reads back.", group=_G_VM,
        examples=("dump host vm nas | imgstor batch -",)),
    Cmd(("start", "host", "vm"), "imgstor.workflows.vmctl:start_vm",
        [Arg("vms", nargs="+", metavar="VM")],
        {"size": str}, "map each VM's disk, start its guest",
        details="The disk is <vm>-vol on the VM's NAS (size= if it is new), mapped on its "
                "container; then its guest starts with the container's vm_runner (none: "
                "the disk only; a guest that fails to start leaves the disk mapped).  "
                "Several VMs at once: one line each, exit 1 if any failed.",
        flags=("--wait",), group=_G_VM, examples=("start host vm compute-0-14-0 size=40G",)),
    Cmd(("stop", "host", "vm"), "imgstor.workflows.vmctl:stop_vm",
        [Arg("vms", nargs="+", metavar="VM")], {},
        "shut each VM's guest down, unmap its disk",
        details="ACPI powerdown, up to --timeout SECONDS (default the container's "
                "vm_stop_timeout); still running: exit 8 and the disk stays mapped, unless "
                "--force: a hard stop.", flags=("--force", "--wait"),
        options=(("--timeout", float),), group=_G_VM,
        flag_help={"--force": "stop a guest that does not shut down, and unmap a disk "
                              "in use (its VM loses it)"},
        examples=("stop host vm compute-0-14-0 --timeout 60",)),
    Cmd(("add", "host", "storagemap"), f"{_MAP}:map_volume",
        [Arg("nas"), Arg("zpool"), Arg("vol"), Arg("host"), Arg("size")],
        {"img_sync": bool, "adopt": bool}, "create a volume and map it to a node",
        details="Creates volume VOL on NAS:ZPOOL if needed and exports it over iSCSI to "
                "compute node HOST only; prints the device it has there.  A sync map "
                "(img_sync) boots at once on an overlay while a monitor copies the volume "
                "to the node.",
        flags=("--wait",), group=_G_MAP,
        examples=("add host storagemap nas-0-0 tank vol1 compute-0-1 10G",)),
    Cmd(("remove", "host", "storagemap"), f"{_MAP}:unmap_volume", [Arg("nas"), Arg("vol")],
        {}, "unmap a volume from its node",
        details="The node logs out, the target goes; a sync volume goes back to the NAS "
                "first.  Refused (exit 8) while the disk is in use, unless --force.",
        flags=("--force", "--wait"), group=_G_MAP,
        examples=("remove host storagemap nas-0-0 vol1",)),
    Cmd(("clean", "host", "storagemap"), f"{_MAP}.clean:clean_map", [Arg("nas"), Arg("vol")],
        {}, "reset a sync volume to the NAS's last copy",
        details="Discards its node's copy: says what is lost and asks (--yes).  Refused "
                "while its VM uses it, and when the node holds newer data unless "
                "--discard-node-data.", flags=("--yes", "--discard-node-data"),
        group=_G_MAP),
    Cmd(("remove", "host", "storageimg"), f"{_MAP}:remove_image",
        [Arg("nas"), Arg("zpool"), Arg("vol")], {}, "destroy an unmapped volume",
        details="Only a volume imgstor made (its imgstor: mark); never one mapped.",
        group=_G_MAP, examples=("remove host storageimg nas-0-0 tank vol1",)),
    Cmd(("list", "host", "storagemap"), f"{_MAP}:list_maps", [Arg("nas", nargs="?")], {},
        "volumes and where they are mapped",
        details="With --verify each NAS's live targets are read and compared (LIVE).",
        flags=("--verify",), group=_G_MAP,
        examples=("list host storagemap nas-0-0 --verify",)),
    Cmd(("list", "host", "storagedev"), f"{_MAP}:list_devs", [Arg("host")], {},
        "what is mapped on a node, read live", group=_G_MAP,
        examples=("list host storagedev compute-0-14",)),
    Cmd(("set", "host", "attr"), f"{_ATTRS}:set_attr",
        [Arg("args", nargs="+", metavar="ARG", kind="host-attr",
             help="HOST... ATTR [VALUE], or HOST... with attr=ATTR value=VALUE")],
        {"attr": str, "value": str}, "set a storage attribute of hosts",
        details="img_sync, vm_container_zpool, img_zpools, ib_net, vm_runner; kept in the "
                "state and stronger than the config file.", group=_G_ATTR,
        examples=("set host attr nas-0-0 img_zpools value=tank1,tank2",
                  "set host attr compute-0-1 img_sync value=true")),
    Cmd(("list", "host", "attr"), f"{_ATTRS}:list_attrs",
        [Arg("args", nargs="*", metavar="HOST_OR_ATTR", kind="host-attr",
             help="hosts and attribute names, in any order (default: all)")], {"attr": str},
        "hosts' storage attributes and their source", group=_G_ATTR),
    Cmd(("remove", "host", "attr"), f"{_ATTRS}:remove_attr",
        [Arg("args", nargs="+", metavar="ARG", kind="host-attr",
             help="HOST... ATTR, or HOST... with attr=ATTR")], {"attr": str},
        "drop an attribute set by command",
        details="The config's value applies again.", group=_G_ATTR),
    Cmd(("dump", "host", "attr"), f"{_ATTRS}:dump_attrs", [Arg("hosts", nargs="*",
                                                               metavar="HOST")], {},
        "print the commands that recreate the attributes",
        details="One `imgstor set host attr|storageattr|zvolattr …` line per attribute "
                "set by command, which `imgstor batch` reads back.", group=_G_ATTR,
        examples=("dump host attr > attrs.batch",)),
    Cmd(("set", "host", "zvolattr"), f"{_SATTRS}:set_zvolattr",
        [Arg("args", nargs="+", metavar="ARG", kind="nas-vol-attr",
             help="NAS VOL ATTR VALUE, or NAS VOL with attr=ATTR value=VALUE")],
        {"attr": str, "value": str}, "set a volume's sync attribute",
        details="frequency (seconds, or 10m, 2h), uploadspeed (NAS->node) or "
                "downloadspeed (node->NAS) in bytes/s like 10M (0: no limit); VALUE None "
                "unsets.", group=_G_ATTR,
        examples=("set host zvolattr nas-0-0 vm1-vol frequency 10m",)),
    Cmd(("list", "host", "zvolattr"), f"{_SATTRS}:list_zvolattr",
        [Arg("nas"), Arg("vol", nargs="?")], {}, "sync attributes of a NAS's volumes",
        details="In parentheses: an inherited value.  NEXTSYNC: when the next pull is "
                "due.", group=_G_ATTR),
    Cmd(("remove", "host", "zvolattr"), f"{_SATTRS}:remove_zvolattr",
        [Arg("args", nargs="+", metavar="ARG", kind="nas-vol-attr",
             help="NAS VOL ATTR, or NAS VOL with attr=ATTR")],
        {"attr": str}, "drop a volume's sync attribute",
        details="The NAS's or the config's value applies again.", group=_G_ATTR),
    Cmd(("set", "host", "storageattr"), f"{_SATTRS}:set_storageattr",
        [Arg("args", nargs="+", metavar="ARG", kind="nas-attr",
             help="NAS ATTR VALUE, or NAS with attr=ATTR value=VALUE")],
        {"attr": str, "value": str}, "set a NAS's sync attribute for its volumes",
        details="frequency, uploadspeed, downloadspeed; VALUE None unsets.", group=_G_ATTR,
        examples=("set host storageattr nas-0-0 uploadspeed 50M",)),
    Cmd(("list", "host", "storageattr"), f"{_SATTRS}:list_storageattr",
        [Arg("nases", nargs="*", metavar="NAS")], {},
        "each NAS's sync attributes and their source", group=_G_ATTR),
    Cmd(("remove", "host", "storageattr"), f"{_SATTRS}:remove_storageattr",
        [Arg("args", nargs="+", metavar="ARG", kind="nas-attr",
             help="NAS ATTR, or NAS with attr=ATTR")],
        {"attr": str}, "drop a NAS's sync attribute", group=_G_ATTR),
    Cmd(("ping",), "imgstor.workflows.hosts:ping", [Arg("hosts", nargs="*", metavar="HOST")],
        {}, "reach hosts, show their tools and pools",
        details="Every host of the config, or those named; exit 11 if one is unreachable.",
        aliases=(("hosts",),), flags=("--trust",), group=_G_HEALTH,
        flag_help={"--trust": "confirm the host keys pinned on first use (the sync hop "
                              "uses them only then)"},
        examples=("ping", "ping nas-0-0")),
    Cmd(("doctor",), "imgstor.workflows.doctor:doctor",
        [Arg("hosts", nargs="*", metavar="HOST")], {},
        "check the setup before the first map",
        details="Config and its permissions, SSH identity and known_hosts, the state "
                "file, the audit log, refresh's timer or cron line and its last run, the "
                "metrics directory; then every host (or those named): reachable, tools "
                "and versions, pools, clock skew.  One line per check; exit 0 only if all "
                "pass, else 9.", flags=("--local",), group=_G_HEALTH,
        examples=("doctor", "doctor --local --json")),
    Cmd(("check",), "imgstor.workflows.check:check", [], {},
        "compare the state with the hosts (read-only)",
        details="The NASes' live targets and marked volumes, the nodes' sessions, overlays "
                "and marked datasets, busy markers and monitors; exit 9 when anything "
                "differs.", group=_G_HEALTH),
    Cmd(("repair",), "imgstor.workflows.check:repair", [], {},
        "fix what check finds",
        details="--dry-run shows the plan.  Leaves what may hold a VM's only data and says "
                "how to remove it (never a NAS volume).", flags=("--destroy-orphans", "--adopt"),
        group=_G_HEALTH, examples=("repair --dry-run", "repair --adopt"),
        flag_help={"--adopt": "take back the marked NAS volumes the store lost (unmapped, "
                   "or mapped where the hosts agree)"}),
    Cmd(("rebuild",), "imgstor.workflows.rebuild:rebuild", [], {},
        "make a lost state file again from the hosts",
        details="From the NAS volumes' imgstor: properties, the nodes' local copies and "
                "overlays, the live targets; refused while a state file exists unless "
                "--force; says what it could not restore (exit 9).",
        flags=("--force",), group=_G_HEALTH,
        flag_help={"--force": "rebuild even though a state file exists (it is replaced)"}),
    Cmd(("unbusy",), "imgstor.workflows.volumes:unbusy", [Arg("nas"), Arg("vol")], {},
        "clear a volume's stale busy marker",
        details="When the process that set it is gone (a dead process's marker on this "
                "frontend is taken over by itself).", group=_G_HEALTH),
    Cmd(("refresh",), "imgstor.workflows.refresh:refresh", [], {},
        "the every-minute run (cron or systemd timer)",
        details="Probes every host, restarts dead monitors, puts back targets, sessions and "
                "overlays that a reboot or a daemon restart lost, starts due periodic "
                "pulls of sync volumes, writes the metrics file, prunes old job logs.  A "
                "second run at once exits 0 quietly.", flags=("--quiet",), group=_G_BG,
        audit=False, examples=("refresh --dry-run",)),
    Cmd(("monitor",), "imgstor.workflows.monitor:monitor",
        [Arg("jobs", nargs="*", metavar="JOB")], {}, "run jobs (sync copies, merges, pulls)",
        details="Runs jobs JOB... to their end in this process; sync maps, unmaps and "
                "refresh start them detached, many in one pool monitor.  --resume hands "
                "every job no monitor runs, failed ones too, to a detached monitor "
                "(--pool KEY: that pool monitor, internal).", flags=("--resume",),
        options=(("--pool", str),), group=_G_BG, audit=False),
    Cmd(("batch",), "imgstor.batch:run_batch",
        [Arg("file", help="one command per line (-: stdin); # comments; a line may start "
                          "with imgstor or rocks")], {},
        "run many commands in parallel",
        details="Items naming the same volume or VM run in file order; one result line per "
                "item as it finishes (--json: one JSON object per line); exit 0 if all "
                "succeeded, else 1.  Global flags (--dry-run...) apply to every item.",
        options=(("--jobs", int),), group=_G_MANY,
        examples=("batch rack.txt --jobs 8", "dump host vm nas | imgstor batch -")),
    Cmd(("_complete",), "imgstor.clihelp:complete",
        [Arg("what"), Arg("words", nargs="*")], {}, "shell completion's words",
        hidden=True, audit=False),
]

_BOOL = {"yes": True, "true": True, "1": True, "on": True,
         "no": False, "false": False, "0": False, "off": False}
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HELP_WORDS = ("-h", "--help", "help")


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


def _unknown(words: list[str], table: Sequence[Cmd], prog: str) -> UsageError:
    import difflib
    text = " ".join(w for w in words if "=" not in w and not w.startswith("-"))
    names = [c.name for c in table if not c.hidden]
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
    if rest[:1] == ["--"]:                 # `imgstor -- list host vm`
        rest = rest[1:]
    if rest[:1] == ["--version"]:
        from imgstor import __version__
        print(f"{prog} {__version__}")
        return opts, None, {}
    if not rest:
        from imgstor.clihelp import overview
        raise UsageError("no command given\n" + overview(table, prog))
    if rest[0] in _HELP_WORDS:
        print(_help(rest[1:], table, prog))
        return opts, None, {}
    found = _match(rest, table)
    if found is None:
        if rest[-1] == "help":             # Rocks: `list host help`
            print(_help(rest[:-1], table, prog))
            return opts, None, {}
        raise _unknown(rest, table, prog)
    cmd, n = found
    tail = rest[n:]
    if any(t in ("-h", "--help") for t in tail) or tail[:1] == ["help"]:
        from imgstor.clihelp import command_help  # Rocks: `list host storagemap help`
        print(command_help(cmd, prog))
        return opts, None, {}
    keys: dict[str, Any] = {}
    positional: list[str] = []
    for tok in tail:
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
        bound = vars(_argparser(cmd, prog).parse_args(positional))
    for k in keys:                      # `add host vm C compute membership=compute`
        if bound.get(k) not in (None, []):
            raise UsageError(f"{cmd.name}: {k} given twice (as an argument and as {k}=)")
    return opts, cmd, {**bound, **keys}


def _help(words: list[str], table: Sequence[Cmd], prog: str) -> str:
    """``help [COMMAND]``; ``help --man`` and ``help --completion`` print the man page and
    the bash completion script (imgstor/docgen.py) of this very table."""
    if words in (["--man"], ["--completion"]):
        from imgstor import docgen
        text = docgen.man_page(table) if words == ["--man"] else docgen.completion(table)
        return text.rstrip("\n")
    from imgstor.clihelp import help_text
    return help_text(words, table, prog)


def _dest(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _argparser(cmd: Cmd, prog: str) -> argparse.ArgumentParser:
    """The parser that binds what ``bind_plain`` leaves (its help is clihelp's)."""
    p = _Parser(prog=f"{prog} {cmd.name}", add_help=False, allow_abbrev=False)
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


def _load(handler: str) -> Callable[..., Any]:
    module, _, func = handler.partition(":")
    return getattr(importlib.import_module(module), func)


def run(argv: Sequence[str], table: Sequence[Cmd], *, prog: str,
        self_argv: Sequence[str] | None = None) -> int:
    """Parse, call the handler, print its result.  Raises ImgstorError (its ``command``
    set to the command's name).  ``self_argv`` starts this imgstor again
    (``Ctx.self_argv``; default ``python -m imgstor``)."""
    opts, cmd, kwargs = parse(argv, table, prog)
    if cmd is None:
        return 0
    log.setup(1 if opts["debug"] else 0)        # -v: the imgstor loggers on stderr
    # Fabric is imported where the first connection is made, in this thread: imported in a
    # background thread beside the handler's own imports, two threads importing at once
    # now and then got a partially initialised stdlib module (Python's import deadlock
    # avoidance: "partially initialized module 'typing' has no attribute 'ClassVar'"),
    # and the command died with a traceback (seen on the lab in map/unmap crash tests).
    from imgstor.workflows.context import Ctx
    ctx = Ctx(**opts)
    if self_argv is not None:
        ctx.self_argv = list(self_argv)
    try:
        result = call(cmd, ctx, kwargs)
    except ImgstorError as e:
        e.command = cmd.name                     # type: ignore[attr-defined]
        raise
    finally:
        if "cluster" in ctx.__dict__:            # only if the command reached hosts
            ctx.cluster.close()
    from imgstor.output import emit
    emit(result, json=ctx.json, command=cmd.name)
    return int(getattr(result, "exit_code", 0) or 0)


def call(cmd: Cmd, ctx: Any, kwargs: dict[str, Any]) -> Any:
    """The handler's result (or exception).  A command that changes something logs one
    audit line (imgstor/audit.py) when it ends, also when it fails, naming the jobs it
    started; a dry run logs nothing.  ``batch`` calls each item through here."""
    if not cmd.audits(kwargs) or ctx.dry_run:
        return _load(cmd.handler)(ctx, **kwargs)
    from imgstor import audit
    jobs: list[str] = []
    token = audit.JOBS.set(jobs)
    try:
        try:
            result = _load(cmd.handler)(ctx, **kwargs)
        finally:
            audit.JOBS.reset(token)
    except BaseException as e:
        audit.command(ctx, cmd, kwargs, error=e, jobs=jobs)
        raise
    audit.command(ctx, cmd, kwargs, result=result, jobs=jobs,
                  rc=int(getattr(result, "exit_code", 0) or 0))
    return result


def wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the global flags (before a ``--``)."""
    for a in argv:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def report_error(e: ImgstorError, argv: Sequence[str]) -> int:
    """Print ``e`` (``error: …`` on stderr; with ``--json`` the error document on stdout)
    and return its exit code."""
    if wants_json(argv):
        from imgstor.output import error_json
        sys.stdout.write(error_json(e, command=getattr(e, "command", None)))
    else:
        from imgstor.output import printable
        print(f"error: {printable(e.message)}", file=sys.stderr)
    if "-v" in argv or "--debug" in argv:
        import traceback
        traceback.print_exc()
    return e.exit_code


def main(argv: Sequence[str] | None = None, *, table: Sequence[Cmd] | None = None,
         prog: str = "imgstor", self_argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return run(argv, COMMANDS if table is None else table, prog=prog,
                       self_argv=self_argv)
        except KeyboardInterrupt:
            from imgstor.errors import Interrupted
            raise Interrupted("interrupted (Ctrl-C): what was done stays done; run the "
                              "command again to finish it") from None
    except ImgstorError as e:
        return report_error(e, argv)


def entry(*, self_argv: Sequence[str] | None = None) -> int:
    """The ``imgstor`` program (console script, ``python -m imgstor``, bin/imgstor, the
    one-file build, which passes ``self_argv``: how a monitor starts it again; else
    ``python -m imgstor``): ``main()`` with the cyclic collector tuned for a command, whose tens of
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
    rc = main(self_argv=self_argv)
    gc.freeze()
    return rc


ROCKS_NOUNS = (("vm",), ("storagemap",), ("storagedev",), ("storageimg",), ("attr",),
               ("zvolattr",), ("storageattr",))
ROCKS_HELP = ("rocks <verb> host vm|vm nas|storagemap|storagedev|storageimg ..., "
              "rocks start|stop|move host vm ..., rocks set|list|remove host attr with "
              "img_sync, vm_container_zpool, img_zpools, IB_net, rocks set|list|remove "
              "host zvolattr|storageattr with frequency, uploadspeed, downloadspeed")


def strip_program(words: list[str]) -> list[str]:
    """A command line as a shell would run it (``imgstor list host vm``, ``rocks list host
    vm``, ``/usr/bin/imgstor …``) -> the command words; a rocks line must be one of the
    storage commands rocks forwards (UsageError otherwise)."""
    name = words[0].rsplit("/", 1)[-1] if words else ""
    if name == "imgstor":
        return words[1:]
    if name == "rocks":
        rest = words[1:]
        w = [x for x in rest if "=" not in x][:3]
        if len(w) < 3 or w[1] != "host" or (w[2],) not in ROCKS_NOUNS:
            raise UsageError(f"rocks {' '.join(rest)!r:.60} is not a storage command rocks "
                             f"forwards to imgstor")
        return rest
    return words


def rocks_main(argv: Sequence[str] | None = None, *,
               self_argv: Sequence[str] | None = None) -> int:
    """``rocks <verb> host <storage noun> ...``: forward to imgstor, refuse the rest.
    ``rocks help`` and ``rocks <verb> host help`` list the storage commands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _, rest = split_globals(argv)
    except ImgstorError as e:
        return report_error(e, argv)
    words = [w for w in rest if "=" not in w][:3]
    if words and words[-1] == "help" and rest[-1] == "help" and len(words) <= 3:
        from imgstor.clihelp import overview
        table = [c for c in COMMANDS if c.words[1:2] == ("host",)]
        print(overview(table, "rocks", prefix=words[:-1]))
        return 0
    if len(words) < 3 or words[1] != "host" or (words[2],) not in ROCKS_NOUNS:
        print(f"rocks: {' '.join(rest)!r} is not an imgstor storage command; "
              f"imgstor handles only: {ROCKS_HELP}", file=sys.stderr)
        return 2
    return main(argv, self_argv=self_argv)
