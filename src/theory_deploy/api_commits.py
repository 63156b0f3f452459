"""Write the pin bot's commits through GitHub's Git database API, so GitHub signs them (Verified).

`gitpr` builds every pin commit locally first: the rebase onto the latest base, the re-applied pins,
the pin-only guard. Pushing those commits with git would publish them unsigned, and a repository
whose protected branches require signed commits then refuses to merge the PR. So when the GitHub
client's token is a bot's (a GitHub App installation token; a workflow's GITHUB_TOKEN is one), each
local commit the remote lacks is re-made on GitHub, oldest first:

1. each file the commit changes is uploaded (POST /git/blobs, base64: the exact bytes); GitHub's
   blob sha must be the local one;
2. the commit's tree is built on its parent's (POST /git/trees with `base_tree`, the changed paths as
   entries, `sha: null` for a deleted one); GitHub's tree sha must be the local tree's, so the commit
   GitHub makes has exactly the content we built and checked (git names a tree by its content);
3. the commit itself (POST /git/commits) with the same message (and so the `Theory-Deploy-Bot: pin`
   trailer) and the re-made parent, and *no* author, committer or signature: only then does GitHub
   sign it. Its author is the token's bot account (for instance `github-actions[bot]`), its committer
   that account or GitHub itself; `gitpr`'s bot-commit check accepts both (see `_Commit.made_by`).

The branch is then moved by `GitHubClient.move_branch` (GraphQL `updateRefs` with `beforeOid`: a
compare-and-swap, so a concurrent writer is never overwritten), and `fetch_published` brings the
new tip into the clone and checks its tree once more, so the PR step and a later run see it.

Objects made for an attempt whose lease is then lost are left unreferenced on GitHub, which
garbage-collects them; a run killed between the commits and the ref update leaves the same, and
its re-run builds the commits again.
"""

from __future__ import annotations

from . import output
from .errors import GitError
from .github_client import GitHubClient
from .gitrun import QUIET_FETCH, Git

_SUBMODULE_MODE = "160000"


def replay_on_github(git: Git, github: GitHubClient, *, local_tip: str, on_remote: list[str]) -> str:
    """Re-make on GitHub every commit of `local_tip` not reachable from `on_remote` (commits GitHub
    has); return the sha GitHub gave the tip. Nothing is published yet: no ref moves."""
    commits = git.out("rev-list", "--reverse", "--topo-order", local_tip, "--not", *on_remote).split()
    made: dict[str, str] = {}
    unsigned: list[str] = []
    for sha in commits:
        parents = git.out("rev-list", "--parents", "--max-count=1", sha).split()[1:]
        if len(parents) != 1:
            raise GitError(
                f"bot commit {sha[:12]} has {len(parents)} parents; only a line of single-parent commits can be "
                "re-made through GitHub's API.",
                remedy="This is a bug in theory-deploy: the bot's commits are rebased into a line first.",
            )
        parent = parents[0]
        tree = github.create_tree(git.out("rev-parse", f"{parent}^{{tree}}"), _tree_entries(git, github, parent, sha))
        expected_tree = git.out("rev-parse", f"{sha}^{{tree}}")
        if tree != expected_tree:
            raise _mismatch(f"the tree of {sha[:12]}", expected_tree, tree)
        commit = github.create_commit(_message(git, sha), tree, [made.get(parent, parent)])
        if commit["tree"] != expected_tree:
            raise _mismatch(f"the commit re-made from {sha[:12]}", expected_tree, commit["tree"])
        made[sha] = commit["sha"]
        if not commit["verified"]:
            unsigned.append(f"{commit['sha'][:12]} ({commit['reason']})")
    if unsigned:
        output.progress(
            f"GitHub did not sign {len(unsigned)} bot commit(s): {', '.join(unsigned)}. Only a GitHub App's token "
            "(or a workflow's GITHUB_TOKEN) gets its API commits signed."
        )
    return made.get(local_tip, local_tip)


def fetch_published(git: Git, remote: str, branch: str, into_ref: str, *, tip: str, local_tip: str) -> None:
    """Fetch `branch` (just moved to `tip` through the API) into `into_ref`, and check that GitHub's
    commit holds exactly the tree built locally as `local_tip`."""
    fetched = git.run(
        *QUIET_FETCH,
        remote,
        f"+refs/heads/{branch}:{into_ref}",
        check=False,
        network=True,
    )
    if fetched.returncode != 0 or git.rev(tip) is None:
        raise GitError(
            f"{branch} was updated on GitHub to {tip[:12]}, but that commit could not be fetched from {remote}.",
            remedy="Re-run: the pins are on the branch, and the re-run reads them back (nothing is made twice).",
            details={"branch": branch, "commit": tip},
        )
    theirs, ours = git.out("rev-parse", f"{tip}^{{tree}}"), git.out("rev-parse", f"{local_tip}^{{tree}}")
    if theirs != ours:
        raise _mismatch(f"{branch}'s new commit {tip[:12]}", ours, theirs)


def _tree_entries(git: Git, github: GitHubClient, parent: str, sha: str) -> list[dict[str, object]]:
    """The tree entries turning `parent`'s tree into `sha`'s: each changed path, with its blob uploaded."""
    raw = git.run("diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", "--raw", parent, sha).stdout
    fields = raw.split("\0")
    entries: list[dict[str, object]] = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(":"):
            continue
        old_mode, new_mode, _old_sha, new_sha, status = meta[1:].split()
        if status.startswith("D"):
            entries.append({"path": path, "mode": old_mode, "type": "blob", "sha": None})
        elif new_mode == _SUBMODULE_MODE:
            entries.append({"path": path, "mode": new_mode, "type": "commit", "sha": new_sha})
        else:
            uploaded = github.create_blob(git.blob_bytes(new_sha))
            if uploaded != new_sha:
                raise _mismatch(f"{path} in {sha[:12]}", new_sha, uploaded)
            entries.append({"path": path, "mode": new_mode, "type": "blob", "sha": uploaded})
    return entries


def _message(git: Git, sha: str) -> str:
    """The commit's message exactly as stored (everything after the header's blank line)."""
    raw = git.run("cat-file", "commit", sha).stdout
    return raw.split("\n\n", 1)[1] if "\n\n" in raw else ""


def _mismatch(what: str, expected: str, got: str) -> GitError:
    return GitError(
        f"GitHub's copy of {what} differs from the one built here ({got[:12]}, expected {expected[:12]}); "
        "nothing was published.",
        remedy="Re-run; if it persists, report it (the API stored other content than was sent).",
        details={"expected": expected, "got": got},
    )
