"""The verbs shared by `localctl` and `modalctl`: one parser builder, so both tools take exactly the
same verbs and flags (README, "The CLI"), and differ only in the target behind them."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from .. import output
from ..deploy_lock import DEFAULT_TTL_S, DEFAULT_WAIT_S, HOLDER_ENV, DeployLock, Held, check_holder, iso
from ..errors import TheoryDeployError, UsageError
from ..refs import ProcessorRef, parse_env
from ..registry_file import load_processor
from ..targets import get_target
from ..targets.base import AppContext, Target, parse_inputs, read_branches
from . import framework


def _app(args: argparse.Namespace) -> tuple[Target, AppContext]:
    ref = ProcessorRef.parse(args.ref)
    env = parse_env(args.env)
    processor = load_processor(ref)
    return get_target(args.target_kind), AppContext.for_processor(processor, env)


def cmd_name(args: argparse.Namespace) -> dict[str, Any]:
    ref = ProcessorRef.parse(args.ref)
    env = parse_env(args.env)
    from ..refs import app_name, resolve_dev_identity

    identity = resolve_dev_identity() if env == "dev" else None
    name = app_name(ref, env, identity)
    result: dict[str, Any] = {"ref": str(ref), "env": env, "app": name, "summary": name}
    if identity:
        result["branch"], result["user"] = identity.branch, identity.user
    return result


def _lock_holder(args: argparse.Namespace, flag: str = "--lock") -> str | None:
    """--lock HOLDER, else THEORY_LOCK_HOLDER, else None (no lock)."""
    given = getattr(args, "lock", None)
    if given is None:
        given = os.environ.get(HOLDER_ENV) or None
        flag = HOLDER_ENV
    return check_holder(given, flag) if given is not None else None


def _with_lock(
    args: argparse.Namespace, target: Target, app: AppContext, act: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `act` holding the app's deploy lock when --lock (or THEORY_LOCK_HOLDER) names a holder:
    take it or continue it (same holder: the lease is renewed), waiting up to --lock-wait while another
    holder has it; with --unlock, release it when the verb ends, whether it succeeded or failed. A dry
    run (--dry-run, --check) changes nothing, so it neither takes nor releases the lock."""
    holder = _lock_holder(args)
    if args.unlock and holder is None:
        raise UsageError(
            "--unlock releases the deploy lock --lock takes: give --lock HOLDER (or set THEORY_LOCK_HOLDER).",
        )
    if args.lock_wait < 0 or args.lock_ttl <= 0:
        raise UsageError("--lock-wait must be 0 or more seconds and --lock-ttl more than 0.")
    if holder is None or getattr(args, "dry_run", False) or getattr(args, "check", False):
        return act()
    lock = target.deploy_lock(app)
    held = lock.hold(holder, wait_s=args.lock_wait, ttl_s=args.lock_ttl)
    try:
        result = act()
    except TheoryDeployError as err:
        if args.unlock:
            _release(lock, held)
        err.details = {**err.details, "lock": held.to_json()}
        raise
    except BaseException:
        if args.unlock:
            _release(lock, held)
        raise
    if args.unlock:
        _release(lock, held)
    result["lock"] = held.to_json()
    if isinstance(result.get("summary"), str):
        state = "released" if held.released else f"held until {iso(held.record.expires_at)}"
        result["summary"] += f"\n  deploy lock: {held.holder} ({state}; waited {held.waited_s:.1f}s)"
    return result


def _release(lock: DeployLock, held: Held) -> None:
    try:
        outcome = lock.release(held.holder)
    except TheoryDeployError as err:  # never hide the verb's own outcome behind a failed release
        output.progress(f"could not release the deploy lock of {lock.app}: {err.message}")
        return
    held.released = bool(outcome.get("released"))
    if held.released:
        held.released_at = time.time()


def cmd_start(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)

    def act() -> dict[str, Any]:
        image = target.image_to_deploy(app, args.oci)
        return target.start(app, image, dry_run=args.dry_run)

    return _with_lock(args, target, app, act)


