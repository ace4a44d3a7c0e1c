"""``imgstor batch FILE|-``: many commands, one process, one SSH connection per host.

FILE holds one imgstor command per line, in the command line's own grammar (shell-style
quoting, ``#`` comments, blank lines skipped); a line may start with ``imgstor`` or
``rocks`` as a shell script's would (what ``dump host vm|vm nas|attr`` print)::

    add host storagemap nas-0-0 tank vm1-vol compute-0-0 10G
    start host vm web1 web2          # several VMs: one item
    imgstor remove host storagemap nas-0-1 old-vol

Global flags go on ``batch`` itself and apply to every item (``--dry-run``, ``--config``,
``--debug``; ``--json`` shapes the batch's output); on an item they are that item's error,
as is ``batch`` (no nesting), an unknown command, a bad name, an unknown host or a NUL
byte: each item is parsed and its names checked before any item runs, and a bad one fails
alone without reaching any host.

Items run on ``--jobs N`` threads (default ``sched.DEFAULT_JOBS``) sharing one config, one
store and one ``Cluster`` (a pooled connection per host).  Items that touch the same
volume or VM run in file order (``sched``: resource keys); commands whose reach is not
known (attributes, lists, ping) are barriers.  A failed item does not stop the others.

Result: one line per item, printed as the item finishes (items refused before running
first) -- item number, line number, exit code, message -- then ``N items: X ok, Y failed``;
with ``--json`` one JSON object per line (JSON lines), ``{version, item, line, command,
exit_code, message, rows}``, then ``{version, command: "batch", exit_code, summary: {items,
ok, failed}}``.  The batch exits 0 when every item did, else ``EXIT_FAILED`` (1).
Each item that changes something logs its own audit line (``cli.call``).  Every item is written to be
re-run: "already done" is success (a map already in place, an unmap of a volume that is
not mapped, the remove of an image already gone), so a batch killed halfway completes
when run again.
"""
from __future__ import annotations

import json
import shlex
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from imgstor import sched, validate
from imgstor.errors import ImgstorError, UsageError
from imgstor.exitcodes import INTERNAL
from imgstor.output import JSON_VERSION, Lines, Message, Output, Printed, json_rows, printable
from imgstor.workflows.context import Ctx

__all__ = ["Item", "read_items", "prepare", "run_batch", "EXIT_FAILED"]

EXIT_FAILED = 1               # exitcodes.FAILED: some item failed; its own code is in its line
_BARRIER = None
_GLOBALS = {"json": False, "dry_run": False, "debug": False, "config_path": None}
_VOLUME_CMDS = {("add", "host", "storagemap"), ("remove", "host", "storagemap"),
                ("remove", "host", "storageimg"), ("unbusy",)}
_VM_CMDS = {("start", "host", "vm"), ("stop", "host", "vm"), ("remove", "host", "vm"),
            ("set", "host", "vm", "nas"), ("remove", "host", "vm", "nas"),
            ("set", "host", "vm"), ("move", "host", "vm")}


@dataclass
class Item:
    n: int                          # item number, from 1
    line: int                       # line number in the file
    text: str                       # the line, printable
    argv: list[str] = field(default_factory=list)
    error: ImgstorError | None = None          # refused before running
    cmd: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    keys: frozenset[str] | None = None


def read_items(data: bytes) -> list[Item]:
    """The items of a batch file: one per non-blank, non-comment line.  A line that cannot
    be an item (NUL byte, not UTF-8, unbalanced quotes) is an item with its error."""
    items: list[Item] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        shown = printable(raw.decode("utf-8", errors="replace")).strip()
        err: ImgstorError | None = None
        argv: list[str] = []
        if b"\0" in raw:
            err = UsageError(f"line {lineno}: NUL byte in the line; refused")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                err = UsageError(f"line {lineno}: not UTF-8; refused")
            else:
                if not text.strip() or text.lstrip().startswith("#"):
                    continue
                try:
                    argv = shlex.split(text, comments=True)
                except ValueError as e:
                    err = UsageError(f"line {lineno}: {e}")
                if not argv and err is None:
                    continue
        items.append(Item(len(items) + 1, lineno, shown, argv, err))
    return items


def prepare(item: Item, ctx: Ctx, table, *, prog: str = "imgstor") -> None:
    """Parse the item and check its names against the config (nothing runs); on a problem
    set ``item.error``."""
    if item.error is not None:
        return
    from imgstor.cli import parse, split_globals, strip_program
    try:
        opts, rest = split_globals(strip_program(item.argv))
        if opts != _GLOBALS:
            raise UsageError("global flags (--json, -n/--dry-run, -v/--debug, --config) go "
                             "on the batch command, not on its items")
        if not rest or any(a in ("-h", "--help", "help") for a in rest):
            raise UsageError("no command, or a request for help: not a batch item")
        if rest[0] == "batch":
            raise UsageError("batch inside a batch is refused")
        _, cmd, kwargs = parse(rest, table, prog)
        if cmd is None:
            raise UsageError("not a command")
        _check_names(ctx, cmd.words, kwargs)
        item.cmd, item.kwargs, item.keys = cmd, kwargs, _keys(cmd.words, kwargs)
    except ImgstorError as e:
        item.error = e


