"""``imgstorageadmin``: the guide's recovery dialogue, and the store by hand.

    imgstorageadmin [--host H] [--yes] [--force] [choice flags]   the guide's questions
    imgstorageadmin [--json] [--config PATH] list               volumes, with busy markers
    imgstorageadmin unbusy NAS VOL                              clear a stale busy marker
    imgstorageadmin set-state NAS VOL STATE                     force a volume's state

Bare (or with only dialogue flags) it asks which host, then the guide's questions for that
host's role (imgstor.workflows.admin_dialogue); ``DIALOGUE_HELP`` documents the flags.
The commands have the same grammar and flags as ``imgstor`` (see imgstor.cli); their
handlers (imgstor.workflows.volumes, also ``imgstor unbusy``) change only the store, never
a host.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from imgstor import log, validate
from imgstor.cli import Arg, Cmd, report_error, run, split_globals
from imgstor.errors import ImgstorError, UsageError
from imgstor.output import Output
from imgstor.state.model import VOLUME_STATES
from imgstor.workflows.context import Ctx

__all__ = ["ADMIN_COMMANDS", "DIALOGUE_HELP", "main"]

DIALOGUE_HELP = """\
usage: imgstorageadmin [--host HOST] [--yes] [--force] [--nas NAS] [choice flags]

The guide's recovery dialogue, run on the frontend.  Without --host it asks which host
(a numbered list of the config's NAS and compute hosts), then that host's questions; each
is answered y (Enter) or n, then with numbers from the list shown (several: `1 3` or `1,3`).

  on a NAS:           Unmap iSCSI target?  Remove zvol mapping to VM in DB?  Unbusy the zvol?
  on a compute node:  From which NAS?  Unmap iSCSI target?  Destroy lvm?  Remove zvol?

Every action is what imgstor itself does: unmapping is `imgstor remove host storagemap`
(node logs out, target removed, record unmapped; a sync volume goes back to the NAS
first), an orphan target goes as `imgstor repair` removes it, an overlay with the
`overlay.remove` step, a local copy with `nas.destroy_volume` -- its data is DESTROYED
(the NAS keeps its last copy); the record of a volume whose overlay or local copy was
removed is set to error, and its mapping is then removed on the NAS's dialogue.

  --host HOST             the host to work on (no question)
  --yes                   with choice flags: run them without asking (needed when
                          stdin is not a terminal; on a terminal the plan is shown
                          and confirmed first)
  --force                 unmap even a disk in use (its VM loses it), as `--force` of
                          remove host storagemap
  --nas NAS               compute node: only volumes of NAS (the "From which NAS?" answer)
  --unmap-target CHOICES  Unmap iSCSI target?            (NAS and compute node)
  --remove-mapping CHOICES  Remove zvol mapping to VM in DB?   (NAS)
  --unbusy-zvol CHOICES   Unbusy the zvol?               (NAS)
  --destroy-lvm CHOICES   Destroy lvm?                   (compute node)
  --remove-zvol CHOICES   Remove zvol?                   (compute node; destroys data)

CHOICES: numbers as the interactive list shows them, names (a volume, a target IQN, a
dataset POOL/VOL), or `all`; comma- or space-separated.  With choice flags nothing is
asked but the confirmation: every list is read and every choice checked before anything
runs, the questions without a flag are skipped, and the actions run in the guide's order.
Global flags: --json (a list of what was done), -n/--dry-run (show it, change nothing),
--config PATH.
Exit: 0 all done, 1 an action failed, 2 bad input, 130 aborted (EOF or Ctrl-C at a prompt:
what was done so far stays done, nothing is half-done).
"""


_GROUP = "Commands (no questions)"
ADMIN_COMMANDS: list[Cmd] = [
    Cmd(("list",), "imgstor.workflows.volumes:list_volumes", [], {},
        "volumes in the store, with busy markers", group=_GROUP,
        examples=("list --json",)),
    Cmd(("unbusy",), "imgstor.workflows.volumes:unbusy", [Arg("nas"), Arg("vol")], {},
        "clear the busy marker of a volume", group=_GROUP,
        examples=("unbusy nas-0-0 vol1",)),
    Cmd(("set-state",), "imgstor.workflows.volumes:set_state",
        [Arg("nas"), Arg("vol"), Arg("state", help=", ".join(VOLUME_STATES), kind="state")],
        {}, "force the state of a volume", group=_GROUP,
        details="unmapped also clears its host, target, device and mode."),
    Cmd(("fold",), "imgstor.workflows.volumes:fold", [], {},
        "fold the state file's journal into it", group=_GROUP,
        details="The file alone then holds every transaction: before a hand edit or a "
                "copy of the file alone (refresh does it every run).",
        examples=("fold",)),
]


def main(argv: Sequence[str] | None = None, *, self_argv: Sequence[str] | None = None) -> int:
    """``imgstorageadmin``; ``self_argv`` as ``cli.run``'s (the one-file build's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _, rest = split_globals(argv)
        if rest[:1] in (["-h"], ["--help"], ["help"]):
            print(DIALOGUE_HELP)
            print()
        elif not rest or (rest[0].startswith("--") and rest[0] != "--version"):
            return dialogue_main(argv, self_argv=self_argv)
        return run(argv, ADMIN_COMMANDS, prog="imgstorageadmin", self_argv=self_argv)
    except ImgstorError as e:
        return report_error(e, argv)


# ------------------------------------------------------------------ the dialogue
CHOICE_FLAGS = {"nas": ("unmap-target", "remove-mapping", "unbusy-zvol"),
                "compute": ("unmap-target", "destroy-lvm", "remove-zvol")}


def _dialogue_args(rest: list[str]) -> argparse.Namespace:
    p = _DialogueParser(prog="imgstorageadmin", add_help=False, allow_abbrev=False)
    p.add_argument("--host")
    p.add_argument("--nas")
    p.add_argument("--yes", action="store_true")
    p.add_argument("--force", action="store_true")
    for k in sorted({k for ks in CHOICE_FLAGS.values() for k in ks}):
        p.add_argument(f"--{k}", dest=k.replace("-", "_"), action="append")
    return p.parse_args(rest)


class _DialogueParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"imgstorageadmin: {message} (see imgstorageadmin --help)")


