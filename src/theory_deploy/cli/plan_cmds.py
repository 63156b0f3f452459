"""`processorctl plan`: the processors a change touches, as the matrices deploy.yml and pr-smoke.yml run."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .. import gha
from ..plan import DEFAULT_RUNNER, compute_plan, deploy_env
from ..refs import split_refs
from ..registry_file import find_repo_root


def cmd_plan(args: argparse.Namespace) -> dict[str, Any]:
    result = compute_plan(
        find_repo_root(),
        base=args.base,
        head=args.head,
        refs=split_refs(args.refs) or None,
        all_processors=args.all,
        platforms=args.platforms,
        runner=args.runner,
        arm_runner=args.arm_runner or None,
    )
    if args.env is not None:
        branch = args.branch or os.environ.get("GITHUB_HEAD_REF") or os.environ.get("GITHUB_REF_NAME")
        result["env"] = deploy_env(args.env or None, branch)
    if args.github_output:
        _write_github_output(result)
    return result


def _write_github_output(result: dict[str, Any]) -> None:
    """Step outputs for `fromJSON(...)` in a workflow's `strategy.matrix`, plus booleans for `if:`."""
    compact = {"separators": (",", ":")}
    gha.set_output("deploy-matrix", json.dumps(result["deploy_matrix"], **compact))  # type: ignore[arg-type]
    gha.set_output("build-matrix", json.dumps(result["build_matrix"], **compact))  # type: ignore[arg-type]
    gha.set_output("build-processors-matrix", json.dumps(result["build_processors_matrix"], **compact))  # type: ignore[arg-type]
    gha.set_output("deploys", json.dumps(result["deploys"]))
    gha.set_output("builds", json.dumps(result["builds"]))
    gha.set_output("has-deploys", "true" if result["deploys"] else "false")
    gha.set_output("has-builds", "true" if result["build_matrix"]["include"] else "false")
    gha.set_output("pin-only", "true" if result["pin_only"] else "false")
    if "env" in result:
        gha.set_output("env", result["env"])
    rows = [
        [row["ref"], row["platform"], row["runner"], "QEMU" if row["qemu"] else "native"]
        for row in result["build_matrix"]["include"]
    ]
    summary = f"### Plan\n\n{result['reason']}.\n\n"
    if rows:
        summary += gha.markdown_table(["processor", "platform", "runner", "arm64 via"], rows) + "\n"
    summary += f"Deploy: {', '.join(result['deploys']) or 'nothing'}\n"
    gha.add_summary(summary)


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from .framework import add_verb

    plan = add_verb(
        subparsers,
        parent,
        "plan",
        cmd_plan,
        "list the processors whose files changed since --base (all when runtime/ or theory-deploy changed); "
        "changes to pin lines only build nothing",
    )
    pick = plan.add_mutually_exclusive_group(required=True)
    pick.add_argument(
        "--base",
        help="git revision to compare HEAD with (its merge base with HEAD is used); "
        "all zeros (a new branch) means all processors",
    )
    pick.add_argument("--refs", help="plan exactly these processors (comma/space separated refs)")
    pick.add_argument("--all", action="store_true", help="plan every processor")
    plan.add_argument("--head", default="HEAD", help="revision to compare (default HEAD)")
    plan.add_argument("--platforms", help="only these platforms in the build matrix, e.g. linux/amd64")
    plan.add_argument("--runner", default=DEFAULT_RUNNER, help=f"runs-on label for builds (default {DEFAULT_RUNNER})")
    plan.add_argument(
        "--arm-runner",
        default="",
        help="runs-on label of a native arm64 runner; without one arm64 builds under QEMU",
    )
    plan.add_argument(
        "--env",
        nargs="?",
        const="",
        default=None,
        help="also resolve the environment: the one given, or by branch (main, staging, else dev)",
    )
    plan.add_argument("--branch", help="branch for --env (default: GITHUB_HEAD_REF or GITHUB_REF_NAME)")
    plan.add_argument(
        "--github-output",
        action="store_true",
        help="also write the matrices to $GITHUB_OUTPUT and a table to the step summary",
    )
