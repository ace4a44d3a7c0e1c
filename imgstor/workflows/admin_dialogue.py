"""The interactive ``imgstorageadmin``: the guide's recovery questions, asked on the frontend
for one host, each action run by the workflow or node step that ``imgstor`` itself uses.

NAS (the guide's "On NAS" dialogue):
    Unmap iSCSI target? [y]|n          its live targets named like imgstor's; a recorded
                                       volume's target: the unmap workflow (node logs out,
                                       target goes, record unmapped); an orphan: the
                                       ``nas.remove_target`` step, as ``imgstor repair``
    Remove zvol mapping to VM in DB?   the store's volumes of that NAS: the unmap workflow
    Unbusy the zvol?                   busy markers: ``imgstorageadmin unbusy``
Compute node (the guide's "On VM container" dialogue):
    From which NAS?                    narrows the lists (Enter: all)
    Unmap iSCSI target?                volumes the store maps to this node, with what the
                                       node sees live (``compute.devices``): the unmap workflow
    Destroy lvm?                       sync overlays (dm device or qcow2 daemon) read live
                                       (``overlay.status``): ``overlay.remove``; record error
    Remove zvol?                       sync local copies (``nas.get_props``): warned that
                                       their data is destroyed; ``nas.destroy_volume``
                                       (role local-copy); record error

A question is a ``Question``: its prompts and a function that lists ``Item`` s (what is
there now) each with the action that removes it.  Interactive: each question is asked,
its list read fresh (after the previous answers ran).  Scripted (``answers``, from the
choice flags): every list is read and every choice resolved first (numbers as those lists
show them, or names), so a choice that matches nothing is an error before anything runs;
then the actions run in the guide's order.  Ctrl-C is held off while an action runs: an
action is done whole or not started.
"""
from __future__ import annotations

import contextlib
import re
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, TextIO

from imgstor.errors import ImgstorError, UsageError
from imgstor.names import target_iqn
from imgstor.reconcile import imgstor_iqn_prefix
from imgstor.state import transitions
from imgstor.state.store import pid_alive, this_host
from imgstor.workflows.context import Ctx

__all__ = ["Item", "Question", "Term", "Aborted", "questions_for", "run_dialogue",
           "parse_choices", "parse_selectors", "LOCAL_DATA_WARNING", "SEPARATOR"]

SEPARATOR = "===================================="
LOCAL_DATA_WARNING = ("WARNING: the data in these volumes is destroyed, not copied back to "
                      "the NAS; the NAS keeps its last copy.  To keep the node's writes, "
                      "unmap the volume instead (`imgstor remove host storagemap NAS VOL`).")


class Aborted(ImgstorError):
    """The user ended the dialogue (EOF, Ctrl-C) at a prompt."""
    exit_code = 130


@dataclass
class Item:
    label: str                                   # the line shown after its number
    names: tuple[str, ...]                       # what a choice flag may name it by
    run: Callable[[], str]                       # does it; returns what it did


@dataclass
class Question:
    key: str                                     # the choice flag: --<key>
    ask: str                                     # "Unmap iSCSI target?"
    which: str                                   # "Which target number …? (number) "
    items: Callable[[], list[Item]]
    first: int = 0                               # the number of the first item
    fmt: str = "{n} {label}"                     # how a listed item looks
    warning: str | None = None                   # printed before the list
    separator: bool = False                      # the container's ==== after each


class Term:
    """Prompts on ``out``, answers from ``inp``; EOF and Ctrl-C are ``Aborted``."""

    def __init__(self, inp: TextIO, out: TextIO):
        self.inp, self.out = inp, out

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def ask(self, prompt: str) -> str:
        try:
            self.out.write(prompt)
            self.out.flush()
            line = self.inp.readline()
        except KeyboardInterrupt:
            raise Aborted("interrupted: nothing more was done") from None
        if line == "":
            raise Aborted("end of input: nothing more was done")
        return line.strip()

    def yes_no(self, question: str) -> bool:
        """The guide's ``[y]|n``: Enter is yes."""
        while True:
            a = self.ask(f"{question} [y]|n: ").lower()
            if a in ("", "y", "yes"):
                return True
            if a in ("n", "no"):
                return False
            self.say("please answer y or n (Enter: y)")

    def choose(self, prompt: str, count: int, first: int) -> list[int]:
        """Numbers (several allowed, separated by spaces or commas; ``all``); empty: none."""
        while True:
            a = self.ask(prompt)
            try:
                return parse_choices(a, count, first)
            except UsageError as e:
                self.say(str(e))