def _pick_host(ctx: Ctx, term) -> str:
    from imgstor.workflows.admin_dialogue import parse_choices
    hosts = sorted(h for h, c in ctx.config.hosts.items() if c.role in CHOICE_FLAGS)
    if not hosts:
        raise UsageError(f"no NAS or compute hosts in {ctx.config.path}")
    for n, h in enumerate(hosts, 1):
        term.say(f"{n} {h} ({ctx.config.hosts[h].role})")
    while True:
        a = term.ask("Which host? (number or name) ")
        if a in hosts:
            return a
        try:
            got = parse_choices(a, len(hosts), 1)
        except UsageError as e:
            term.say(str(e))
            continue
        if len(got) == 1:
            return hosts[got[0]]
        term.say("one host, please")


def _nas_filter(ctx: Ctx, answer: str | None):
    """The guide's "From which NAS? (Don't forget .ibnet if used)": a NAS name, or that
    name with the InfiniBand suffix; none: all."""
    if not answer or answer.lower() == "all":
        return None
    nases = [h for h, c in ctx.config.hosts.items() if c.role == "nas"]
    for n in nases:
        if answer == n or answer.startswith(n + "."):
            return n
    raise UsageError(f"{answer[:60]!r} is not a NAS of {ctx.config.path} "
                     f"(known: {', '.join(sorted(nases)) or 'none'})")


