"""The stand-in's Git database: GitHub's REST blobs, trees, commits and refs, GraphQL `updateRefs`,
and the commit signature verification GitHub reports.

Each handler takes the stand-in's state, the caller's token and the JSON body, and returns
(status, payload). They run under the stand-in's lock; objects are written into the served bare
repository with git itself, so a later fetch over smart HTTP brings exactly those commits.

Sources (docs.github.com): REST "Git database" (git/blobs, git/trees, git/commits, git/refs),
"Commits" (GET /repos/{o}/{r}/commits/{ref}, its `verification` object), GraphQL reference "Git"
(`updateRefs`), and "About commit signature verification" ("Signature verification for bots").

Signing (documented, and where the docs are silent, assumed)
------------------------------------------------------------
- Documented: a commit a GitHub App (a bot) makes through the REST or GraphQL API with no custom
  author, committer or signature is signed by GitHub and reported `verified: true, reason: "valid"`.
  A commit that came by `git push` is verified only if it carried a signature from a key GitHub
  knows; the stand-in knows none, so a pushed commit is `unsigned`, or `unknown_key` when it has a
  `gpgsig` header.
- Assumption: a workflow's GITHUB_TOKEN counts as a bot (it is the installation token of the GitHub
  Actions app; the docs only say "GitHub App"; GitHub's own examples of verified commits from Actions
  rely on it). The stand-in tells bot tokens by GitHub's documented prefix `ghs_` (installation
  access token; the stateless `ghs_<app id>_<jwt>` format rolled out from April 2026 keeps it),
  which the tokens it mints for the App also carry. Any other token (`ghp_`,
  `github_pat_`: a person) gets unsigned API commits authored by that person.
- Assumption: a bot's signed commit has the bot as author (`github-actions[bot]`
  <41898282+github-actions[bot]@users.noreply.github.com> for a GITHUB_TOKEN, `<slug>[bot]`
  <<app id>+<slug>[bot]@users.noreply.github.com> for an App's token) and GitHub as committer
  (`GitHub <noreply@github.com>`, as on commits GitHub signs with its web-flow key). The signature
  is a stand-in `gpgsig` header (not a real OpenPGP signature); `verification` is true only for
  commits the stand-in signed this way.

Refusals (422 unless said)
--------------------------
- blobs: no `content`, or an `encoding` other than utf-8/base64 (documented values).
- trees: `tree` not a list; a `base_tree` that is no tree; an entry without path, with a bad mode
  (documented: 100644, 100755, 040000, 160000, 120000) or type (blob, tree, commit), with both or
  neither of `sha` and `content` (`sha: null` deletes); a `sha` that is no object of that type;
  deleting a path that does not exist (documented: "Returns an error if you try to delete a file
  that does not exist"). Not emulated: `type: tree` entries (422 here, GitHub accepts them).
- commits: no `message`; `tree` no tree; a parent that is no commit.
- refs: POST with a name not starting `refs/` with two slashes (documented), a sha that is no
  object, or an existing ref ("Reference already exists"); PATCH of a missing ref ("Reference does
  not exist"), or not a fast-forward without `force` ("Update is not a fast forward", the documented
  meaning of `force: false`). GET /git/ref of a missing ref: 404.
- Branch protection applies to REST and GraphQL ref updates as to pushes (the hook's rules).
  Assumption: the message is "Protected branch update failed for <ref>." followed by the hook's
  reason, as the push's GH006 line says it.
- GraphQL `updateRefs` is atomic (documented); a `beforeOid` the ref no longer has fails the whole
  mutation with HTTP 200 and a generic `errors` entry and no code (as reported in
  github.com/orgs/community/discussions/213655; the docs name no error for it). Only this mutation
  is served; any other query gets an `errors` answer.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .hook import ZERO, refusal

ACTIONS_BOT = ("github-actions[bot]", "41898282+github-actions[bot]@users.noreply.github.com")
APP_SLUG = "theory-deploy-app"
USER = ("Token User", "token-user@users.noreply.github.com")
GITHUB_COMMITTER = ("GitHub", "noreply@github.com")
BOT_TOKEN_PREFIX = "ghs_"
MODES = {"100644": "blob", "100755": "blob", "120000": "blob", "160000": "commit", "040000": "tree"}
GENERIC_GRAPHQL_ERROR = "Something went wrong while executing your query. This may be the result of a timeout."

Answer = tuple[int, Any]


def _invalid(message: str, **error: Any) -> Answer:
    payload: dict[str, Any] = {"message": message, "documentation_url": "https://docs.github.com/rest/git"}
    if error:
        payload["errors"] = [error]
    return 422, payload


def _git(
    st: Any, *args: str, data: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full_env.update(LC_ALL="C", GIT_DIR=str(st.git_dir), **(env or {}))
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        env=full_env,
        input=data,
        capture_output=True,
        check=False,
    )


def object_type(st: Any, sha: Any) -> str | None:
    if not isinstance(sha, str) or len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
        return None
    proc = _git(st, "cat-file", "-t", sha)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def identity(st: Any, token: str) -> tuple[str, str]:
    """Who a token is, as GitHub writes it into a commit it makes for that token."""
    if token in st.app_tokens:
        return f"{APP_SLUG}[bot]", f"{st.app_id}+{APP_SLUG}[bot]@users.noreply.github.com"
    if token.startswith(BOT_TOKEN_PREFIX):
        return ACTIONS_BOT
    return USER


# --- blobs and trees --------------------------------------------------------------------------------
def create_blob(st: Any, base: str, body: dict[str, Any]) -> Answer:
    content, encoding = body.get("content"), body.get("encoding", "utf-8")
    if not isinstance(content, str):
        return _invalid("Invalid request.", resource="Blob", field="content", code="missing_field")
    if encoding == "utf-8":
        data = content.encode()
    elif encoding == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except binascii.Error:
            return _invalid("Invalid request.", resource="Blob", field="content", code="invalid")
    else:
        return _invalid(
            f"encoding must be utf-8 or base64, not {encoding!r}", resource="Blob", field="encoding", code="invalid"
        )
    if st.tamper_blobs:
        st.tamper_blobs -= 1
        data += b"\n"
    sha = _git(st, "hash-object", "-w", "--stdin", data=data).stdout.decode().strip()
    return 201, {"sha": sha, "url": f"{base}/git/blobs/{sha}"}


def create_tree(st: Any, base: str, body: dict[str, Any]) -> Answer:
    entries, base_tree = body.get("tree"), body.get("base_tree")
    if not isinstance(entries, list):
        return _invalid("Invalid request.", resource="Tree", field="tree", code="missing_field")
    if base_tree is not None and object_type(st, base_tree) != "tree":
        return _invalid("base_tree is not a valid tree", resource="Tree", field="base_tree", code="invalid")
    with tempfile.TemporaryDirectory(prefix="standin-tree-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if base_tree:
            _git(st, "read-tree", base_tree, env=env)
        for entry in entries:
            refused = _apply_entry(st, entry, env)
            if refused is not None:
                return refused
        sha = _git(st, "write-tree", env=env).stdout.decode().strip()
    return 201, {"sha": sha, "url": f"{base}/git/trees/{sha}", "tree": _tree_listing(st, base, sha), "truncated": False}


def _apply_entry(st: Any, entry: Any, env: dict[str, str]) -> Answer | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip("/"):
        return _invalid("Invalid tree info", resource="Tree", field="path", code="missing_field")
    path, mode, kind = entry["path"].strip("/"), entry.get("mode"), entry.get("type")
    if mode not in MODES or kind not in ("blob", "tree", "commit") or MODES[mode] != kind:
        return _invalid("Invalid tree info", resource="Tree", field="mode", code="invalid")
    if kind == "tree":
        return _invalid("tree entries of type tree are not emulated by the stand-in", resource="Tree", code="custom")
    has_sha, has_content = "sha" in entry, "content" in entry
    if has_sha == has_content:
        return _invalid("Must supply either tree.sha or tree.content", resource="Tree", code="custom")
    if has_sha and entry["sha"] is None:
        if _git(st, "ls-files", "--error-unmatch", "--", path, env=env).returncode != 0:
            return _invalid(f"tree.path {path} does not exist and cannot be deleted", resource="Tree", code="custom")
        # `--index-info` with mode 0 removes the entry (`--force-remove` wants a work tree).
        _git(st, "update-index", "--index-info", data=f"0 {ZERO}\t{path}\n".encode(), env=env)
        return None
    if has_content:
        if not isinstance(entry["content"], str) or kind != "blob":
            return _invalid("Invalid tree info", resource="Tree", field="content", code="invalid")
        sha = _git(st, "hash-object", "-w", "--stdin", data=entry["content"].encode()).stdout.decode().strip()
    else:
        sha = entry["sha"]
        # A gitlink (submodule) names a commit of another repository: not checked, as on GitHub.
        if kind == "blob" and object_type(st, sha) != "blob":
            return _invalid(f"tree.sha {sha} is not a valid blob", resource="Tree", field="sha", code="invalid")
    _git(st, "update-index", "--add", "--cacheinfo", f"{mode},{sha},{path}", env=env)
    return None


def _tree_listing(st: Any, base: str, sha: str) -> list[dict[str, Any]]:
    out = _git(st, "ls-tree", "-z", sha).stdout.decode()
    listing = []
    for record in filter(None, out.split("\0")):
        meta, path = record.split("\t", 1)
        mode, kind, obj = meta.split()
        listing.append({"path": path, "mode": mode, "type": kind, "sha": obj, "url": f"{base}/git/{kind}s/{obj}"})
    return listing


# --- commits and their verification ---------------------------------------------------------------
def _signature(payload: str) -> str:
    digest = base64.b64encode(payload.encode()[:48]).decode()
    return f"-----BEGIN PGP SIGNATURE-----\n\nstand-in web-flow signature {digest}\n-----END PGP SIGNATURE-----\n"


def create_commit(st: Any, base: str, token: str, body: dict[str, Any]) -> Answer:
    message, tree, parents = body.get("message"), body.get("tree"), body.get("parents", [])
    if not isinstance(message, str):
        return _invalid("Invalid request.", resource="Commit", field="message", code="missing_field")
    if object_type(st, tree) != "tree":
        return _invalid("Tree SHA does not exist", resource="Commit", field="tree", code="invalid")
    if not isinstance(parents, list) or any(object_type(st, p) != "commit" for p in parents):
        return _invalid(
            "Parent SHA does not exist or is not a commit object", resource="Commit", field="parents", code="invalid"
        )
    now = int(time.time())
    custom = any(key in body for key in ("author", "committer", "signature"))
    if custom:
        who = identity(st, token)
        author = _person(body.get("author"), who, now)
        committer = _person(body.get("committer"), (author[0], author[1]), now) if "committer" in body else author
    else:
        who = identity(st, token)
        author = (*who, now)
        committer = (*GITHUB_COMMITTER, now) if token.startswith(BOT_TOKEN_PREFIX) else author
    header = [f"tree {tree}", *(f"parent {p}" for p in parents)]
    header += [
        f"author {author[0]} <{author[1]}> {author[2]} +0000",
        f"committer {committer[0]} <{committer[1]}> {committer[2]} +0000",
    ]
    payload = "\n".join(header) + "\n\n" + message
    signs = not custom and token.startswith(BOT_TOKEN_PREFIX)
    signature = _signature(payload) if signs else body.get("signature")
    if isinstance(signature, str) and signature:
        folded = signature.rstrip("\n").replace("\n", "\n ")
        text = "\n".join(header) + f"\ngpgsig {folded}\n\n" + message
    else:
        text = payload
    sha = _git(st, "hash-object", "-t", "commit", "-w", "--stdin", data=text.encode()).stdout.decode().strip()
    if signs:
        st.signed_commits[sha] = (signature, payload, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    st.api_commits.append(sha)
    return 201, git_commit_json(st, base, sha)


def _person(given: Any, fallback: tuple[str, str], now: int) -> tuple[str, str, int]:
    if not isinstance(given, dict):
        return (*fallback, now)
    return (str(given.get("name") or fallback[0]), str(given.get("email") or fallback[1]), now)


def verification(st: Any, sha: str) -> dict[str, Any]:
    signed = st.signed_commits.get(sha)
    if signed is not None:
        signature, payload, at = signed
        return {"verified": True, "reason": "valid", "signature": signature, "payload": payload, "verified_at": at}
    has_signature = "\ngpgsig " in _git(st, "cat-file", "commit", sha).stdout.decode(errors="replace")
    return {
        "verified": False,
        "reason": "unknown_key" if has_signature else "unsigned",
        "signature": None,
        "payload": None,
        "verified_at": None,
    }


def _commit_fields(st: Any, sha: str) -> dict[str, Any]:
    fmt = "%T%x00%P%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"
    out = _git(st, "log", "-1", f"--format={fmt}", sha).stdout.decode()
    tree, parents, an, ae, ad, cn, ce, cd, message = out.split("\0", 8)
    return {
        "tree": tree,
        "parents": parents.split(),
        "author": {"name": an, "email": ae, "date": ad},
        "committer": {"name": cn, "email": ce, "date": cd},
        "message": message.removesuffix("\n"),
    }


def git_commit_json(st: Any, base: str, sha: str) -> dict[str, Any]:
    """GET /git/commits/{sha} (and POST's answer)."""
    fields = _commit_fields(st, sha)
    return {
        "sha": sha,
        "node_id": f"C_{sha[:12]}",
        "url": f"{base}/git/commits/{sha}",
        "html_url": f"https://github.example/commit/{sha}",
        "author": fields["author"],
        "committer": fields["committer"],
        "message": fields["message"],
        "tree": {"sha": fields["tree"], "url": f"{base}/git/trees/{fields['tree']}"},
        "parents": [{"sha": p, "url": f"{base}/git/commits/{p}"} for p in fields["parents"]],
        "verification": verification(st, sha),
    }


def commit_json(st: Any, base: str, sha: str) -> dict[str, Any]:
    """GET /commits/{sha}: the commit as the Commits API shows it, verification inside `commit`."""
    fields = _commit_fields(st, sha)
    return {
        "sha": sha,
        "node_id": f"C_{sha[:12]}",
        "url": f"{base}/commits/{sha}",
        "commit": {
            "author": fields["author"],
            "committer": fields["committer"],
            "message": fields["message"],
            "tree": {"sha": fields["tree"], "url": f"{base}/git/trees/{fields['tree']}"},
            "verification": verification(st, sha),
        },
        "parents": [{"sha": p, "url": f"{base}/commits/{p}"} for p in fields["parents"]],
    }


# --- refs ------------------------------------------------------------------------------------------
def ref_sha(st: Any, ref: str) -> str | None:
    proc = _git(st, "rev-parse", "--verify", "--quiet", ref)
    return proc.stdout.decode().strip() if proc.returncode == 0 and ref.startswith("refs/") else None


def ref_json(base: str, ref: str, sha: str) -> dict[str, Any]:
    return {
        "ref": ref,
        "node_id": f"REF_{ref}",
        "url": f"{base}/git/{ref}",
        "object": {"type": "commit", "sha": sha, "url": f"{base}/git/commits/{sha}"},
    }


def _protection_refusal(st: Any, ref: str, old: str, new: str) -> str | None:
    if not ref.startswith("refs/heads/"):
        return None
    rule = st.rule(ref.removeprefix("refs/heads/"))
    if rule is None:
        return None
    from dataclasses import asdict

    def is_ancestor(a: str, b: str) -> bool:
        return _git(st, "merge-base", "--is-ancestor", a, b).returncode == 0

    why = refusal(asdict(rule), old, new, is_ancestor)
    return f"Protected branch update failed for {ref}. {why}" if why else None


def _is_fast_forward(st: Any, old: str, new: str) -> bool:
    return _git(st, "merge-base", "--is-ancestor", old, new).returncode == 0


def _swap(st: Any, ref: str, new: str, old: str, via: str) -> bool:
    """Move `ref` from `old` (ZERO: absent) to `new` (ZERO: delete), atomically; False when it moved."""
    line = f"delete {ref} {old}" if new == ZERO else f"update {ref} {new} {old}"
    done = _git(st, "update-ref", "--stdin", data=f"start\n{line}\ncommit\n".encode()).returncode == 0
    if done:
        st.ref_updates.append({"ref": ref, "old": old, "new": new, "via": via})
    return done


def create_ref(st: Any, base: str, body: dict[str, Any]) -> Answer:
    ref, sha = body.get("ref"), body.get("sha")
    if not isinstance(ref, str) or not ref.startswith("refs/") or ref.count("/") < 2:
        return _invalid(
            "Reference name must start with 'refs/' and have at least two slashes",
            resource="Reference",
            field="ref",
            code="invalid",
        )
    if object_type(st, sha) is None:
        return _invalid("Object does not exist", resource="Reference", field="sha", code="invalid")
    if ref_sha(st, ref) is not None:
        return _invalid("Reference already exists")
    why = _protection_refusal(st, ref, ZERO, sha)
    if why:
        return _invalid(why)
    if not _swap(st, ref, sha, ZERO, "rest"):
        return _invalid("Reference already exists")
    return 201, ref_json(base, ref, sha)


def update_ref(st: Any, base: str, ref: str, body: dict[str, Any]) -> Answer:
    sha, force = body.get("sha"), bool(body.get("force", False))
    current = ref_sha(st, ref)
    if current is None:
        return _invalid("Reference does not exist")
    if object_type(st, sha) != "commit":
        return _invalid("Object does not exist", resource="Reference", field="sha", code="invalid")
    if not force and not _is_fast_forward(st, current, sha):
        return _invalid("Update is not a fast forward")
    why = _protection_refusal(st, ref, current, sha)
    if why:
        return _invalid(why)
    # A forced PATCH has no expected old value: whatever the ref holds now is replaced.
    if not _swap(st, ref, sha, current, "rest"):
        return _invalid("Update is not a fast forward")
    return 200, ref_json(base, ref, sha)


# --- GraphQL ---------------------------------------------------------------------------------------
def graphql(st: Any, body: Any, repository_id: str) -> Answer:
    query = body.get("query") if isinstance(body, dict) else None
    variables = (body.get("variables") or {}) if isinstance(body, dict) else {}
    if not isinstance(query, str) or "updateRefs" not in query:
        return 200, {"errors": [{"message": "The stand-in serves only the updateRefs mutation."}]}
    data = variables.get("input") if isinstance(variables, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("refUpdates"), list):
        return 200, {"errors": [{"message": "Variable $input of type UpdateRefsInput! was provided invalid value"}]}
    if data.get("repositoryId") != repository_id:
        return 200, {
            "data": {"updateRefs": None},
            "errors": [
                {
                    "type": "NOT_FOUND",
                    "path": ["updateRefs"],
                    "message": f"Could not resolve to a node with the global id of '{data.get('repositoryId')}'",
                }
            ],
        }

    def failed(message: str) -> Answer:
        return 200, {"data": {"updateRefs": None}, "errors": [{"path": ["updateRefs"], "message": message}]}

    lines = []
    planned = []
    for update in data["refUpdates"]:
        name, after = update.get("name"), update.get("afterOid")
        before, force = update.get("beforeOid"), bool(update.get("force", False))
        if not isinstance(name, str) or not name.startswith("refs/") or not isinstance(after, str):
            return failed(f"Invalid ref update: {name!r}")
        current = ref_sha(st, name) or ZERO
        if before is not None and before != current:
            return failed(GENERIC_GRAPHQL_ERROR)
        if after != ZERO and object_type(st, after) != "commit":
            return failed(f"Could not resolve {after} to a commit")
        if current != ZERO and after != ZERO and not force and not _is_fast_forward(st, current, after):
            return failed(f"Update is not a fast forward: {name}")
        why = _protection_refusal(st, name, current, after)
        if why:
            return failed(why)
        lines.append(f"delete {name} {current}" if after == ZERO else f"update {name} {after} {current}")
        planned.append({"ref": name, "old": current, "new": after, "via": "graphql"})
    # All or nothing, and each against the value just checked: git's ref transaction.
    script = "start\n" + "\n".join(lines) + "\ncommit\n"
    if _git(st, "update-ref", "--stdin", data=script.encode()).returncode != 0:
        return failed(GENERIC_GRAPHQL_ERROR)
    st.ref_updates.extend(planned)
    return 200, {"data": {"updateRefs": {"clientMutationId": data.get("clientMutationId")}}}