def parse_choices(text: str, count: int, first: int) -> list[int]:
    """Indexes (0-based, in the list) of the numbers typed; UsageError on bad input."""
    toks = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if [t.lower() for t in toks] == ["all"]:
        return list(range(count))
    out: list[int] = []
    for t in toks:
        if not t.isdigit() or not first <= int(t) < first + count:
            last = first + count - 1
            raise UsageError(f"{t[:20]!r} is not a number of the list ({first}..{last}); "
                             "several numbers may be separated by spaces, Enter: none")
        if int(t) - first not in out:
            out.append(int(t) - first)
    return out


_SELECTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}")


def parse_selectors(text: str, flag: str) -> list[str]:
    """A choice flag's value: numbers as the list shows them, names, or ``all``."""
    toks = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if not toks:
        raise UsageError(f"--{flag} needs numbers or names (or all)")
    for t in toks:
        if not _SELECTOR.fullmatch(t):
            raise UsageError(f"--{flag}: bad choice {t[:40]!r}: a number of the list, a "
                             "volume name, a target IQN or a dataset")
    return toks


def resolve(selectors: list[str], items: list[Item], first: int, flag: str) -> list[int]:
    if [s.lower() for s in selectors] == ["all"]:
        return list(range(len(items)))
    out: list[int] = []
    for s in selectors:
        if s.isdigit():
            i = int(s) - first
            if not 0 <= i < len(items):
                raise UsageError(f"--{flag}: {s} is not a number of the list "
                                 f"({len(items)} item(s) from {first})")
        else:
            hits = [i for i, it in enumerate(items) if s in it.names]
            if not hits:
                raise UsageError(f"--{flag}: nothing named {s!r} in the list "
                                 f"({'; '.join(it.label for it in items) or 'empty'})")
            i = hits[0]
        if i not in out:
            out.append(i)
    return out


@contextlib.contextmanager
def _hold_sigint() -> Iterator[None]:
    """Ctrl-C during an action: the action finishes, then the dialogue stops."""
    got: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda *_: got.append(1))
    except ValueError:                     # not the main thread (tests): nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise Aborted("interrupted: the action under way was finished, nothing more done")


# ------------------------------------------------------------------ the lists
def _unmap_failed_sync(ctx: Ctx, v, *, force: bool) -> str:
    """A sync volume in ``error`` has no job to bring its data back (the sync unmap refuses
    it).  Once its node holds neither its overlay nor its local copy (the container's
    dialogue removed them, or they were never made) the NAS's copy is the only one left:
    the unmap workflow's teardown (session, target, NAS properties, record unmapped) runs.
    While either is there: Conflict, nothing done (the record is the way back to them)."""
    from imgstor.errors import Conflict
    from imgstor.workflows.storagemap.unmapvol import _unmap_steps
    hc = ctx.config.host(v.host, role="compute")
    pool = v.extra.get("local_pool") or hc.vm_container_zpool
    ovl, local = ctx.cluster.steps(v.host, [
        ("overlay.status", {"driver": v.extra.get("overlay") or hc.overlay, "pool": pool,
                            "vol": v.vol}),
        ("nas.get_props", {"pool": pool, "vol": v.vol,
                           "kind": ctx.config.host(v.nas).volume_kind})])
    left = [w for w, there in (("its overlay", ovl.facts.get("exists")),
                               (f"its local copy {pool}/{v.vol}", local.facts.get("exists")))
            if there]
    if left:
        raise Conflict(f"{v.key} is a sync volume in error and {v.host} still holds "
                       f"{' and '.join(left)} (maybe newer than the NAS): remove them first "
                       f"(`imgstorageadmin --host {v.host}`: Destroy lvm?, Remove zvol?), "
                       "or `imgstor repair`")
    nas_cfg = ctx.config.host(v.nas, role="nas")
    if ctx.dry_run:
        return _said(_unmap_steps(ctx, v.key, v.nas, nas_cfg, v, force))
    with ctx.store.busy(v.key, "unmap") as cur:
        out = _said(_unmap_steps(ctx, v.key, v.nas, nas_cfg, cur, force))
    with ctx.store.transaction() as st:                  # sync mode's own facts go too
        rec = st.volumes.get(v.key)
        for k in ("origin", "overlay", "local_pool"):
            if rec is not None:
                rec.extra.pop(k, None)
    return out


