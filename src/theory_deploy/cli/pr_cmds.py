"""`processorctl pr`: put the pins written in the work tree up for review as one bot PR per processor."""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

from .. import gitpr, output, pin
from ..errors import PlatformMismatchError
from ..oci import RegistryClients
from ..refs import ProcessorRef
from ..registry_file import load_processor
from .framework import add_verb


def _pins_at(repo_root: Any, rev: str, relative: str) -> dict[str, str | None]:
    proc = subprocess.run(
        ["git", "show", f"{rev}:{relative}"], cwd=repo_root, capture_output=True, text=True, timeout=30, check=False
    )
    return gitpr.pins_in_text(proc.stdout if proc.returncode == 0 else None)


def verify_proposed_pins(changes: list[gitpr.PinChange]) -> None:
    """Ask the registry about every pin the PR would propose, exactly as `pin` does: a hand-edited
    registry.yaml must not get a digest the registry lacks, or one for the wrong platform, into review."""
    clients = RegistryClients()
    try:
        for change in changes:
            for platform, (_old, new) in change.platforms.items():
                if new is None:
                    continue
                where = f"{change.registry_path} image.platforms.{platform}"
                candidate = pin.verify_pin_candidate(
                    new, platform, clients, expected_repository=change.repository, where=where
                )
                if candidate.pin != new:
                    raise PlatformMismatchError(
                        f"{where}: {new} is a multi-platform index, not the linux/{platform} manifest "
                        f"({candidate.pin}).",
                        remedy=f"Pin the manifest: `processorctl pin --ref {change.ref} --platform {platform} --oci {new}`.",
                    )
                output.progress(f"verified {platform}: {new} is a linux/{platform} image manifest")
    finally:
        clients.close()


def cmd_pr(args: argparse.Namespace) -> dict[str, Any]:
    changes: list[gitpr.PinChange] = []
    repo_root = None
    for text in args.ref:
        processor = load_processor(ProcessorRef.parse(text))
        repo_root = processor.repo_root
        relative = processor.path.resolve().relative_to(processor.repo_root.resolve()).as_posix()
        # "old" is only for the commit message and PR body; what really changes is decided against
        # the freshly fetched base inside publish_pin_pr, where the pins are re-applied.
        before = _pins_at(processor.repo_root, f"{args.remote}/{args.base}", relative)
        platforms: dict[str, tuple[str | None, str | None]] = {
            platform: (before.get(platform), pin)
            for platform, pin in processor.spec.pins().items()
            if pin is not None and before.get(platform) != pin
        }
        if platforms:
            changes.append(gitpr.PinChange(str(processor.ref), relative, processor.spec.image.repository, platforms))
    if not changes or repo_root is None:
        return {"processors": [], "summary": "no pins differ from the base branch: nothing to commit, no PR"}
    verify_proposed_pins(changes)
    github = None if args.no_pr else gitpr.GitHubClient.from_env()
    result = gitpr.publish_pin_pr(
        repo_root,
        changes,
        remote=args.remote,
        base_branch=args.base,
        github=github,
        reapply=gitpr.pin_reapplier(changes),
    )
    urls = [p["pr"]["url"] for p in result["processors"] if p.get("pr")]
    result["pr_url"] = urls[0] if len(urls) == 1 else None
    result["pr_urls"] = urls
    return result


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    pr = add_verb(
        subparsers,
        parent,
        "pr",
        cmd_pr,
        "commit the work tree's pins to theory-deploy/pin/<slug> and open or update that one PR (per processor)",
    )
    pr.add_argument("--ref", required=True, action="append", help="processor ref (repeatable)")
    pr.add_argument("--base", required=True, help="branch the PR targets, e.g. main")
    pr.add_argument("--remote", default="origin", help="git remote to push to (default: origin)")
    pr.add_argument("--no-pr", action="store_true", help="push the bot branch but open no PR (no GitHub token needed)")
