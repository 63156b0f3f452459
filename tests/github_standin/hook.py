"""The stand-in's `pre-receive` hook: GitHub's branch protection, enforced on pushes over smart HTTP.

Installed by `GitHubStandIn.start()` as `<bare repo>/hooks/pre-receive` (a two-line shell script
that runs this file with the test's Python). `git http-backend` -> `git receive-pack` runs it with
the environment the stand-in gave the CGI process; `GITHUB_STANDIN_STATE` names the stand-in's
state folder, which holds `protection.json` (written by `protect()`) and `pushes.jsonl` (every ref
update this hook saw, accepted or refused, for tests to read).

A push that does not come through the stand-in's HTTP server (no `GITHUB_STANDIN_STATE`: a test
writing straight into the bare repository on disk, as the repository's admin would) is not checked.

Refusals print what GitHub prints (git shows it prefixed with `remote: `) and exit 1, which makes
git refuse the whole push, as a pre-receive hook does:

    error: GH006: Protected branch update failed for refs/heads/main.
    error: Changes must be made through a pull request.

Kept free of imports from the test tree: it runs as a separate process under `git receive-pack`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ZERO = "0" * 40


def branch_pattern(pattern: str) -> re.Pattern[str]:
    """GitHub's branch-protection patterns: Ruby's `File.fnmatch` with FNM_PATHNAME, as GitHub documents.

    `*` and `?` stop at `/`. Only `**/` at the start of a segment crosses it (zero or more whole
    segments: `qa/**/*` covers `qa/x` and `qa/a/b`); any other `**` is a `*` (`qa/**` covers `qa/x`
    but not `qa/a/b`), as in Ruby's dir.c."""
    out = ""
    i = 0
    while i < len(pattern):
        if (i == 0 or pattern[i - 1] == "/") and pattern.startswith("**/", i):
            out += "(?:[^/]*/)*"
            i += 3
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def rule_for(rules: dict[str, dict[str, Any]], branch: str) -> dict[str, Any] | None:
    """The protection rule covering `branch`: an exact name wins over a pattern, as on GitHub."""
    if branch in rules:
        return rules[branch]
    for pattern, rule in rules.items():
        if branch_pattern(pattern).fullmatch(branch):
            return rule
    return None


def refusal(rule: dict[str, Any], old: str, new: str, is_ancestor: Any) -> str | None:
    """Why GitHub would refuse this update of a protected branch, or None."""
    if new == ZERO:
        return None if rule.get("allow_deletions") else "Cannot delete this branch"
    if old != ZERO and not is_ancestor(old, new) and not rule.get("allow_force_pushes"):
        return "Cannot force-push to this branch"
    if rule.get("require_pull_request", True):
        return "Changes must be made through a pull request."
    return None


def main() -> int:
    state = os.environ.get("GITHUB_STANDIN_STATE")
    if not state:
        return 0  # a direct write on disk by the test (the admin), not a push through the stand-in
    rules = json.loads((Path(state) / "protection.json").read_text(encoding="utf-8"))
    user = os.environ.get("REMOTE_USER", "")

    def is_ancestor(old: str, new: str) -> bool:
        return subprocess.run(["git", "merge-base", "--is-ancestor", old, new], check=False).returncode == 0

    refused = False
    log = []
    for line in sys.stdin:
        old, new, ref = line.split()
        reason = None
        if ref.startswith("refs/heads/"):
            rule = rule_for(rules, ref.removeprefix("refs/heads/"))
            if rule is not None:
                reason = refusal(rule, old, new, is_ancestor)
        if reason:
            refused = True
            print(f"error: GH006: Protected branch update failed for {ref}.", file=sys.stderr)
            print(f"error: {reason}", file=sys.stderr)
        log.append({"ref": ref, "old": old, "new": new, "user": user, "refused": reason})
    with open(Path(state) / "pushes.jsonl", "a", encoding="utf-8") as fh:
        for entry in log:
            if refused and not entry["refused"]:
                entry["refused"] = "refused with the rest of the push"  # a pre-receive hook is all or nothing
            fh.write(json.dumps(entry) + "\n")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