def _said(result) -> str:
    """A workflow's one-line message (a ``Message``'s, not the guide's two lines)."""
    return getattr(result, "message", None) or str(result)


def _unmap_said(ctx: Ctx, nas: str, vol: str, force: bool) -> str:
    from imgstor.workflows.storagemap import unmap_volume
    return _said(unmap_volume(ctx, nas, vol, force=force))


def _nas_questions(ctx: Ctx, nas: str, force: bool) -> list[Question]:
    from imgstor.workflows.storagemap import unmap_volume
    from imgstor.workflows.volumes import unbusy
    cfg = ctx.config.host(nas, role="nas")

    def vols():
        return [v for v in ctx.store.read().volumes.values() if v.nas == nas]

    def unmap(vol: str) -> str:
        v = ctx.store.read().volumes.get(f"{nas}/{vol}")
        if v is not None and v.mode == "sync" and v.state == "error" and v.host:
            return _unmap_failed_sync(ctx, v, force=force)
        return _said(unmap_volume(ctx, nas, vol, force=force))

    def untarget(iqn: str) -> str:           # imgstor repair's action on an orphan target
        return ctx.cluster.step(nas, "nas.remove_target", driver=cfg.target_driver, iqn=iqn,
                                force=force).message or f"removed target {iqn}"

    def targets() -> list[Item]:
        live = ctx.cluster.step(nas, "nas.target_facts", driver=cfg.target_driver).facts["targets"]
        by_iqn = {}
        for v in vols():
            by_iqn[v.target or target_iqn(nas, v.vol)] = v
        items = []
        for t in sorted(live, key=lambda t: (t.get("tid") or 0, t["iqn"])):
            iqn = t["iqn"]
            v = by_iqn.get(iqn)
            if v is None and not iqn.lower().startswith(imgstor_iqn_prefix(nas)):
                continue                   # not imgstor's: never offered
            names = (iqn,) + ((v.vol,) if v else ())
            if v is not None and (v.host or v.state != "unmapped"):
                items.append(Item(iqn, names, partial(unmap, v.vol)))
            else:
                items.append(Item(iqn, names, partial(untarget, iqn)))
        return items

    def mappings() -> list[Item]:
        items = []
        for v in vols():
            cells = [v.vol, v.zpool, v.target, v.host]
            label = " ".join(c for c in cells if c)
            if v.state not in ("mapped", "unmapped"):
                label += f" ({v.state})"
            items.append(Item(label, (v.vol, v.key), partial(unmap, v.vol)))
        return items

    def busy() -> list[Item]:
        items = []
        for v in vols():
            b = v.busy
            if b is None:
                continue
            label = f"{v.vol} {b.op} pid {b.pid}@{b.host} {b.since:.2f}"
            if b.host == this_host() and pid_alive(b.pid, b.starttime):
                label += " (that process is still running)"
            items.append(Item(label, (v.vol, v.key), partial(unbusy, ctx, nas, v.vol)))
        return items

    return [
        Question("unmap-target", "Unmap iSCSI target?",
                 "Which target number would you like to delete? (number) ", targets,
                 first=1, fmt="Target {n}: {label}"),
        Question("remove-mapping", "Remove zvol mapping to VM in DB?",
                 "Which zvol? (number) ", mappings),
        Question("unbusy-zvol", "Unbusy the zvol?", "Which zvol? (number) ", busy),
    ]


