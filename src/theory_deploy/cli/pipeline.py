"""`theory-deploy`: the whole pipeline in one command, and the error catalogue."""

from __future__ import annotations

import argparse
from typing import Any

from .. import errors
from ..pipeline import STAGES, Pipeline, PipelineRequest, parse_stages
from ..refs import ProcessorRef, parse_env, parse_platforms
from ..targets import TARGET_KINDS
from ..targets.base import parse_inputs
from . import framework
from .image_cmds import parse_build_args


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    inputs = parse_inputs(args.inputs_json, args.inputs_file) if (args.inputs_json or args.inputs_file) else None
    request = PipelineRequest(
        ref=ProcessorRef.parse(args.ref),
        env=parse_env(args.env),
        target=args.target,
        mode=args.mode,
        platforms=list(parse_platforms(args.platforms)) if args.platforms else None,
        build_args=parse_build_args(args.build_arg),
        stages=parse_stages(args.stages),
        inputs=inputs,
        timeout_s=args.timeout,
    )
    return Pipeline(request).run()


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
    run.add_argument("--ref", required=True, help="processor ref, e.g. llm/litellm@1")
    run.add_argument("--env", required=True, help="dev, staging or main")
    run.add_argument("--target", choices=TARGET_KINDS, default="local", help="where to run it (default: local)")
    run.add_argument("--mode", choices=["mock", "real"], default="mock")
    run.add_argument("--platforms", help="e.g. linux/amd64,linux/arm64 (default: build.platforms)")
    run.add_argument("--build-arg", action="append", metavar="KEY=VALUE", help="docker build argument (repeatable)")
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    run.add_argument("--inputs-json", help="inputs for the run stage (default: the inputs schema's first example)")
    run.add_argument("--inputs-file", help="path of a JSON file holding the inputs")
    run.add_argument("--timeout", type=float, help="run stage deadline in seconds (default: runtime.timeout_s)")
    framework.add_verb(subparsers, parent, "errors", cmd_errors, "list every ERR_* code, its exit code and remedy")
    return parser


main = framework.main_for(parser)

if __name__ == "__main__":
    main()
