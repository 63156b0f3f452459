"""`processorctl pr`: put the pins written in the work tree up for review as one bot PR per processor."""

from __future__ import annotations

import argparse
from typing import Any

from .. import gitpr, output, pin
from ..errors import PlatformMismatchError, UsageError
from ..github_client import GitHubClient
from ..gitrun import Git, not_an_option
from ..oci import RegistryClients
from ..refs import ProcessorRef
from ..registry_file import LoadedProcessor, load_processor
from ..registry_pins import pins_at
from .framework import add_verb


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


def propose_pins(
    processors: list[LoadedProcessor], *, base: str, remote: str = "origin", open_pr: bool = True
) -> dict[str, Any]:
    """Commit the work tree's pins of `processors` to their bot branches and open or update one PR
    each (only the branch, with `open_pr` False). Pins equal to the base branch's propose nothing."""
    not_an_option(remote, "remote", UsageError)
    not_an_option(base, "base branch", UsageError)
    changes: list[gitpr.PinChange] = []
    repo_root = None
    for processor in processors:
        repo_root = processor.repo_root
        relative = processor.path.resolve().relative_to(processor.repo_root.resolve()).as_posix()
        # "old" is only for the commit message and PR body; what really changes is decided against
        # the freshly fetched base inside publish_pin_pr, where the pins are re-applied.
        before = pins_at(Git(processor.repo_root, timeout=30), f"{remote}/{base}", relative) or {}
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
    github = GitHubClient.from_env() if open_pr else None
    result = gitpr.publish_pin_pr(
        repo_root,
        changes,
        remote=remote,
        base_branch=base,
        github=github,
        reapply=gitpr.pin_reapplier(changes),
    )
    urls = [p["pr"]["url"] for p in result["processors"] if p.get("pr")]
    result["pr_url"] = urls[0] if len(urls) == 1 else None
    result["pr_urls"] = urls
    return result


def cmd_pr(args: argparse.Namespace) -> dict[str, Any]:
    processors = [load_processor(ProcessorRef.parse(text)) for text in args.ref]
    return propose_pins(processors, base=args.base, remote=args.remote, open_pr=not args.no_pr)


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