def _container_questions(ctx: Ctx, host: str, force: bool,
                         nas_filter: Callable[[str], bool]) -> list[Question]:
    from imgstor.workflows.storagemap.common import portal_of
    from imgstor.workflows.storagemap.sync import LOCAL_COPY
    hc = ctx.config.host(host, role="compute")

    def vols():
        return sorted((v for v in ctx.store.read().volumes.values()
                       if v.host == host and nas_filter(v.nas)), key=lambda v: v.key)

    def sessions() -> list[Item]:
        vs = [v for v in vols() if v.target]
        if not vs:
            return []
        portals = {v.key: v.extra.get("portal") or portal_of(ctx.config.host(v.nas))
                   for v in vs}
        seen = {d["iqn"]: d for d in ctx.cluster.step(
            host, "compute.devices", kind=hc.initiator,
            targets=[{"iqn": v.target, "portal": portals[v.key],
                      "lun": int(v.extra.get("lun", 1))} for v in vs]).facts["devices"]}
        items = []
        for v in vs:
            status = seen.get(v.target, {}).get("status", "absent")
            items.append(Item(f"{portals[v.key]},1 {v.target} ({v.vol}: {status})",
                              (v.target, v.vol, v.key),
                              partial(_unmap_said, ctx, v.nas, v.vol, force)))
        return items

    def _sync():
        out = []
        for v in vols():
            if v.mode == "sync":
                out.append((v, v.extra.get("overlay") or hc.overlay,
                            v.extra.get("local_pool") or hc.vm_container_zpool))
        return out

    def _to_error(key: str, why: str) -> None:
        if ctx.dry_run:
            return
        with ctx.store.transaction() as st:
            v = st.volumes.get(key)
            if v is not None and v.state != "unmapped":
                transitions.move(v, "error", force=True)   # the admin's override
                v.error = why

    def overlays() -> list[Item]:
        syncs = _sync()
        if not syncs:
            return []
        res = ctx.cluster.steps(host, [("overlay.status", {"driver": d, "pool": p,
                                                           "vol": v.vol})
                                       for v, d, p in syncs])
        items = []
        for (v, d, p), r in zip(syncs, res):
            f = r.facts
            if not f.get("exists"):
                continue
            desc = " ".join(str(x) for x in (f.get("status"), f.get("phase"),
                                             f.get("synced")) if x)
            name = f.get("device") or f"{v.vol}-snap"

            def run(v=v, d=d, p=p):
                m = ctx.cluster.step(host, "overlay.remove", driver=d, pool=p,
                                     vol=v.vol).message
                _to_error(v.key, f"imgstorageadmin removed its overlay on {host} "
                                 f"({time.strftime('%Y-%m-%d %H:%M')})")
                return m or f"removed the overlay of {v.vol}"
            items.append(Item(f"{name}: {d} {desc}", (v.vol, v.key, name), run))
        return items

    def local_volumes() -> list[Item]:
        syncs = _sync()
        if not syncs:
            return []
        kind = {v.key: ctx.config.host(v.nas).volume_kind for v, _, _ in syncs}
        res = ctx.cluster.steps(host, [("nas.get_props", {"pool": p, "vol": v.vol,
                                                          "kind": kind[v.key]})
                                       for v, _, p in syncs])
        items = []
        for (v, _, p), r in zip(syncs, res):
            if not r.facts.get("exists"):
                continue

            def run(v=v, p=p):
                m = ctx.cluster.step(host, "nas.destroy_volume", pool=p, vol=v.vol,
                                     kind=kind[v.key], driver=None, role=LOCAL_COPY).message
                _to_error(v.key, f"imgstorageadmin destroyed its local copy {p}/{v.vol} "
                                 f"on {host}; the NAS holds its last copy")
                return m or f"destroyed {p}/{v.vol}"
            items.append(Item(f"{p}/{v.vol}", (f"{p}/{v.vol}", v.vol, v.key), run))
        return items

    return [
        Question("unmap-target", "Unmap iSCSI target?",
                 "Which target would you like to delete? (number) ", sessions,
                 separator=True),
        Question("destroy-lvm", "Destroy lvm?",
                 "Which lvm would you like to destroy? (number) ", overlays, separator=True),
        Question("remove-zvol", "Remove zvol?",
                 "Which zvol would you like to delete? (number) ", local_volumes,
                 warning=LOCAL_DATA_WARNING, separator=True),
    ]


