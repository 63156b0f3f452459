"""The verbs shared by `localctl` and `modalctl`: one parser builder, so both tools take exactly the
same verbs and flags (README, "The CLI"), and differ only in the target behind them."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
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


def cmd_start(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    image = target.image_to_deploy(app, args.oci)
    return target.start(app, image, dry_run=args.dry_run)


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
    return target.sync_secrets(
        app, check=args.check or args.dry_run, fail_on_missing=args.fail_on_missing, dry_run=args.dry_run
    )


def cmd_verify_digest(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    return target.verify_digest(app, args.oci)


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    target, app = _app(args)
    inputs = parse_inputs(args.inputs_json, args.inputs_file)
    timeout = args.timeout or float(app.processor.spec.runtime.timeout_s)
    return target.run(
        app,
        mode=args.mode,
        inputs=inputs,
        timeout_s=timeout,
        execution_id=args.execution_id,
        stream_tokens=not args.json,
    )


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

    verb("name", cmd_name, "print the app name for the environment")

    start = verb("start", cmd_start, "deploy the pinned digest (or a verified --oci digest) as the environment's app")
    start.add_argument(
        "--oci", help="deploy this digest ref instead of the pin (must be the right platform's manifest)"
    )
    start.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")

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

    verify = verb(
        "verify-digest", cmd_verify_digest, "prove the running digest equals the pin (or --oci); fails closed"
    )
    verify.add_argument("--oci", help="expect this digest ref instead of the pin")

    run = verb("run", cmd_run, "run the processor once over theory.run.v1 and print the envelope")
    run.add_argument("--mode", choices=["mock", "real"], default="mock")
    run.add_argument("--inputs-json", help="inputs as a JSON object")
    run.add_argument("--inputs-file", help="path of a JSON file holding the inputs")
    run.add_argument("--timeout", type=float, help="overall deadline in seconds (default: runtime.timeout_s)")
    run.add_argument("--execution-id", help="execution id to send (default: random)")

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