def dialogue_main(argv: list[str], *, self_argv: Sequence[str] | None = None) -> int:
    """Bare ``imgstorageadmin``: the guide's questions (see DIALOGUE_HELP)."""
    from imgstor.output import emit
    from imgstor.workflows import admin_dialogue as dlg
    opts, rest = split_globals(argv)
    a = _dialogue_args(rest)
    log.setup(1 if opts["debug"] else 0)
    answers: dict[str, list[str]] = {}
    for ks in CHOICE_FLAGS.values():
        for k in ks:
            vals = getattr(a, k.replace("-", "_"))
            if vals:
                answers[k] = [t for v in vals for t in dlg.parse_selectors(v, k)]
    tty = sys.stdin.isatty()
    if not tty and not a.yes:
        raise UsageError("imgstorageadmin asks questions and stdin is not a terminal: run "
                         "it on a terminal, or give --host, the choice flags and --yes "
                         "(imgstorageadmin --help)")
    if a.yes and not answers:
        raise UsageError("--yes runs the choices of the choice flags (--unmap-target…), "
                         "and none was given")
    if answers and not a.host:
        raise UsageError("choice flags need --host (the numbers and names are that host's)")
    ctx = Ctx(**opts)
    if self_argv is not None:
        ctx.self_argv = list(self_argv)
    if a.host is not None:
        role = ctx.config.host(validate.host(a.host, "host")).role
        if role not in CHOICE_FLAGS:
            raise UsageError(f"{a.host} is a {role} host: imgstorageadmin works on NAS "
                             "and compute hosts")
        wrong = sorted(set(answers) - set(CHOICE_FLAGS[role]))
        if wrong:
            raise UsageError(f"{a.host} is a {role} host: no question answers "
                             f"{', '.join('--' + w for w in wrong)}")
        if a.nas and role != "compute":
            raise UsageError("--nas is the compute node's \"From which NAS?\"")
    nas = _nas_filter(ctx, a.nas)
    term = dlg.Term(sys.stdin, sys.stderr if ctx.json else sys.stdout)
    done: list = []
    host = a.host
    try:
        try:
            host = a.host or _pick_host(ctx, term)
            if ctx.config.host(host).role == "compute" and a.nas is None and not answers:
                while True:                       # a bad answer is asked again
                    try:
                        nas = _nas_filter(ctx, term.ask("From which NAS? (Don't forget "
                                                        ".ibnet if used) [all]: "))
                        break
                    except UsageError as e:
                        term.say(str(e))
        except KeyboardInterrupt:
            raise dlg.Aborted("interrupted: nothing was done") from None
        qs = dlg.questions_for(ctx, host, force=a.force,
                               nas_filter=(lambda n: nas is None or n == nas))
        done = dlg.run_dialogue(qs, term, answers or None, confirm=bool(answers) and not a.yes)
    except dlg.Aborted as e:
        _audit(ctx, host, e.details.get("done", []))
        if ctx.json:
            emit(Output(e.details.get("done", []), _DONE_COLUMNS), json=True)
        raise
    finally:
        if "cluster" in ctx.__dict__:
            ctx.cluster.close()
    rows = [d.__dict__ for d in done]
    _audit(ctx, host, rows)
    failed = any(not d.ok for d in done)
    if ctx.json:
        emit(Output(rows, _DONE_COLUMNS), json=True)
    elif ctx.dry_run:
        print("dry run: nothing was changed")
    return 1 if failed else 0


_DONE_COLUMNS = [("question", "QUESTION"), ("item", "ITEM"), ("result", "RESULT"),
                 ("ok", "OK")]


def _audit(ctx: Ctx, host: str | None, rows: list[dict]) -> None:
    """One audit line per action the dialogue ran on ``host`` (imgstor/audit.py); a dry
    run: none."""
    if ctx.dry_run or not rows:
        return
    from imgstor import audit
    for r in rows:
        audit.record(ctx, what=f"imgstorageadmin {r['question']}",
                     target=f"{host}: {r['item']}",
                     result="ok" if r["ok"] else "failed", message=r["result"])
