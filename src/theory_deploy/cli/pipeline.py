"""`theory-deploy`: the whole pipeline in one command, and the error catalogue."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .. import errors
from ..deploy_lock import DEFAULT_TTL_S, DEFAULT_WAIT_S, HOLDER_ENV, check_holder
from ..pipeline import STAGES, Pipeline, PipelineRequest, parse_stages, resolve_stages
from ..refs import ProcessorRef, parse_env, parse_platforms, parse_repository, split_refs
from ..targets import TARGET_KINDS
from ..targets.base import parse_inputs
from . import framework
from .image_cmds import NO_CACHE_HELP, parse_build_args
from .init_cmds import add_init_verb


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    inputs = parse_inputs(args.inputs_json, args.inputs_file) if (args.inputs_json or args.inputs_file) else None
    env = parse_env(args.env)
    mode = None if args.mode == "none" else args.mode
    requested = parse_stages(args.stages)
    request = PipelineRequest(
        refs=[ProcessorRef.parse(item) for item in split_refs(",".join(args.ref))],
        env=env,
        target=args.target,
        mode=mode,
        stages=resolve_stages(requested, env=env, mode=mode, open_pr=False),
        platforms=list(parse_platforms(args.platforms)) if args.platforms else None,
        build_args=parse_build_args(args.build_arg),
        no_cache=args.no_cache,
        repository=str(parse_repository(args.repository)) if args.repository else None,
        from_push=Path(args.from_push) if args.from_push else None,
        pr_base=args.pr_base,
        open_pr=not args.no_pr,
        inputs=inputs,
        timeout_s=args.timeout,
        keep_going=args.keep_going,
        lock_holder=_lock_holder(args),
        release_lock=not args.keep_lock,
        lock_wait_s=args.lock_wait,
        lock_ttl_s=args.lock_ttl,
    )
    if args.keep_lock and request.lock_holder is None:
        raise errors.UsageError(
            "--keep-lock keeps the deploy lock for a later job, which must continue it as the same holder: "
            "give --lock HOLDER (or set THEORY_LOCK_HOLDER)."
        )
    return Pipeline(request).run()


def _lock_holder(args: argparse.Namespace) -> str | None:
    """--lock HOLDER, else THEORY_LOCK_HOLDER, else None (the run uses a holder of its own)."""
    if args.lock is not None:
        return check_holder(args.lock, "--lock")
    given = os.environ.get(HOLDER_ENV)
    return check_holder(given, HOLDER_ENV) if given else None


def cmd_errors(args: argparse.Namespace) -> dict[str, Any]:
    table = errors.markdown_table()
    catalogue = [
        {"code": c.code, "exit_code": c.exit_code, "remedy": c.remedy}
        for c in sorted(errors.ALL_ERRORS, key=lambda c: c.exit_code)
    ]
    return {"errors": catalogue, "summary": table.rstrip()}


def parser() -> argparse.ArgumentParser:
    parser, subparsers, parent = framework.new_tool(
        "theory-deploy", "Source to running, pinned by digest: the whole pipeline on the local target or Modal."
    )
    run = framework.add_verb(
        subparsers,
        parent,
        "pipeline",
        cmd_pipeline,
        "build → push → pin → start → sync-secrets → verify → run, stopping at the first failure",
    )
    run.add_argument(
        "--ref",
        required=True,
        action="append",
        help="processor ref, e.g. llm/litellm@1 (repeatable, or comma separated)",
    )
    run.add_argument("--env", required=True, help="dev, staging or main")
    run.add_argument("--target", choices=TARGET_KINDS, default="local", help="where to run it (default: local)")
    run.add_argument("--mode", choices=["mock", "real", "none"], default="mock", help="run mode; none: no run stage")
    run.add_argument("--platforms", help="e.g. linux/amd64,linux/arm64 (default: build.platforms)")
    run.add_argument("--build-arg", action="append", metavar="KEY=VALUE", help="docker build argument (repeatable)")
    run.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)
    run.add_argument(
        "--stages",
        help=f"comma-separated subset of {','.join(STAGES)} (default: all, which in staging and main is "
        "start,sync-secrets,verify,run: promotion never rebuilds)",
    )
    run.add_argument("--repository", help="push and pin to this repository (moves image.repository in the work tree)")
    run.add_argument("--from-push", help="a `processorctl push --json` file, or a folder of push-<slug>.json: no build")
    run.add_argument("--pr-base", help="branch the pin PR targets (stage pr)")
    run.add_argument("--no-pr", action="store_true", help="stage pr pushes the bot branch but opens no PR")
    run.add_argument("--keep-going", action="store_true", help="with several refs, go on after a failure")
    run.add_argument("--inputs-json", help="inputs for the run stage (default: the inputs schema's first example)")
    run.add_argument("--inputs-file", help="path of a JSON file holding the inputs")
    run.add_argument("--timeout", type=float, help="run stage deadline in seconds (default: runtime.timeout_s)")
    run.add_argument(
        "--lock",
        metavar="HOLDER",
        help="hold the app's deploy lock as HOLDER from the first target stage to the last (default: "
        f"${HOLDER_ENV}; else a holder of this run's own). Continue it in a later job with the same HOLDER",
    )
    run.add_argument(
        "--keep-lock",
        action="store_true",
        help="do not release the lock after the last target stage (a later job continues it; needs --lock)",
    )
    run.add_argument(
        "--lock-wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait while another run holds the lock (default {DEFAULT_WAIT_S:g})",
    )
    run.add_argument(
        "--lock-ttl",
        type=float,
        default=DEFAULT_TTL_S,
        metavar="SECONDS",
        help=f"the lock's lease, renewed before each target stage (default {DEFAULT_TTL_S:g})",
    )
    framework.add_verb(subparsers, parent, "errors", cmd_errors, "list every ERR_* code, its exit code and remedy")
    add_init_verb(subparsers, parent)
    return parser


main = framework.main_for(parser)

if __name__ == "__main__":
    main()