def questions_for(ctx: Ctx, host: str, *, force: bool = False,
                  nas_filter: Callable[[str], bool] = lambda n: True) -> list[Question]:
    if ctx.config.host(host).role == "nas":
        return _nas_questions(ctx, host, force)
    return _container_questions(ctx, host, force, nas_filter)


# ------------------------------------------------------------------ the dialogue
@dataclass
class Done:
    question: str
    item: str
    result: str
    ok: bool = True


@dataclass
class Dialogue:
    term: Term
    done: list[Done] = field(default_factory=list)

    def act(self, q: Question, it: Item) -> None:
        with _hold_sigint():
            try:
                msg = it.run()
                ok = True
            except ImgstorError as e:
                msg, ok = f"failed: {e}", False
        self.done.append(Done(q.key, it.label, msg, ok))
        self.term.say(msg)

    def show(self, q: Question, items: list[Item]) -> None:
        if q.warning and items:
            self.term.say(q.warning)
        for n, it in enumerate(items, q.first):
            self.term.say(q.fmt.format(n=n, label=it.label))

    def interactive(self, qs: list[Question]) -> None:
        for q in qs:
            if self.term.yes_no(q.ask):
                items = q.items()
                if not items:
                    self.term.say("nothing to choose from")
                else:
                    self.show(q, items)
                    for i in self.term.choose(q.which, len(items), q.first):
                        self.act(q, items[i])
            if q.separator:
                self.term.say(SEPARATOR)

    def plan(self, qs: list[Question], answers: dict[str, list[str]]
             ) -> list[tuple[Question, list[Item]]]:
        """Every list read and every choice resolved, before anything runs."""
        out = []
        for q in qs:
            if q.key in answers:
                items = q.items()
                out.append((q, [items[i] for i in resolve(answers[q.key], items, q.first,
                                                           q.key)]))
        return out

    def scripted(self, plan: list[tuple[Question, list[Item]]], *, confirm: bool) -> None:
        if confirm:
            for q, chosen in plan:
                self.term.say(f"{q.ask} y: " + (", ".join(it.label for it in chosen)
                                                 or "nothing matches"))
                if q.warning and chosen:
                    self.term.say(q.warning)
            if not self.term.yes_no("Go ahead?"):
                self.term.say("nothing done")
                return
        for q, chosen in plan:
            self.term.say(f"{q.ask} y")
            if q.warning and chosen and not confirm:
                self.term.say(q.warning)
            for it in chosen:
                self.term.say(f"{it.label}:")
                self.act(q, it)
            if q.separator:
                self.term.say(SEPARATOR)


def run_dialogue(qs: list[Question], term: Term, answers: dict[str, list[str]] | None,
                 *, confirm: bool = False) -> list[Done]:
    """Ask (``answers`` None), or run the choices of ``answers`` (resolved first; shown and
    confirmed on the terminal when ``confirm``); return what was done."""
    d = Dialogue(term)
    try:
        try:
            if answers is None:
                d.interactive(qs)
            else:
                d.scripted(d.plan(qs, answers), confirm=confirm)
        except KeyboardInterrupt:   # between prompts (actions hold it off): stop here
            raise Aborted("interrupted: nothing more was done") from None
    except Aborted as e:
        e.details["done"] = [x.__dict__ for x in d.done]
        raise
    return d.done
