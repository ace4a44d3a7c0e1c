"""Entry point ON a node: ``python3 imgstor-<hash>.pyz node STEP`` with JSON on stdin.

stdin:  {"args": {...}, "dry_run": false}
stdout: exactly one JSON object:
    {"ok": true,  "changed": bool, "facts": {...}, "message": str, "commands": [...]}
    {"ok": false, "error": {"code": "NotFound", "message": "...", "details": {...}},
     "commands": [...]}
"commands" lists what ran (and "SKIP> …" for what a dry run did not run), for --debug.
Exit code 0 when ok, 1 for an ImgstorError, 70 for a bug (with a traceback in the error).

Every step that may change something runs under the node's lock of its volume (or of its
target when it names no volume), held by this process for the whole step or batch
(imgstor.remote.locks): a step orphaned by a killed frontend and the re-run of the same
command never run at once.  A dry run changes nothing and takes no lock.
"""
from __future__ import annotations

import json
import sys
import traceback

from imgstor.errors import ImgstorError, UsageError
from imgstor.remote import protocol
from imgstor.remote.executor import DryRunExecutor, Executor, LocalExecutor

__all__ = ["main", "run_step"]


def run_batch(steps: list[dict], ex: Executor, stop_after: int | None = None) -> dict:
    """Several steps in one node process (one SSH round trip); the first error stops it.
    ``stop_after``: index of the last step to run (fault injection at a step boundary)."""
    results = []
    for i, s in enumerate(steps):
        try:
            results.append(run_step(s["step"], s.get("args") or {}, ex))
        except ImgstorError as e:      # the frontend learns which step of the batch failed
            e.details.setdefault("batch_index", i)
            raise
        if stop_after is not None and i >= stop_after:
            break
    return {"ok": True, "changed": any(r["changed"] for r in results),
            "facts": {"results": results}, "message": ""}


def lock_names(name: str, args: dict) -> list[str]:
    """The volume locks a request needs: those of every mutating step in it."""
    from imgstor.remote import locks
    from imgstor.remote.steps import load_all
    if name == "batch":
        out: list[str] = []
        for s in args.get("steps") or []:
            if isinstance(s, dict):
                out += lock_names(str(s.get("step")), s.get("args") or {})
        return out
    fn = load_all().get(name)
    if fn is None or getattr(fn, "read_only", False) or not isinstance(args, dict):
        return []
    return locks.volume_lock_names(args)


def run_locked(name: str, args: dict, ex: Executor) -> dict:
    """``run_step`` holding the request's volume locks (none in a dry run)."""
    from imgstor.remote import locks
    names = [] if ex.dry_run else lock_names(name, args)
    with locks.hold(names, what=f"volume lock of node step {name}"):
        return run_step(name, args, ex)


def run_step(name: str, args: dict, ex: Executor) -> dict:
    from imgstor.remote.steps import load_all
    if name == "batch":
        return run_batch(args.get("steps") or [], ex, args.get("stop_after"))
    steps = load_all()
    fn = steps.get(name)
    if fn is None:
        raise UsageError(f"unknown node step {name!r}; known: {', '.join(sorted(steps))}")
    import inspect
    try:
        inspect.signature(fn).bind(ex, **args)
    except TypeError as e:      # the frontend sent arguments the step does not take
        raise UsageError(f"node step {name}: bad arguments: {e}") from None
    res = fn(ex, **args)
    protocol.check_facts(name, res.facts)
    return {"ok": True, **res.to_dict()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "node":
        print(json.dumps({"ok": False, "error": {"code": "UsageError",
                          "message": "usage: imgstor.pyz node STEP < args.json"}}))
        return 2
    ex: Executor = LocalExecutor()
    try:
        # the step modules first: a step started ahead (the frontend's Cluster.prepare)
        # loads them while it waits for its request
        from imgstor.remote import locks  # noqa: F401 - run_locked's
        from imgstor.remote.steps import load_all
        load_all()
        import inspect  # noqa: F401 - run_step binds the request's arguments with it
        data = sys.stdin.read()
        if not data.strip():
            # the frontend closed a step it had started ahead (Cluster.prepare) and no
            # longer wants: nothing runs
            raise UsageError(f"node step {argv[1]}: no request on stdin; nothing done")
        req = json.loads(data)
        ex = DryRunExecutor() if req.get("dry_run") else LocalExecutor()
        out = run_locked(argv[1], req.get("args") or {}, ex)
        rc = 0
    except ImgstorError as e:
        out, rc = {"ok": False, "error": e.to_wire()}, 1
    except Exception as e:  # a bug: keep the traceback for the frontend to show
        out = {"ok": False, "error": {"code": "StepError", "bug": True,
                                      "message": f"bug in node step {argv[1]}: {e!r}",
                                      "traceback": traceback.format_exc()}}
        rc = 70
    out["commands"] = ex.log
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return rc