def cmd_stop(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    return target.stop(app)


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    return target.status(app)


def cmd_logs(args: argparse.Namespace) -> dict[str, Any]:
    if args.follow and args.json:
        # --json promises exactly one JSON object; a stream that never ends cannot be one.
        raise UsageError("logs: --follow streams lines and cannot be combined with --json; drop one of them.")
    target, app = _app(args)
    return target.logs(app, follow=args.follow, tail=args.tail)


def cmd_sync_secrets(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    return _with_lock(
        args,
        target,
        app,
        lambda: target.sync_secrets(
            app, check=args.check or args.dry_run, fail_on_missing=args.fail_on_missing, dry_run=args.dry_run
        ),
    )


def cmd_verify_digest(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    return _with_lock(args, target, app, lambda: target.verify_digest(app, args.oci))


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    inputs = parse_inputs(args.inputs_json, args.inputs_file)
    timeout = args.timeout or float(app.processor.spec.runtime.timeout_s)
    return _with_lock(
        args,
        target,
        app,
        lambda: target.run(
            app,
            mode=args.mode,
            inputs=inputs,
            timeout_s=timeout,
            execution_id=args.execution_id,
            stream_tokens=not args.json,
        ),
    )


def cmd_lock(args: argparse.Namespace) -> dict[str, Any]:
    """Inspect the app's deploy lock (--status, the default), release it as --holder (--release), or
    remove whatever lock there is (--break: for a stale lock whose run is gone)."""
    target, app = _app(args)
    if args.holder is not None and not args.release:
        raise UsageError("lock: --holder names who releases: use it with --release.")
    lock = target.deploy_lock(app)
    base: dict[str, Any] = {"app": app.name, "env": app.env, "target": target.kind, "store": lock.store.where}
    if args.release:
        holder = args.holder if args.holder is not None else os.environ.get(HOLDER_ENV)
        if not holder:
            raise UsageError("lock --release: give --holder HOLDER (or set THEORY_LOCK_HOLDER).")
        outcome = lock.release(check_holder(holder, "--holder"))
        said = "released" if outcome["released"] else f"not released: {outcome.get('note')}"
        return {
            **base,
            "action": "release",
            **outcome,
            "summary": f"deploy lock of {app.name} ({target.kind}, {app.env}): {said}.",
        }
    if args.break_:
        outcome = lock.break_()
        previous = outcome.get("previous")
        said = (
            f"removed; it was held by {previous['holder']} until {iso(previous['expires_at'])}"
            if previous
            else "there was no lock"
        )
        return {**base, "action": "break", **outcome, "summary": f"deploy lock of {app.name}: {said}."}
    record = lock.status()
    if record is None:
        summary = f"deploy lock of {app.name} ({target.kind}, {app.env}): free."
    else:
        state = "expired (stale: the next holder takes it over)" if record.expired() else "held"
        summary = f"deploy lock of {app.name} ({target.kind}, {app.env}): {state} by {record.describe()}."
    return {
        **base,
        "action": "status",
        "held": record is not None and not record.expired(),
        "lock": record.to_json() if record else None,
        "expired": record.expired() if record else None,
        "summary": summary,
    }


def cmd_rollback(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    return target.rollback(app, args.to, dry_run=args.dry_run)


def cmd_cleanup_dev(args: argparse.Namespace) -> dict[str, Any]:
    branches = read_branches(args.existing_branches_file)
    return get_target(args.target_kind).cleanup_dev(branches, dry_run=args.dry_run)


def build_parser(prog: str, target_kind: str, description: str) -> argparse.ArgumentParser:
    parser, subparsers, common = framework.new_tool(prog, description)
    common.set_defaults(target_kind=target_kind)
    # The per-app verbs take --ref/--env on top of the common flags; cleanup-dev takes neither.
    parent = argparse.ArgumentParser(add_help=False, parents=[common])
    parent.add_argument("--ref", required=True, help="processor ref, e.g. llm/litellm@1")
    parent.add_argument("--env", required=True, help="dev, staging or main")

    def verb(name: str, handler: framework.Verb, help_text: str) -> argparse.ArgumentParser:
        return framework.add_verb(subparsers, parent, name, handler, help_text)

    def lock_flags(sub: argparse.ArgumentParser) -> None:
        group = sub.add_argument_group("deploy lock (one run at a time between start and verify)")
        group.add_argument(
            "--lock",
            metavar="HOLDER",
            help="take (or continue, for the same HOLDER) the app's deploy lock before acting; wait while "
            f"another holder has it (default: ${HOLDER_ENV}, if set)",
        )
        group.add_argument(
            "--lock-wait",
            type=float,
            default=DEFAULT_WAIT_S,
            metavar="SECONDS",
            help=f"how long to wait for another holder (default {DEFAULT_WAIT_S:g}), then ERR_DEPLOY_LOCKED",
        )
        group.add_argument(
            "--lock-ttl",
            type=float,
            default=DEFAULT_TTL_S,
            metavar="SECONDS",
            help=f"the lease: the lock expires this long after it was last taken or renewed "
            f"(default {DEFAULT_TTL_S:g})",
        )
        group.add_argument(
            "--unlock",
            action="store_true",
            help="release the lock when this command ends, success or failure (needs --lock)",
        )

    verb("name", cmd_name, "print the app name for the environment")

    start = verb("start", cmd_start, "deploy the pinned digest (or a verified --oci digest) as the environment's app")
    start.add_argument(
        "--oci", help="deploy this digest ref instead of the pin (must be the right platform's manifest)"
    )
    start.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    lock_flags(start)

    verb("stop", cmd_stop, "stop the app")
    verb("status", cmd_status, "app name, state, version, digest, URL and health")

    logs = verb("logs", cmd_logs, "print the app's logs")
    logs.add_argument("--follow", action="store_true", help="keep streaming new lines")
    logs.add_argument("--tail", type=int, default=200, help="lines of history to show (default 200)")

    sync = verb(
        "sync-secrets", cmd_sync_secrets, "create or update the processor's secrets from this process's environment"
    )
    sync.add_argument(
        "--fail-on-missing", action="store_true", help="fail with ERR_MISSING_SECRET if a required secret has no value"
    )
    sync.add_argument("--check", action="store_true", help="change nothing; say what would be created or updated")
    sync.add_argument("--dry-run", action="store_true", help="same as --check, and print the plan")
    lock_flags(sync)

    verify = verb(
        "verify-digest", cmd_verify_digest, "prove the running digest equals the pin (or --oci); fails closed"
    )
    verify.add_argument("--oci", help="expect this digest ref instead of the pin")
    lock_flags(verify)

    run = verb("run", cmd_run, "run the processor once over theory.run.v1 and print the envelope")
    run.add_argument("--mode", choices=["mock", "real"], default="mock")
    run.add_argument("--inputs-json", help="inputs as a JSON object")
    run.add_argument("--inputs-file", help="path of a JSON file holding the inputs")
    run.add_argument("--timeout", type=float, help="overall deadline in seconds (default: runtime.timeout_s)")
    run.add_argument("--execution-id", help="execution id to send (default: random)")
    lock_flags(run)

    lock = verb("lock", cmd_lock, "show, release or break the app's deploy lock (start → verify of one run at a time)")
    action = lock.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="who holds it and until when (the default)")
    action.add_argument("--release", action="store_true", help="release it if --holder holds it (else a no-op)")
    action.add_argument(
        "--break",
        dest="break_",
        action="store_true",
        help="remove whatever lock there is (a stale one whose run is gone); prints who held it",
    )
    lock.add_argument("--holder", help=f"with --release: the holder releasing it (default: ${HOLDER_ENV})")

    rollback = verb("rollback", cmd_rollback, "redeploy a digest that registry.yaml pinned earlier")
    rollback.add_argument("--to", required=True, help="a digest pinned before, or a git revision whose pin to deploy")
    rollback.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")

    cleanup = framework.add_verb(
        subparsers,
        common,
        "cleanup-dev",
        cmd_cleanup_dev,
        "stop the dev apps whose branch (recorded at deploy time) no longer exists; only `dev` is touched",
    )
    cleanup.add_argument(
        "--existing-branches-file",
        required=True,
        metavar="FILE",
        help="the branches that exist, one name per line (`-`: stdin), e.g. from "
        "`git ls-remote --heads origin | sed 's#.*refs/heads/##'`; an empty list is refused",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="say what would be stopped and stop nothing")
    return parser