def _check_names(ctx: Ctx, words: tuple[str, ...], kw: dict[str, Any]) -> None:
    """What every workflow checks first, done for all items before any runs: names
    against their patterns, hosts against the config (and their role)."""
    cfg = ctx.config
    if kw.get("nas") not in (None, "none"):
        cfg.host(validate.host(kw["nas"], "NAS"), role="nas", what="NAS")
    for k in ("host", "container"):
        if kw.get(k) is not None:
            cfg.host(validate.host(kw[k], k), role="compute", what=k)
    for h in kw.get("hosts") or ():
        cfg.host(validate.host(h))
    if kw.get("zpool") is not None:
        validate.zpool(kw["zpool"])
    if kw.get("vol") is not None:
        validate.volume(kw["vol"])
    for k in ("vm", "name"):
        if kw.get(k) is not None:
            validate.vm(kw[k])
    for v in kw.get("vms") or ():
        validate.vm(v)
    if kw.get("size") is not None:
        validate.parse_size(kw["size"])


def _keys(words: tuple[str, ...], kw: dict[str, Any]) -> frozenset[str] | None:
    """The resources an item touches (``sched``): a volume by its name (on any NAS: a VM's
    NAS may be set by an earlier item), a VM by its name; None: a barrier."""
    if words in _VOLUME_CMDS:
        return frozenset({f"vol:{kw['vol']}"})
    if words in _VM_CMDS:
        vms = kw.get("vms") or [kw["vm"]]
        return frozenset([f"vm:{v}" for v in vms] + [f"vol:{v}-vol" for v in vms])
    if words == ("add", "host", "vm"):
        return frozenset({f"vm:{kw['name']}" if kw.get("name") else "vm:*new*"})
    return _BARRIER


def _outcome(result: Any) -> tuple[int, str, list]:
    """(exit code, one-line message, rows) of what a handler returned or raised."""
    if isinstance(result, ImgstorError):
        return result.exit_code, result.message, []
    if isinstance(result, BaseException):          # a bug: its traceback goes to stderr
        return INTERNAL, f"internal error (traceback above): {result!r}", []
    if isinstance(result, Output):
        msg = "; ".join(result.footer) or f"{len(result.rows)} rows"
        return int(result.exit_code or 0), msg, result.rows
    if isinstance(result, Message):
        return 0, result.message, []
    if isinstance(result, Lines):
        return int(result.exit_code), "; ".join(result.lines), []
    return 0, "" if result is None else str(result), []


_WIDTHS = (6, 6, 4)           # ITEM, LINE, RC: the plain table's (header + 2), known ahead


def _text_line(cells: tuple[str, str, str, str]) -> str:
    return "  ".join([c.ljust(w) for c, w in zip(cells, _WIDTHS)] + [cells[3]]).rstrip()


def run_batch(ctx: Ctx, file: str, jobs: int | None = None) -> Printed:
    """Run the commands of FILE (``-``: stdin), in parallel where they allow it, printing
    each item's line as it finishes."""
    from imgstor.cli import COMMANDS, call
    workers = sched.DEFAULT_JOBS if jobs is None else jobs
    if workers < 1:
        raise UsageError(f"--jobs must be 1 or more, not {workers}")
    try:
        if file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(file, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UsageError(f"batch: cannot read {file}: {e.strerror}") from None
    items = read_items(data)
    for it in items:
        prepare(it, ctx, COMMANDS)
    runnable = [it for it in items if it.error is None]
    if runnable:
        # built here, once, before the threads: the items share them
        ctx.config, ctx.store, ctx.cluster  # noqa: B018
    out = sys.stdout
    failed = 0
    if not ctx.json:
        out.write(_text_line(("ITEM", "LINE", "RC", "MESSAGE")) + "\n")

    def done(it: Item, result: Any) -> None:
        nonlocal failed
        rc, msg, rows = _outcome(result)
        msg = " / ".join(printable(msg).splitlines())
        failed += bool(rc)
        if ctx.json:
            out.write(json.dumps({"version": JSON_VERSION, "item": it.n, "line": it.line,
                                  "command": it.text, "exit_code": rc, "message": msg,
                                  "rows": json_rows(rows, [])}) + "\n")
        else:
            out.write(_text_line((str(it.n), str(it.line), str(rc), msg)) + "\n")
        out.flush()

    for it in items:
        if it.error is not None:
            done(it, it.error)

    def job(it: Item):
        def run_item():
            try:
                return call(it.cmd, ctx, it.kwargs)
            except ImgstorError:
                raise
            except Exception:
                sys.stderr.write(f"item {it.n} (line {it.line}): {it.text}\n"
                                 + traceback.format_exc())
                raise
        return sched.Job(it.keys, run_item)

    sched.run([job(it) for it in runnable], workers=workers,
              on_done=lambda i, result: done(runnable[i], result))
    if runnable and not ctx.dry_run:
        ctx.store.fold()      # the batch's journal into the state file: whole again
    rc = EXIT_FAILED if failed else 0
    summary = {"items": len(items), "ok": len(items) - failed, "failed": failed}
    if ctx.json:
        out.write(json.dumps({"version": JSON_VERSION, "command": "batch", "exit_code": rc,
                              "summary": summary}) + "\n")
    else:
        out.write(f"{len(items)} items: {len(items) - failed} ok, {failed} failed\n")
    out.flush()
    return Printed(rc)
