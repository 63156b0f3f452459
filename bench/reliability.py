#!/usr/bin/env python3
"""Reliability suite: faults, crashes, concurrency, hostile input, leaks, and what is left behind.

    .venv/bin/python bench/reliability.py [--size ci|full] [--only R1,R2,...] [--seed N] [--out FILE]

Needs the loopback registries and the Docker engine (`eval "$(scripts/dev-services env)"`) and
THEORY_BASE_IMAGE (else `scripts/local-base-image` is asked). Every verb runs as the real CLI in a
subprocess with TMPDIR pointed at a fresh folder (checked empty at the end), except R4, which runs
most cases in-process through `framework.run_tool` (what the entry points run) and a sample as
subprocesses with a timeout.

R1 registry faults: 30% of registry requests fail (503, 429 + Retry-After, connection reset, slow
   body) through `tests.reliability_support.ChaosProxy`; N push -> pin --from-push runs of the real
   sample image (re-runs allowed: "re-runs resume"); every pin is checked against the real registry
   directly (index -> platform manifest, body sha256, config architecture) and with skopeo. Then
   401/403/404 on every request: pin and push must fail at once (no retry line, wall time).
R2 crashes: kill -9 of `processorctl pin` and `processorctl pr` at random moments; registry.yaml
   must be byte-equal to the old or the new file; the bot branch on the bare remote must be absent,
   the old tip, or a complete bot commit with the intended pins; a re-run must finish the job.
R3 concurrency: per round, 10 pins (5 processors x 2 platforms, one file each) released together by
   a barrier, then 10 `pr` runs (each processor twice: one from a shared clone, one from its own
   clone) released together; no lost update, one PR per processor on the GitHub stand-in.
R4 hostile input: Hypothesis over verb flags, registry.yaml (mutations and random structures) and
   --inputs-json; no traceback/ERR_INTERNAL, one JSON object under --json, no hang, registry.yaml
   untouched after a failed verb.
R5 leaks: canaries for every secret through every verb drivable here (json, --debug, errors,
   GITHUB_STEP_SUMMARY/GITHUB_OUTPUT, PR bodies and commit messages, container logs).
L  left behind: TMPDIR entries, git worktrees, lock/temp files, containers, local images/tags.

Prints a table and writes JSON to bench/results/reliability.json (or --out).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.github_standin import GitHubStandIn  # noqa: E402
from tests.registry_faults import push_synthetic_image  # noqa: E402
from tests.reliability_support import (  # noqa: E402
    ChaosProxy,
    Tally,
    git,
    make_world,
    processor_path,
    remote_sha,
    scan,
)
from theory_deploy.oci import RegistryClient, RetryPolicy  # noqa: E402

BIN = Path(sys.executable).parent
SAMPLE = "llm/litellm@1"
INPUTS = json.dumps({"schema": "v1", "params": {"messages": [{"role": "user", "content": "hi"}]}})
BOT_TRAILER = "Theory-Deploy-Bot"
SIZES = {
    # CI's size: every case at least once (each signal, each fault kind, the overlap) in about 6 minutes
    # of a 2-core machine (the rest of the suite runs beside it); `full` is for measuring.
    "ci": {"r1_runs": 2, "r2_pin": 10, "r2_pr": 6, "r3_rounds": 1, "r4_examples": 450, "r4_subprocess": 15},
    "full": {"r1_runs": 20, "r2_pin": 200, "r2_pr": 200, "r3_rounds": 10, "r4_examples": 1500, "r4_subprocess": 60},
}
OCI_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# ---------------------------------------------------------------------------------------------------
# running the CLI


class Ctx:
    def __init__(self, size: str, seed: int) -> None:
        self.size = size
        self.n = SIZES[size]
        self.rng = random.Random(seed)
        self.seed = seed
        self.run_id = uuid.uuid4().hex[:8]
        self.registry = os.environ.get("THEORY_REGISTRY", "127.0.0.1:5000")
        self.auth_registry = os.environ.get("THEORY_AUTH_REGISTRY", "127.0.0.1:5001")
        self.docker = os.environ.get("DOCKER", "/usr/bin/docker")
        self.work = Path(tempfile.mkdtemp(prefix=f"theory-reliability-{self.run_id}-"))
        self.tmpdir = self.work / "tmpdir"  # TMPDIR for every product process
        self.tmpdir.mkdir()
        # R5's local secret store (canary values) lives here, not in the user's state folder; its blob
        # cache is the user's default one (~/.cache/theory-deploy/blobs), so pushes are warm as usual
        self.state = self.work / "state"
        self.state.mkdir(mode=0o700)
        cache = Path.home() / ".cache" / "theory-deploy" / "blobs"
        cache.mkdir(parents=True, exist_ok=True)
        (self.state / "blobs").symlink_to(cache)
        self.clones: list[Path] = []  # every git clone the product ran in (worktree/lock checks)
        self.workspaces: list[Path] = []
        self.containers: set[str] = set()
        self.base_image = os.environ.get("THEORY_BASE_IMAGE") or self._base_image()

    def _base_image(self) -> str:
        out = subprocess.run(
            [str(ROOT / "scripts" / "local-base-image"), self.registry], capture_output=True, text=True, timeout=1800
        )
        return out.stdout.strip().splitlines()[-1]

    def env(self, root: Path, **extra: str) -> dict[str, str]:
        drop = ("GIT_", "GITHUB_", "THEORY_", "REGISTRY_", "MODAL_", "OPENAI_", "LITELLM_", "RUNNER_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update({"THEORY_REPO_ROOT": str(root), "TMPDIR": str(self.tmpdir), "GIT_TERMINAL_PROMPT": "0"})
        env.update(extra)
        return env

    def cli(self, tool: str, *args: str, root: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [str(BIN / tool), *args],
                cwd=root,
                env=env or self.env(root),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
        except subprocess.TimeoutExpired as exc:
            return Run(-9, _s(exc.stdout), _s(exc.stderr), time.monotonic() - t0, hung=True)

    def workspace(self, name: str) -> Path:
        ws = self.work / name
        for folder in ("processors", "runtime", "schema"):
            shutil.copytree(ROOT / folder, ws / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        self.workspaces.append(ws)
        return ws


def _s(x: Any) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


class Run:
    def __init__(self, code: int, out: str, err: str, secs: float, hung: bool = False) -> None:
        self.code, self.out, self.err, self.secs, self.hung = code, out, err, secs, hung

    @property
    def json(self) -> dict[str, Any]:
        try:
            return json.loads(self.out)
        except ValueError:
            return {}

    @property
    def err_code(self) -> str | None:
        return (self.json.get("error") or {}).get("code")


def read_pins(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}).get("image", {}).get("platforms", {})


# ---------------------------------------------------------------------------------------------------
# independent registry checks (direct HTTP to the real registry, and skopeo)


def independent_platform_digest(registry: str, repo_path: str, index_digest: str, arch: str) -> tuple[str, str]:
    """(manifest digest for `arch` in the index, "" if all is well else why not)."""
    with httpx.Client(base_url=f"http://{registry}", timeout=30) as http:
        idx = http.get(f"/v2/{repo_path}/manifests/{index_digest}", headers={"Accept": OCI_ACCEPT})
        if idx.status_code != 200 or "sha256:" + hashlib.sha256(idx.content).hexdigest() != index_digest:
            return "", f"index {index_digest} unreadable or mis-hashed ({idx.status_code})"
        entries = [
            m
            for m in idx.json().get("manifests", [])
            if (m.get("platform") or {}).get("architecture") == arch and (m.get("platform") or {}).get("os") == "linux"
        ]
        if len(entries) != 1:
            return "", f"index has {len(entries)} {arch} entries"
        digest = entries[0]["digest"]
        man = http.get(f"/v2/{repo_path}/manifests/{digest}", headers={"Accept": OCI_ACCEPT})
        if man.status_code != 200 or "sha256:" + hashlib.sha256(man.content).hexdigest() != digest:
            return digest, "manifest unreadable or mis-hashed"
        cfg_digest = man.json()["config"]["digest"]
        cfg = http.get(f"/v2/{repo_path}/blobs/{cfg_digest}")
        conf = cfg.json()
        if conf.get("architecture") != arch or conf.get("os") != "linux":
            return digest, f"config says {conf.get('os')}/{conf.get('architecture')}"
        return digest, ""


def skopeo_digest(registry: str, repo_path: str, digest: str) -> str:
    """sha256 of the raw manifest skopeo fetches for repo@digest ('' if skopeo fails)."""
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/{repo_path}@{digest}"],
        capture_output=True,
        timeout=60,
    )
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest() if proc.returncode == 0 else ""


# ---------------------------------------------------------------------------------------------------
# R1: registry faults


def ensure_local_image(ctx: Ctx, ws: Path) -> float:
    t0 = time.monotonic()
    res = ctx.cli(
        "processorctl",
        "build",
        "--ref",
        SAMPLE,
        "--platforms",
        "linux/amd64",
        "--build-arg",
        f"BASE_IMAGE={ctx.base_image}",
        "--json",
        root=ws,
        timeout=1800,
    )
    if res.code != 0:
        raise RuntimeError(f"build failed: {res.err[-2000:]}")
    return time.monotonic() - t0


def r1(ctx: Ctx) -> dict[str, Any]:
    ws = ctx.workspace("r1")
    build_s = ensure_local_image(ctx, ws)
    reg_file = ws / processor_path(SAMPLE)
    runs = ok = first_try_ok = wrong = 0
    attempts: Counter[str] = Counter()
    fail_codes: Counter[str] = Counter()
    problems: list[str] = []
    durations: list[float] = []
    with ChaosProxy(ctx.registry, rate=0.3, seed=ctx.seed) as proxy:
        env = ctx.env(ws, THEORY_REGISTRY_RETRY_BASE_DELAY="0.05")
        for i in range(ctx.n["r1_runs"]):
            runs += 1
            repo_path = f"reliability/r1-{ctx.run_id}-{i}"
            moved = ctx.cli(
                "processorctl",
                "set-repository",
                "--ref",
                SAMPLE,
                "--repository",
                f"{proxy.host}/{repo_path}",
                "--json",
                root=ws,
                env=env,
            )
            assert moved.code == 0, moved.err
            t0 = time.monotonic()
            push_json = ws / f"push-{i}.json"
            done = True
            tries = 0
            for verb, args in (
                ("push", ["push", "--ref", SAMPLE, "--platforms", "linux/amd64", "--json"]),
                ("pin", ["pin", "--ref", SAMPLE, "--from-push", str(push_json), "--json"]),
            ):
                for attempt in range(1, 6):
                    res = ctx.cli("processorctl", *args, root=ws, env=env, timeout=600)
                    tries += 1
                    attempts[verb] += 1
                    if res.code == 0:
                        if verb == "push":
                            push_json.write_text(res.out)
                        break
                    fail_codes[res.err_code or f"exit{res.code}"] += 1
                    if res.err_code not in ("ERR_REGISTRY_UNREACHABLE",):
                        problems.append(f"run {i} {verb} attempt {attempt}: {res.err_code}: {res.err[-400:]}")
                else:
                    done = False
                if not done:
                    break
            durations.append(time.monotonic() - t0)
            if not done:
                continue
            ok += 1
            first_try_ok += tries == 2
            record = json.loads(push_json.read_text())
            pinned = read_pins(reg_file).get("amd64")
            index_digest = record["index"].split("@", 1)[1]
            truth, why = independent_platform_digest(ctx.registry, repo_path, index_digest, "amd64")
            sk = skopeo_digest(ctx.registry, repo_path, truth) if truth else ""
            expected = f"{proxy.host}/{repo_path}@{truth}"
            if why or pinned != expected or sk != truth or read_pins(reg_file).get("arm64") is not None:
                wrong += 1
                problems.append(f"run {i}: pinned {pinned}, registry has {expected} ({why or 'ok'}, skopeo {sk})")
        injected = dict(proxy.injected)
        passed = proxy.passed

    # fast fails: every registry request answers 401/403/404; default retry policy (no speed-up)
    fast = []
    last_pin = read_pins(reg_file).get("amd64") or f"x@sha256:{'0' * 64}"
    digest = last_pin.split("@", 1)[1]
    for status in (401, 403, 404):
        for verb in ("pin", "push"):
            with ChaosProxy(ctx.registry, fixed=status) as proxy:
                repo = f"{proxy.host}/reliability/r1-fast-{ctx.run_id}-{status}-{verb}"
                env = ctx.env(ws)
                ctx.cli("processorctl", "set-repository", "--ref", SAMPLE, "--repository", repo, root=ws, env=env)
                before = reg_file.read_bytes()
                if verb == "pin":
                    args = ["pin", "--ref", SAMPLE, "--platform", "amd64", "--oci", f"{repo}@{digest}", "--json"]
                else:
                    args = ["push", "--ref", SAMPLE, "--platforms", "linux/amd64", "--json"]
                res = ctx.cli("processorctl", *args, root=ws, env=env, timeout=120)
                retried = "retrying" in res.err
                fast.append(
                    {
                        "status": status,
                        "verb": verb,
                        "exit": res.code,
                        "code": res.err_code,
                        "secs": round(res.secs, 3),
                        "requests": len(proxy.requests),
                        "retried": retried,
                        "file_untouched": reg_file.read_bytes() == before,
                        # fast = refused on the first answer: no retry line, no ERR_INTERNAL. A push that
                        # hears 404 on its blob HEADs legitimately exports and compresses the image before
                        # its upload is refused, so its wall time is reported, not bounded.
                        "fast": res.code != 0
                        and not retried
                        and res.err_code != "ERR_INTERNAL"
                        and (res.secs < 5 or (verb, status) == ("push", 404)),
                    }
                )
    return {
        "runs": runs,
        "ok": ok,
        "first_try_ok": first_try_ok,
        "wrong_pins": wrong,
        "attempts": dict(attempts),
        "failed_attempt_codes": dict(fail_codes),
        "injected_faults": injected,
        "passed_requests": passed,
        "run_secs": [round(d, 2) for d in durations],
        "build_secs": round(build_s, 2),
        "fast_fails": fast,
        "fast_ok": sum(f["fast"] for f in fast),
        "fast_total": len(fast),
        "max_fail_s": max((f["secs"] for f in fast), default=0.0),
        "max_fail_s_no_export": max(
            (f["secs"] for f in fast if (f["verb"], f["status"]) != ("push", 404)), default=0.0
        ),
        "problems": problems[:10],
    }


# ---------------------------------------------------------------------------------------------------
# R2: kill -9 at random moments


def push_variants(ctx: Ctx, repo_path: str, arch: str, count: int) -> list[str]:
    with RegistryClient(ctx.registry, retry=RetryPolicy(base_delay=0.05), progress=lambda _m: None) as c:
        return [
            f"{ctx.registry}/{repo_path}@{push_synthetic_image(c, repo_path, arch, f'{arch}-{i}').manifest_digest}"
            for i in range(count)
        ]


def repair_worktrees(clone: Path) -> None:
    """What a human has to do after the stale-worktree wedge: force-remove every extra worktree
    (twice --force: they are locked) and drop their admin entries."""
    for path in worktree_paths(clone):
        if not path.startswith("<broken>"):
            git(clone, "worktree", "unlock", path, check=False)
            git(clone, "worktree", "remove", "--force", "--force", path, check=False)
    admin = clone / ".git" / "worktrees"
    if admin.exists():
        shutil.rmtree(admin, ignore_errors=True)
    git(clone, "worktree", "prune", check=False)


def worktree_paths(clone: Path) -> set[str]:
    """Extra worktrees of `clone`; when git cannot even list them (a half-made admin entry), each
    entry under .git/worktrees counts, as "<broken> NAME"."""
    proc = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=clone, capture_output=True, text=True)
    if proc.returncode != 0:
        admin = clone / ".git" / "worktrees"
        return {f"<broken> {d.name}" for d in admin.iterdir()} if admin.exists() else {"<broken>"}
    return {line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("worktree ")} - {str(clone)}


def killed_run(
    ctx: Ctx,
    tool: str,
    args: list[str],
    root: Path,
    env: dict[str, str],
    delay: float,
    sig: signal.Signals = signal.SIGKILL,
) -> tuple[bool, int]:
    """Start the verb, send `sig` after `delay` s (SIGKILL: to its whole process group, so git children
    die too; SIGTERM/SIGINT: to the verb only, as a CI runner cancelling a job would).
    Returns (signalled before it finished, exit code)."""
    proc = subprocess.Popen(
        [str(BIN / tool), *args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=delay)
        return False, proc.returncode
    except subprocess.TimeoutExpired:
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)  # the verb and any git it runs
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return True, proc.returncode


def _leftover_tmp(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".lock" in p.name)


def r2(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # --- pin ----------------------------------------------------------------------------------------
    root = ctx.work / "r2pin"
    ref = "rel/crashpin@1"
    repo_path = f"reliability/r2-{ctx.run_id}"
    a, b = push_variants(ctx, repo_path, "amd64", 2)
    remote, work = make_world(root, {ref: f"{ctx.registry}/{repo_path}"})
    ctx.clones.append(work)
    reg = work / processor_path(ref)
    env = ctx.env(work)
    texts: dict[str, bytes] = {}
    for d in (b, a):  # learn both files; end pinned at a
        res = ctx.cli("processorctl", "pin", "--ref", ref, "--platform", "amd64", "--oci", d, "--json", root=work)
        assert res.code == 0, res.err
        texts[d] = reg.read_bytes()
    base_secs = res.secs
    t = Tally()
    current = a
    for i in range(ctx.n["r2_pin"]):
        new = b if current == a else a
        delay = ctx.rng.uniform(0.05, base_secs)
        killed, _code = killed_run(
            ctx, "processorctl", ["pin", "--ref", ref, "--platform", "amd64", "--oci", new, "--json"], work, env, delay
        )
        t.add("kills" if killed else "finished_before_kill")
        data = reg.read_bytes()
        try:
            yaml.safe_load(data)
            t.add("parse_ok")
        except yaml.YAMLError:
            t.add("parse_failed", example=i)
        if data in (texts[a], texts[b]):
            t.add("old_or_new")
            t.add("was_new" if data == texts[new] else "was_old")
        else:
            t.add("neither_old_nor_new", example=data[:200].decode(errors="replace"))
        # A SIGKILL between creating the temporary file and renaming it over registry.yaml leaves
        # the temporary: no process can clean up after its own SIGKILL. What is promised is that the
        # re-run removes it (pin writes remove stale temporaries under the writers' lock).
        left = _leftover_tmp(reg.parent)
        if left:
            t.add("tmp_files_after_kill", len(left), example=left)
        rerun = ctx.cli("processorctl", "pin", "--ref", ref, "--platform", "amd64", "--oci", new, "--json", root=work)
        if rerun.code == 0 and reg.read_bytes() == texts[new]:
            t.add("rerun_ok")
        else:
            t.add("rerun_failed", example=f"{rerun.err_code}: {rerun.err[-300:]}")
        left_after_rerun = _leftover_tmp(reg.parent)
        if left_after_rerun:
            t.add("tmp_files_after_rerun", len(left_after_rerun), example=left_after_rerun)
            for name in left_after_rerun:  # count them once
                (reg.parent / name).unlink()
        current = new
    out["pin"] = {"iterations": ctx.n["r2_pin"], "baseline_secs": round(base_secs, 3), **t.counts}
    out["pin_examples"] = t.examples

    # --- pr -----------------------------------------------------------------------------------------
    root = ctx.work / "r2pr"
    ref = "rel/crashpr@1"
    repo_path = f"reliability/r2pr-{ctx.run_id}"
    a, b = push_variants(ctx, repo_path, "amd64", 2)
    remote, work = make_world(root, {ref: f"{ctx.registry}/{repo_path}"})
    ctx.clones.append(work)
    reg_rel = processor_path(ref)
    reg = work / reg_rel
    branch = "theory-deploy/pin/rel-crashpr-v1"
    token = "ghp_" + uuid.uuid4().hex
    t = Tally()
    with GitHubStandIn(owner="acme", repo="processors", tokens={token}, git_remote=remote) as gh:
        env = ctx.env(work, GITHUB_REPOSITORY="acme/processors", GITHUB_API_URL=gh.url, GITHUB_TOKEN=token)
        pr_args = ["pr", "--ref", ref, "--base", "main", "--json"]

        def pin(d: str) -> None:
            res = ctx.cli("processorctl", "pin", "--ref", ref, "--platform", "amd64", "--oci", d, "--json", root=work)
            assert res.code == 0, res.err

        pin(a)
        first = ctx.cli("processorctl", *pr_args, root=work, env=env)
        assert first.code == 0, first.err
        base_secs = first.secs
        current = a
        signals = ctx.n["r2_pr"] // 6  # the last 2*signals iterations send SIGTERM / SIGINT instead of SIGKILL
        for i in range(ctx.n["r2_pr"]):
            new = b if current == a else a
            pin(new)
            old_tip = remote_sha(remote, branch)
            wt_before = worktree_paths(work)
            tmp_before = set(ctx.tmpdir.glob("theory-deploy-pin-*"))
            delay = ctx.rng.uniform(0.05, base_secs * 0.9)  # the first pr (which creates the PR) is the slowest
            sig = signal.SIGKILL if i < ctx.n["r2_pr"] - 2 * signals else (signal.SIGTERM, signal.SIGINT)[i % 2]
            killed, _ = killed_run(ctx, "processorctl", pr_args, work, env, delay, sig)
            t.add(f"signal_{sig.name}")
            t.add("kills" if killed else "finished_before_kill")
            tip = remote_sha(remote, branch)
            if tip is None:
                t.add("branch_absent")
            elif tip == old_tip:
                t.add("branch_old_tip")
            else:
                fsck = subprocess.run(["git", "fsck", "--no-dangling", tip], cwd=remote, capture_output=True)
                trailer = git(remote, "log", "-1", f"--format=%(trailers:key={BOT_TRAILER},valueonly)", tip)
                try:
                    pins = (yaml.safe_load(git(remote, "show", f"{tip}:{reg_rel}")) or {})["image"]["platforms"]
                except Exception:
                    pins = {}
                if fsck.returncode == 0 and "pin" in trailer and pins.get("amd64") == new:
                    t.add("branch_complete_bot_commit")
                else:
                    t.add("half_written_branches", example=f"tip {tip}: fsck {fsck.returncode}, {trailer!r}, {pins}")
            wt_after = worktree_paths(work)
            if wt_after - wt_before:
                t.add("new_stale_worktrees_after_kill", len(wt_after - wt_before))
                t.add(f"new_stale_worktrees_after_{sig.name}", len(wt_after - wt_before))
            if set(ctx.tmpdir.glob("theory-deploy-pin-*")) - tmp_before:
                t.add("new_tmpdir_folders_after_kill")
                t.add(f"new_tmpdir_folders_after_{sig.name}")
            # A kill inside `git fetch` may leave a private ref's lock (counted, not a fault); the
            # re-run must remove it, or every later run fails to update that ref.
            locks = [str(p.relative_to(root)) for p in root.rglob("*.lock")]
            if locks:
                t.add("lock_files_after_kill", example=locks)
            rerun = ctx.cli("processorctl", *pr_args, root=work, env=env)
            locks = [str(p.relative_to(root)) for p in root.rglob("*.lock")]
            if locks:
                t.add("lock_files_after_rerun", example=locks)
            if rerun.code != 0 and ("bad object worktrees/" in rerun.err or ".git/worktrees/" in rerun.err):
                # known bug: a kill inside `git worktree add` leaves a locked, HEAD-less admin entry that
                # breaks every later fetch in the clone. Count it, repair by hand, re-run, go on measuring.
                t.add("rerun_failed_wedged_by_stale_worktree", example=rerun.err[-300:])
                repair_worktrees(work)
                rerun = ctx.cli("processorctl", *pr_args, root=work, env=env)
            tip = remote_sha(remote, branch)
            pins = (yaml.safe_load(git(remote, "show", f"{tip}:{reg_rel}")) or {})["image"]["platforms"] if tip else {}
            if rerun.code == 0 and pins.get("amd64") == new:
                t.add("rerun_ok")
            else:
                t.add("rerun_failed", example=f"{rerun.err_code}: {rerun.err[-400:]}")
            current = new
        # targeted: signal each pr while its temporary worktree exists (the window random kills may miss)
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) * 2:
            new = b if current == a else a
            pin(new)
            wt_before = worktree_paths(work)
            seen_before = set(ctx.tmpdir.glob("theory-deploy-pin-*"))
            proc = subprocess.Popen(
                [str(BIN / "processorctl"), *pr_args],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 30
            hit = False
            while proc.poll() is None and time.monotonic() < deadline:
                if set(ctx.tmpdir.glob("theory-deploy-pin-*")) - seen_before:
                    time.sleep(0.02)
                    if sig == signal.SIGKILL:
                        os.killpg(proc.pid, sig)
                    else:
                        proc.send_signal(sig)
                    hit = True
                    break
                time.sleep(0.003)
            proc.wait(timeout=60)
            t.add(f"targeted_{sig.name}" if hit else "targeted_missed")
            left = worktree_paths(work) - wt_before if hit else set()
            if left:
                t.add(f"targeted_stale_worktrees_after_{sig.name}")
            rerun = ctx.cli("processorctl", *pr_args, root=work, env=env)
            if left and left & worktree_paths(work):
                t.add("targeted_stale_worktrees_kept_by_rerun")
            if rerun.code != 0 and ("bad object worktrees/" in rerun.err or ".git/worktrees/" in rerun.err):
                t.add("rerun_failed_wedged_by_stale_worktree", example=rerun.err[-300:])
                repair_worktrees(work)
                rerun = ctx.cli("processorctl", *pr_args, root=work, env=env)
            t.add(
                "rerun_ok" if rerun.code == 0 else "rerun_failed", example=None if rerun.code == 0 else rerun.err[-300:]
            )
            current = new
        # deterministic: SIGKILL the pr while `git worktree add` is creating its admin entry (git writes
        # `locked` first), then re-run: does the job finish?
        for _ in range(4):
            new = b if current == a else a
            pin(new)
            admin = work / ".git" / "worktrees"
            before = set(admin.glob("*")) if admin.exists() else set()
            proc = subprocess.Popen(
                [str(BIN / "processorctl"), *pr_args],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 30
            hit = False
            while proc.poll() is None and time.monotonic() < deadline:
                fresh = [d for d in (set(admin.glob("*")) if admin.exists() else set()) - before]
                # HEAD written, checkout not finished (`locked` still there): the window that wedges
                if any((d / "locked").exists() and (d / "HEAD").exists() for d in fresh):
                    os.killpg(proc.pid, signal.SIGKILL)
                    hit = True
                    break
                time.sleep(0.001)
            proc.wait(timeout=60)
            t.add("in_worktree_add_kills" if hit else "in_worktree_add_missed")
            rerun = ctx.cli("processorctl", *pr_args, root=work, env=env)
            if rerun.code == 0:
                t.add("in_worktree_add_rerun_ok")
            else:
                t.add("in_worktree_add_rerun_failed", example=rerun.err[-300:])
                repair_worktrees(work)
                ctx.cli("processorctl", *pr_args, root=work, env=env)
            current = new
        open_prs = [p for p in gh.pulls if p.get("state", "open") == "open"]
        t.add("open_prs_at_end", len(open_prs))
    worktrees = len(worktree_paths(work))
    out["pr"] = {
        "iterations": ctx.n["r2_pr"],
        "targeted_iterations": 6,
        "in_worktree_add_iterations": 4,
        "baseline_secs": round(base_secs, 3),
        "stale_worktrees_at_end": worktrees,
        "tmpdir_entries_at_end": sorted(p.name for p in ctx.tmpdir.iterdir()),
        **t.counts,
    }
    out["pr_examples"] = t.examples
    return out


# ---------------------------------------------------------------------------------------------------
# R3: concurrency behind a barrier


def barrier_batch(ctx: Ctx, jobs: list[tuple[Path, dict[str, str], list[str]]], lead: float) -> tuple[list[Run], dict]:
    times = ctx.work / f"times-{uuid.uuid4().hex[:6]}.jsonl"
    start_at = time.time() + lead
    procs = []
    for root, env, argv in jobs:
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "reliability_barrier.py"), str(start_at), str(times), *argv],
                cwd=root,
                env={**env, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        runs.append(Run(p.returncode, out, err, 0.0))
    marks = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
    late = sum(m["ready"] > start_at for m in marks)
    # peak overlap: how many runs were in flight at once
    events = sorted([(m["start"], 1) for m in marks] + [(m["end"], -1) for m in marks])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return runs, {"late": late, "peak_overlap": peak}


def r3(ctx: Ctx) -> dict[str, Any]:
    root = ctx.work / "r3"
    root.mkdir()
    refs = [f"rel/conc{i}@1" for i in range(5)]
    rounds = ctx.n["r3_rounds"]
    variants: dict[str, dict[str, list[str]]] = {}
    for i, ref in enumerate(refs):
        repo_path = f"reliability/r3-{ctx.run_id}/c{i}"
        variants[ref] = {arch: push_variants(ctx, repo_path, arch, rounds) for arch in ("amd64", "arm64")}
    remote, work = make_world(root, {ref: variants[ref]["amd64"][0].split("@")[0] for ref in refs})
    ctx.clones.append(work)
    own = {}
    for i, ref in enumerate(refs):
        own[ref] = root / f"clone{i}"
        git(root, "clone", "--quiet", str(remote), str(own[ref]))
        ctx.clones.append(own[ref])
    token = "ghp_" + uuid.uuid4().hex
    t = Tally()
    overlap = []
    with GitHubStandIn(owner="acme", repo="processors", tokens={token}, git_remote=remote) as gh:
        for r in range(rounds):
            # 10 pins, one file per processor, both platforms at once, in the shared clone
            jobs = []
            for ref in refs:
                for arch in ("amd64", "arm64"):
                    argv = ["processorctl", "pin", "--ref", ref, "--platform", arch, "--oci", variants[ref][arch][r]]
                    jobs.append((work, ctx.env(work), [*argv, "--json"]))
            runs, info = barrier_batch(ctx, jobs, lead=4.0)
            overlap.append({"phase": "pin", "round": r, **info})
            for run in runs:
                t.add("pin_ok" if run.code == 0 else "pin_failed", example=None if run.code == 0 else run.err[-300:])
            for ref in refs:
                pins = read_pins(work / processor_path(ref))
                want = {arch: variants[ref][arch][r] for arch in ("amd64", "arm64")}
                if pins == want:
                    t.add("pins_intended")
                else:
                    t.add("lost_pin_updates", example={"ref": ref, "have": pins, "want": want})
            # the other clones get the same pins (as their own pin step would write them)
            for ref in refs:
                shutil.copyfile(work / processor_path(ref), own[ref] / processor_path(ref))
            # 10 PR updates: each processor from the shared clone and from its own clone
            jobs = []
            for ref in refs:
                for tree in (work, own[ref]):
                    env = ctx.env(tree, GITHUB_REPOSITORY="acme/processors", GITHUB_API_URL=gh.url, GITHUB_TOKEN=token)
                    jobs.append((tree, env, ["processorctl", "pr", "--ref", ref, "--base", "main", "--json"]))
            runs, info = barrier_batch(ctx, jobs, lead=4.0)
            overlap.append({"phase": "pr", "round": r, **info})
            for run in runs:
                code = run.err_code
                t.add(
                    "pr_ok" if run.code == 0 else f"pr_failed_{code}", example=None if run.code == 0 else run.err[-400:]
                )
            # whatever failed under contention must succeed when re-run alone
            for ref in refs:
                branch = f"theory-deploy/pin/{ref.replace('/', '-').replace('@', '-v')}"
                want = {arch: variants[ref][arch][r] for arch in ("amd64", "arm64")}
                tip = remote_sha(remote, branch)
                pins = (
                    (yaml.safe_load(git(remote, "show", f"{tip}:{processor_path(ref)}")) or {})["image"]["platforms"]
                    if tip
                    else {}
                )
                if pins != want:
                    t.add("branches_behind_after_concurrent_pr", example={"ref": ref, "have": pins})
                    env = ctx.env(work, GITHUB_REPOSITORY="acme/processors", GITHUB_API_URL=gh.url, GITHUB_TOKEN=token)
                    ctx.cli("processorctl", "pr", "--ref", ref, "--base", "main", "--json", root=work, env=env)
                    tip = remote_sha(remote, branch)
                    pins = (
                        (yaml.safe_load(git(remote, "show", f"{tip}:{processor_path(ref)}")) or {})["image"][
                            "platforms"
                        ]
                        if tip
                        else {}
                    )
                if pins == want:
                    t.add("branches_final_ok")
                else:
                    t.add("lost_branch_updates", example={"ref": ref, "have": pins, "want": want})
        heads = Counter(p["head"]["ref"] if isinstance(p.get("head"), dict) else p.get("head") for p in gh.pulls)
    return {
        "rounds": rounds,
        "processors": len(refs),
        "concurrent_per_phase": 10,
        "overlap": overlap,
        "prs_per_processor": dict(heads),
        "processors_with_one_pr": sum(1 for v in heads.values() if v == 1),
        **t.counts,
        "examples": t.examples,
    }


# ---------------------------------------------------------------------------------------------------
# R4: hostile input (Hypothesis)


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))


def r4(ctx: Ctx) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from theory_deploy.cli import framework, localctl, processorctl

    ws = ctx.workspace("r4")
    git(ws, "init", "--quiet", "-b", "main")
    git(ws, "add", ".")
    git(ws, "-c", "user.name=f", "-c", "user.email=f@x", "commit", "--quiet", "-m", "base")
    reg = ws / processor_path(SAMPLE)
    sample_text = reg.read_text()
    # a real amd64 image, so some pins reach the registry
    real = push_variants(ctx, f"reliability/r4-{ctx.run_id}", "amd64", 1)[0]
    parsers = {"processorctl": processorctl.parser, "localctl": localctl.parser}
    fuzz_env = {
        "THEORY_REPO_ROOT": str(ws),
        "GIT_BRANCH": "fuzz",
        "GIT_USER": "fuzzer",
        "TMPDIR": str(ctx.tmpdir),
        "THEORY_STATE_DIR": str(ctx.state),  # sync-secrets --check reads the (empty) local store here
        "THEORY_REGISTRY_RETRY_BASE_DELAY": "0.01",
    }
    t = Tally()
    samples: list[tuple[str, list[str], str | None, dict[str, str], str | None]] = []  # for the subprocess pass
    lock = threading.Lock()

    def run_case(
        kind: str, tool: str, argv: list[str], yaml_text: str | None = None, env_extra: dict[str, str] | None = None
    ) -> None:
        argv = [a.replace("\x00", "") for a in argv]  # execve cannot pass a NUL: no real argv holds one
        if yaml_text is not None:
            reg.write_text(yaml_text, encoding="utf-8", errors="surrogatepass")
        before = reg.read_bytes()
        out, err = io.StringIO(), io.StringIO()
        t0 = time.monotonic()
        code: Any = None
        escaped = None
        case_env = {**fuzz_env, **(env_extra or {})}
        saved = {k: os.environ.get(k) for k in case_env}
        os.environ.update(case_env)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = framework.run_tool(parsers[tool](), argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            escaped = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=err)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        secs = time.monotonic() - t0
        t.add("cases")
        t.add(f"cases_{kind}")
        so, se = out.getvalue(), err.getvalue()
        opts = argv[: argv.index("--")] if "--" in argv else argv  # after `--` everything is a positional
        debug = "--debug" in opts  # a traceback is documented under --debug, for known errors too
        if "unhashable type: 'dict'" in se and yaml_text and "$schema" in yaml_text:
            t.add("tracebacks_known_inputs_schema_bug")  # reported; its fixed case is in hang_probes below
        elif escaped or ("Traceback" in se and not debug) or "ERR_INTERNAL" in so + se:
            t.add(
                "tracebacks",
                example={"kind": kind, "argv": argv[:12], "err": (escaped or se)[-600:], "registry_yaml": yaml_text},
            )
        if secs > 20:
            t.add("slow_cases_over_20s", example={"argv": argv[:8], "secs": round(secs, 1)})
        if "--json" in opts and "-h" not in opts and "--help" not in opts:
            try:
                doc = json.loads(so)
                assert isinstance(doc, dict) and doc.get("status") in ("success", "error")
            except Exception:
                t.add("json_contract_violations", example={"argv": argv[:10], "code": code, "stdout": so[:300]})
        if code not in (0, None) and reg.read_bytes() != before:
            t.add("file_changed_after_failure", example={"argv": argv[:10]})
        if code in (0, None) and argv[:1] == ["pin"]:
            t.add("pins_accepted")
        t.add(f"exit_{code}")
        with lock:
            samples.append(
                (tool, argv, yaml_text, dict(env_extra or {}), push_file.read_text() if push_file.exists() else None)
            )

    hostile = st.sampled_from(
        [
            "",
            " ",
            "-",
            "--",
            "--json",
            "../../etc/passwd",
            "llm/litellm@1",
            "llm/litellm@0",
            "LLM/LiteLLM@1",
            "a/b@99999999999999999999",
            "x" * 5000,
            "llm/litellm@1\n",
            "amd64",
            "linux/arm64",
            "s390x",
            "dev",
            "main",
            "prod",
            real,
            real.replace("@", ":"),
            real + "x",
            real.split("@")[0] + "@sha256:" + "0" * 64,
            "127.0.0.1:1/x@sha256:" + "a" * 64,
            "ghcr.io/a/b:latest",
            "{}",
            "null",
            "\u202e\u0000\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
            "$(touch /tmp/pwned)",
            "`id`",
            "%s%n",
            "😀" * 50,
        ]
    )
    text_arg = st.one_of(hostile, st.text(max_size=40).filter(lambda s: "\x00" not in s))
    sentinel = ctx.work / "r4-sentinel"  # a file no verb may ever create (git option injection)
    hostile_opt = st.sampled_from(
        [
            f"--output={sentinel}",
            f"--upload-pack=touch {sentinel}",
            f"-o{sentinel}",
            "--exec=id",
            "-c",
            "HEAD@{-1}",
            "HEAD^{tree}",
            "HEAD~99999",
            ":/",
            "0" * 40,
            "a" * 41,
        ]
    )
    value = st.one_of(text_arg, hostile_opt)
    templates: list[tuple[str, list[str]]] = [
        ("processorctl", ["validate", "{path}"]),
        ("processorctl", ["validate"]),
        ("processorctl", ["pin", "--ref", "{ref}", "--platform", "{platform}", "--oci", "{oci}"]),
        ("processorctl", ["pin", "--ref", "{ref}", "--from-push", "{file}"]),
        ("processorctl", ["plan", "--base", "{rev}"]),
        ("processorctl", ["plan", "--refs", "{v}", "--platforms", "{v}", "--env", "{v}", "--branch", "{v}"]),
        ("processorctl", ["set-repository", "--ref", "{ref}", "--repository", "{v}"]),
        ("processorctl", ["schema"]),
        ("localctl", ["name", "--ref", "{ref}", "--env", "{env}"]),
        ("localctl", ["start", "--ref", "{ref}", "--env", "{env}", "--dry-run"]),
        ("localctl", ["start", "--ref", "{ref}", "--env", "{env}", "--dry-run", "--oci", "{oci}"]),
        ("localctl", ["sync-secrets", "--ref", "{ref}", "--env", "{env}", "--check"]),
        ("localctl", ["rollback", "--ref", "{ref}", "--env", "{env}", "--to", "{rev}", "--dry-run"]),
        ("localctl", ["logs", "--ref", "{ref}", "--env", "{env}", "--tail", "{v}"]),
        ("localctl", ["run", "--ref", "{ref}", "--env", "{env}", "--inputs-file", "{file}", "--timeout", "3"]),
    ]
    push_file = ws / "fuzz-input.json"
    per = max(10, ctx.n["r4_examples"] // 3)
    common = settings(
        max_examples=per, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=False
    )

    @hseed(ctx.seed)
    @common
    @given(which=st.sampled_from(range(len(templates))), data=st.data())
    def fuzz_flags(which: int, data: Any) -> None:
        tool, template = templates[which]
        fills = {
            "ref": st.one_of(st.just(SAMPLE), value),
            "platform": st.one_of(st.sampled_from(["amd64", "arm64", "linux/amd64"]), value),
            "oci": st.one_of(st.just(real), value),
            "env": st.one_of(st.sampled_from(["dev", "staging", "main"]), value),
            "rev": st.one_of(st.sampled_from(["HEAD", "HEAD~1", "main"]), value),
            "path": st.one_of(st.just(str(reg)), st.sampled_from(["processors", "/etc/passwd", "/", "../.."]), value),
            "file": st.just(str(push_file)),
            "v": value,
        }
        argv: list[str] = []
        key = None
        for tok in template:
            if tok.startswith("{"):
                v = data.draw(fills[tok[1:-1]])
                if argv and argv[-1].startswith("--") and data.draw(st.booleans()):
                    argv[-1] = f"{argv[-1]}={v}"  # --flag=value lets values that look like options through
                else:
                    argv.append(v)
                key = tok
            else:
                argv.append(tok)
        if key == "{file}":
            push_file.write_text(
                data.draw(
                    st.one_of(
                        json_val.map(json.dumps),
                        st.text(max_size=100),
                        st.just(json.dumps({"ref": SAMPLE, "platforms": {"amd64": real}})),
                        value.map(
                            lambda o: json.dumps({"ref": SAMPLE, "index": o, "platforms": {"amd64": o, "arm64": o}})
                        ),
                    )
                )
            )
        for _ in range(data.draw(st.integers(0, 2))):  # stray extras
            argv.insert(
                data.draw(st.integers(1, len(argv))),
                data.draw(st.sampled_from(["--debug", "--json", "--", "-x", "--ref"])),
            )
        argv.append("--json")
        env_extra = {}
        if data.draw(st.integers(0, 4)) == 0:
            env_extra = data.draw(
                st.dictionaries(
                    st.sampled_from(
                        ["GIT_BRANCH", "GIT_USER", "THEORY_MAX_REGISTRY_BYTES", "THEORY_MAX_REGISTRY_NODES"]
                    ),
                    value.filter(lambda x: "\x00" not in x),
                    max_size=2,
                )
            )
        reg.write_text(sample_text)
        run_case("flags", tool, argv, env_extra=env_extra)
        if sentinel.exists():
            t.add("option_injection", example=argv)
            sentinel.unlink()

    json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
    json_val = st.recursive(
        json_leaf,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
        max_leaves=20,
    )

    lines = sample_text.splitlines(keepends=True)

    @st.composite
    def mutated_yaml(draw: Any) -> str:
        choice = draw(st.integers(0, 9))
        ls = list(lines)
        if choice == 0:  # random structure
            return yaml.safe_dump(draw(json_val), allow_unicode=True)
        if choice == 1:  # delete lines
            for _ in range(draw(st.integers(1, 5))):
                if ls:
                    ls.pop(draw(st.integers(0, len(ls) - 1)))
        elif choice == 2:  # replace a value
            i = draw(st.integers(0, len(ls) - 1))
            if ":" in ls[i]:
                key = ls[i].split(":", 1)[0]
                ls[i] = f"{key}: {json.dumps(draw(json_val))}\n"
        elif choice == 3:  # truncate
            return sample_text[: draw(st.integers(0, len(sample_text)))]
        elif choice == 4:  # byte noise
            text = sample_text
            for _ in range(draw(st.integers(1, 10))):
                pos = draw(st.integers(0, len(text)))
                text = text[:pos] + draw(st.text(max_size=3)) + text[pos:]
            return text
        elif choice == 5:  # aliases, anchors, tags
            i = draw(st.integers(0, len(ls) - 1))
            ls.insert(
                i,
                draw(
                    st.sampled_from(
                        [
                            "x: &a [1,2]\n",
                            "y: *a\n",
                            "z: !!python/object:os.system 1\n",
                            "<<: *a\n",
                            "---\n",
                            "%YAML 1.1\n",
                        ]
                    )
                ),
            )
        elif choice == 6:  # deep nesting
            depth = draw(st.integers(30, 200))
            ls.append("deep: " + "[" * depth + "]" * depth + "\n")
        elif choice == 7:  # duplicated lines (duplicate keys)
            i = draw(st.integers(0, len(ls) - 1))
            ls.insert(i, ls[i])
        elif choice == 8:  # pin values
            pin = draw(st.one_of(hostile, st.text(max_size=80)))
            return sample_text.replace("amd64: null", f"amd64: {json.dumps(pin)}").replace(
                "amd64:\n", f"amd64: {json.dumps(pin)}\n"
            )
        else:  # indentation damage
            i = draw(st.integers(0, len(ls) - 1))
            ls[i] = draw(st.sampled_from(["", " ", "\t", "   "])) + ls[i].lstrip()
        return "".join(ls)

    yaml_verbs = [
        ("processorctl", ["validate", "--json"]),
        ("processorctl", ["plan", "--base", "HEAD", "--json"]),
        ("processorctl", ["pin", "--ref", SAMPLE, "--platform", "amd64", "--oci", real, "--json"]),
        ("processorctl", ["set-repository", "--ref", SAMPLE, "--repository", f"{ctx.registry}/x/y", "--json"]),
        ("localctl", ["start", "--ref", SAMPLE, "--env", "dev", "--dry-run", "--json"]),
        ("localctl", ["name", "--ref", SAMPLE, "--env", "dev", "--json"]),
    ]

    @hseed(ctx.seed + 1)
    @common
    @given(text=mutated_yaml(), which=st.sampled_from(range(len(yaml_verbs))))
    def fuzz_yaml(text: str, which: int) -> None:
        tool, argv = yaml_verbs[which]
        run_case("registry_yaml", tool, list(argv), yaml_text=text)

    @hseed(ctx.seed + 2)
    @common
    @given(
        payload=st.one_of(
            json_val.map(json.dumps),
            st.text(max_size=200),
            st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
            st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
            st.sampled_from(['{"messages": []}', '{"prompt": "hi"}', "", "NaN", '{"a": 1e999999}', '"\\ud800"']),
        )
    )
    def fuzz_inputs(payload: str) -> None:
        reg.write_text(sample_text)
        argv = [
            "run",
            "--ref",
            SAMPLE,
            "--env",
            "dev",
            "--mode",
            "mock",
            "--inputs-json",
            payload,
            "--timeout",
            "5",
            "--json",
        ]
        run_case("inputs_json", "localctl", argv)

    t0 = time.monotonic()
    phase_secs = {}
    for fn in (fuzz_flags, fuzz_yaml, fuzz_inputs):
        t1 = time.monotonic()
        try:
            fn()
        except Exception as exc:  # a failure inside hypothesis itself: record, go on
            t.add("harness_errors", example=f"{fn.__name__}: {type(exc).__name__}: {exc}"[:500])
        phase_secs[fn.__name__] = round(time.monotonic() - t1, 1)
    in_process_s = time.monotonic() - t0
    reg.write_text(sample_text)

    # subprocess sample: the real entry points, each under a timeout (hangs)
    rng = random.Random(ctx.seed)
    chosen = rng.sample(samples, min(ctx.n["r4_subprocess"], len(samples)))
    hangs = sub_tb = 0
    sub_secs = []
    for tool, argv, text, env_extra, file_text in chosen:
        if text is not None:
            reg.write_text(text, encoding="utf-8", errors="surrogatepass")
        else:
            reg.write_text(sample_text)
        if file_text is not None:
            push_file.write_text(file_text)
        argv = [a.replace("\x00", "") for a in argv]
        env_extra = {k: v.replace("\x00", "") for k, v in env_extra.items()}
        res = ctx.cli(tool, *argv, root=ws, env=ctx.env(ws, **{**fuzz_env, **env_extra}), timeout=60)
        sub_secs.append(res.secs)
        hangs += res.hung
        # --debug prints the traceback of any error by design; there only ERR_INTERNAL is a crash.
        traceback_shown = "Traceback" in res.err and "--debug" not in argv
        if traceback_shown or "ERR_INTERNAL" in res.out + res.err:
            sub_tb += 1
            t.add("subprocess_tracebacks", example=f"{tool} {argv!r}: {(res.out + res.err)[-600:]}")
    reg.write_text(sample_text)

    # hang probes: files that never end or never open, as real subprocesses under a timeout
    fifo = ctx.work / "r4-fifo"
    os.mkfifo(fifo)
    zero_link = ctx.work / "r4-zero"
    zero_link.symlink_to("/dev/zero")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    start_dry = ["start", "--ref", SAMPLE, "--env", "dev", "--dry-run", "--json"]
    schema_dict = "\n".join(
        "  $schema: {a: 1}" if line.startswith("  $schema:") else line for line in sample_text.splitlines()
    )
    assert schema_dict != sample_text.rstrip("\n")
    probes: list[tuple[str, str, list[str], str | None]] = [
        ("registry.yaml is a FIFO", "processorctl", ["validate", "--json"], "fifo"),
        ("registry.yaml is a FIFO (start)", "localctl", start_dry, "fifo"),
        ("registry.yaml -> /dev/zero", "processorctl", ["validate", "--json"], "zero"),
        ("registry.yaml of 2 MiB", "processorctl", ["validate", "--json"], sample_text + "#" * (2 << 20) + "\n"),
        ("alias bomb", "processorctl", ["validate", "--json"], sample_text + laughs),
        (
            "depth 100000",
            "processorctl",
            ["validate", "--json"],
            sample_text + "deep: " + "[" * 100000 + "]" * 100000 + "\n",
        ),
        ("validate /dev/stdin (open pipe)", "processorctl", ["validate", "/dev/stdin", "--json"], None),
        ("validate FIFO path", "processorctl", ["validate", str(fifo), "--json"], None),
        ("--from-push /dev/zero", "processorctl", ["pin", "--ref", SAMPLE, "--from-push", "/dev/zero", "--json"], None),
        ("--from-push FIFO", "processorctl", ["pin", "--ref", SAMPLE, "--from-push", str(fifo), "--json"], None),
        (
            "--inputs-file /dev/zero",
            "localctl",
            ["run", "--ref", SAMPLE, "--env", "dev", "--inputs-file", "/dev/zero", "--json"],
            None,
        ),
        (
            "--inputs-file FIFO",
            "localctl",
            ["run", "--ref", SAMPLE, "--env", "dev", "--inputs-file", str(fifo), "--json"],
            None,
        ),
        ("inputs.$schema is a mapping", "processorctl", ["validate", "--json"], schema_dict),
        (
            "--inputs-json depth 60000",
            "localctl",
            ["run", "--ref", SAMPLE, "--env", "dev", "--inputs-json", "[" * 60000 + "]" * 60000, "--json"],
            None,
        ),
    ]
    probe_results = []
    for label, tool, argv, setup in probes:
        if reg.is_symlink() or reg.exists():
            reg.unlink()
        if setup == "fifo":
            os.mkfifo(reg)
        elif setup == "zero":
            reg.symlink_to("/dev/zero")
        else:
            reg.write_text(setup if setup is not None else sample_text)
        before = reg.read_bytes() if reg.is_file() and not reg.is_symlink() else None
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [str(BIN / tool), *argv],
            cwd=ws,
            env=ctx.env(ws, **fuzz_env),
            stdin=subprocess.PIPE,  # open and never written: a reader of stdin would block
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_limit_memory,  # a verb that reads /dev/zero must not take the shared machine down
        )
        try:
            so, se = proc.communicate(timeout=10)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            so, se = proc.communicate()
            hung = True
        try:
            code = json.loads(so).get("error", {}).get("code")
        except ValueError:
            code = None
        probe_results.append(
            {
                "probe": label,
                "exit": proc.returncode,
                "code": code,
                "secs": round(time.monotonic() - t0, 2),
                "hung": hung,
                "traceback": "Traceback" in se or "ERR_INTERNAL" in so + se,
                "stderr_tail": se[-300:] if hung or proc.returncode in (0, 1, None) or "Traceback" in se else "",
                "file_untouched": before is None or reg.read_bytes() == before,
            }
        )
    if reg.is_symlink() or reg.exists():
        reg.unlink()
    reg.write_text(sample_text)
    return {
        "hang_probes": probe_results,
        "hang_probe_hangs": sum(p["hung"] for p in probe_results),
        "hang_probe_tracebacks": sum(p["traceback"] for p in probe_results),
        "hang_probe_ok": sum(
            1
            for p in probe_results
            if not p["hung"] and not p["traceback"] and p["exit"] not in (0, None) and p["file_untouched"]
        ),
        "in_process_secs": round(in_process_s, 1),
        "phase_secs": phase_secs,
        "subprocess_cases": len(chosen),
        "subprocess_hangs": hangs,
        "subprocess_tracebacks": sub_tb,
        "subprocess_max_s": round(max(sub_secs, default=0.0), 2),
        **{k: v for k, v in t.counts.items()},
        "examples": t.examples,
    }


# ---------------------------------------------------------------------------------------------------
# R5: leaks


def r5(ctx: Ctx) -> dict[str, Any]:
    can = {
        "OPENAI_API_KEY": f"sk-canary-{uuid.uuid4().hex}",
        "LITELLM_API_BASE": f"http://127.0.0.1:9/canary-{uuid.uuid4().hex}",
        "REGISTRY_PASSWORD": f"canary-{uuid.uuid4().hex}",
        "MODAL_TOKEN_ID": f"ak-canary-{uuid.uuid4().hex}",
        "MODAL_TOKEN_SECRET": f"as-canary-{uuid.uuid4().hex}",
        "GITHUB_TOKEN": f"ghp_canary-{uuid.uuid4().hex}",
    }
    bad_token = can["GITHUB_TOKEN"] + "x"  # a wrong token, for the 401 path: also a secret, may be masked
    # A mask line holds one whole value: a secret, or the HTTP Basic credential git sends for a token
    # (base64 of `x-access-token:<token>`), which the pin bot masks too, as actions/checkout does.
    mask_ok = {*can.values(), bad_token}
    mask_ok |= {base64.b64encode(f"x-access-token:{v}".encode()).decode() for v in list(mask_ok)}
    places = 0
    leaks: list[dict[str, Any]] = []
    verbs_run: Counter[str] = Counter()
    verb_secs: list[tuple[str, float, int]] = []

    mask_lines = 0

    def check(where: str, text: str | bytes | None) -> None:
        # `::add-mask::VALUE` is the one line that must carry a value: the Actions runner consumes it
        # (from stdout or stderr) and masks VALUE everywhere after. It is counted, not scanned.
        nonlocal places, mask_lines
        places += 1
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        lines = (text or "").splitlines()
        masks = [line for line in lines if line.startswith("::add-mask::")]
        mask_lines += len(masks)
        for line in masks:  # a mask line must hold exactly one whole value, nothing else
            if line.removeprefix("::add-mask::") not in mask_ok:
                shape = line
                for name, value in can.items():
                    shape = shape.replace(value, f"<{name}>")
                leaks.append({"where": where, "secrets": scan(line, can), "mask_line_not_a_value": shape[:200]})
        found = scan("\n".join(line for line in lines if not line.startswith("::add-mask::")), can)
        if found:
            leaks.append({"where": where, "secrets": found})

    ws = ctx.workspace("r5")
    git(ws, "init", "--quiet", "-b", "main")
    git(ws, "add", ".")
    git(ws, "-c", "user.name=f", "-c", "user.email=f@x", "commit", "--quiet", "-m", "base")
    branch = f"rel{ctx.run_id}"
    app = f"{branch}-bench-llm-litellm-v1"
    ctx.containers.add(app)
    summary = ctx.work / "step-summary.md"
    outputs = ctx.work / "gh-output.txt"
    base_env = ctx.env(
        ws,
        THEORY_STATE_DIR=str(ctx.state),
        GIT_BRANCH=branch,
        GIT_USER="bench",
        GITHUB_ACTIONS="true",
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_OUTPUT=str(outputs),
        MODAL_SERVER_URL="http://127.0.0.1:9",
        **can,
    )

    def run(tool: str, *args: str, env: dict[str, str] | None = None, debug: bool = True, timeout: float = 300) -> Run:
        res = None
        for extra in (["--json"], ["--json", "--debug"]) if debug else (["--json"],):
            summary.write_text("")
            outputs.write_text("")
            res = ctx.cli(tool, *args, *extra, root=ws, env=env or base_env, timeout=timeout)
            name = f"{tool} {args[0]} {' '.join(extra)}"
            verb_secs.append(
                (
                    f"{name} {' '.join(args[1:])[:60]}",
                    round(res.secs, 1),
                    res.code,
                    res.err_code,
                    res.err[-300:] if res.code else "",
                )
            )
            verbs_run[f"{tool} {args[0]}"] += 1
            for what, text in (("stdout", res.out), ("stderr", res.err)):
                check(f"{name} {what}", text)
            check(f"{name} step-summary", summary.read_text())
            check(f"{name} outputs", outputs.read_text())
        assert res is not None
        return res

    # registry errors with a canary password: the auth registry refuses it (push, then pin)
    auth_env = {**base_env, "REGISTRY_USERNAME": "theory"}
    auth_repo = f"{ctx.auth_registry}/reliability/r5-{ctx.run_id}"
    run("processorctl", "set-repository", "--ref", SAMPLE, "--repository", auth_repo, debug=False)
    run("processorctl", "push", "--ref", SAMPLE, "--platforms", "linux/amd64", env=auth_env, timeout=600)
    run(
        "processorctl",
        "pin",
        "--ref",
        SAMPLE,
        "--platform",
        "amd64",
        "--oci",
        f"{auth_repo}@sha256:{'1' * 64}",
        env=auth_env,
    )
    repo = f"{ctx.registry}/reliability/r5-{ctx.run_id}"
    run("processorctl", "set-repository", "--ref", SAMPLE, "--repository", repo, debug=False)
    run("processorctl", "validate")
    # the "upstream" main holds the move (not the pins): the bot PR proposes the pins below
    git(ws, "-c", "user.name=f", "-c", "user.email=f@x", "commit", "--quiet", "-am", "moved to the loopback registry")
    remote = ctx.work / "r5remote.git"
    git(ctx.work, "init", "--quiet", "--bare", "-b", "main", str(remote))
    git(ws, "remote", "add", "origin", str(remote))
    git(ws, "push", "--quiet", "origin", "main")
    ctx.clones.append(ws)
    pushed = run("processorctl", "push", "--ref", SAMPLE, "--platforms", "linux/amd64", debug=False, timeout=600)
    push_json = ctx.work / "r5-push.json"
    push_json.write_text(pushed.out)
    run("processorctl", "pin", "--ref", SAMPLE, "--from-push", str(push_json))
    run("processorctl", "plan", "--base", "HEAD~1")
    # local target: start, sync-secrets, verify, runs, status, logs
    started = run("localctl", "start", "--ref", SAMPLE, "--env", "dev", debug=False, timeout=600)
    run("localctl", "sync-secrets", "--ref", SAMPLE, "--env", "dev", "--check")
    run("localctl", "sync-secrets", "--ref", SAMPLE, "--env", "dev", debug=False)
    run("localctl", "verify-digest", "--ref", SAMPLE, "--env", "dev")
    run("localctl", "run", "--ref", SAMPLE, "--env", "dev", "--mode", "mock", "--inputs-json", INPUTS)
    run(
        "localctl",
        "run",
        "--ref",
        SAMPLE,
        "--env",
        "dev",
        "--mode",
        "real",
        "--timeout",
        "20",
        "--inputs-json",
        INPUTS,
        debug=False,
    )
    run("localctl", "status", "--ref", SAMPLE, "--env", "dev")
    run("localctl", "logs", "--ref", SAMPLE, "--env", "dev", "--tail", "500")
    logs = subprocess.run([ctx.docker, "logs", app], capture_output=True, text=True, timeout=60)
    check("docker logs (container)", logs.stdout + logs.stderr)
    run(
        "theory-deploy",
        "pipeline",
        "--ref",
        SAMPLE,
        "--env",
        "dev",
        "--target",
        "local",
        "--stages",
        "pin,start,sync-secrets,verify,run",
        "--mode",
        "mock",
        "--from-push",
        str(push_json),
        debug=False,
        timeout=600,
    )
    run("localctl", "stop", "--ref", SAMPLE, "--env", "dev", debug=False)
    # modal front end, offline: names and dry runs with the Modal tokens set
    run("modalctl", "name", "--ref", SAMPLE, "--env", "dev")
    run("modalctl", "start", "--ref", SAMPLE, "--env", "dev", "--dry-run")
    if ctx.size == "full":  # it waits for Modal (MODAL_SERVER_URL points nowhere): ~57 s to ERR_MODAL_TIMEOUT
        run("modalctl", "sync-secrets", "--ref", SAMPLE, "--env", "dev", "--dry-run", debug=False)
    run("theory-deploy", "errors")
    # the bot PR: a bare remote and the GitHub stand-in, token = canary
    with GitHubStandIn(owner="acme", repo="processors", tokens={can["GITHUB_TOKEN"]}, git_remote=remote) as gh:
        pr_env = {**base_env, "GITHUB_REPOSITORY": "acme/processors", "GITHUB_API_URL": gh.url}
        run("processorctl", "pr", "--ref", SAMPLE, "--base", "main", env=pr_env)
        bad = {**pr_env, "GITHUB_TOKEN": bad_token}
        run("processorctl", "pr", "--ref", SAMPLE, "--base", "main", env=bad)
        prs = gh.pulls
        for p in prs:
            check("PR title+body", f"{p.get('title')}\n{p.get('body')}")
        for r in gh.requests:
            check("stand-in request body", json.dumps(r.body, default=str))
    check("bot commit messages", git(remote, "log", "--all", "--format=%B"))
    check("registry.yaml", (ws / processor_path(SAMPLE)).read_text())
    return {
        "places_checked": places,
        "add_mask_lines": mask_lines,
        "verb_secs": verb_secs,
        "leaks": len(leaks),
        "leak_places": leaks[:20],
        "verbs": dict(verbs_run),
        "secrets": sorted(can),
        "prs_checked": len(prs),
        "local_start_ok": started.code == 0,
        "start_error": None if started.code == 0 else started.err[-600:],
    }


# ---------------------------------------------------------------------------------------------------
# left behind


def leftovers(ctx: Ctx) -> dict[str, Any]:
    tmp_entries = sorted(str(p.relative_to(ctx.tmpdir)) for p in ctx.tmpdir.iterdir())
    worktrees = {}
    for clone in ctx.clones:
        n = len(worktree_paths(clone))
        if n:
            worktrees[str(clone.relative_to(ctx.work))] = n
    all_locks = sorted(str(p.relative_to(ctx.work)) for p in ctx.work.rglob("*.lock"))
    # flock files of the local target (its file locks and the deploy locks' sidecars) live on by design
    # (an flock is released when its holder dies, and deleting one would race its next taker);
    # anything else (git's index.lock, ref locks) would block the next run
    state_flocks = [p for p in all_locks if p.startswith(("state/locks/", "state/deploy-locks/"))]
    locks = [p for p in all_locks if p not in state_flocks]
    temp_files = sorted(
        str(p.relative_to(ctx.work)) for p in ctx.work.rglob(".registry.yaml.*") if p.name.endswith(".tmp")
    )
    ps = subprocess.run(
        [ctx.docker, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    containers = sorted(n for n in ps if ctx.run_id in n)
    images = subprocess.run(
        [ctx.docker, "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    ours = sorted(i for i in images if ctx.run_id in i)
    tagged = [i for i in ours if not i.endswith(":<none>")]
    return {
        "checked": [
            f"TMPDIR {ctx.tmpdir} (given to every product process)",
            f"git worktree list in {len(ctx.clones)} clones",
            "*.lock and .registry.yaml.*.tmp under the run's folder",
            "docker ps -a names containing the run id",
            "docker images whose repository contains the run id",
        ],
        "tmpdir_entries": tmp_entries,
        "worktrees": worktrees,
        "lock_files": locks,
        "state_flock_files": state_flocks,
        "temp_files": temp_files,
        "containers": containers,
        "local_tags": tagged,
        "untagged_pulled_images": len(ours) - len(tagged),
    }


def cleanup(ctx: Ctx) -> None:
    for name in ctx.containers:
        subprocess.run([ctx.docker, "rm", "-f", name], capture_output=True, timeout=60)
    shutil.rmtree(ctx.work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------


def table(res: dict[str, Any]) -> str:
    rows = []
    if "R1" in res:
        r = res["R1"]
        rows.append(
            f"R1 registry faults   runs={r['runs']} ok={r['ok']} first_try_ok={r['first_try_ok']} wrong_pins={r['wrong_pins']} "
            f"fast_fails(401/403/404)={r['fast_ok']}/{r['fast_total']} max_fail_s={r['max_fail_s_no_export']:.2f} "
            f"(push+404 {max((f['secs'] for f in r['fast_fails'] if f['verb'] == 'push' and f['status'] == 404), default=0):.1f}s: exports first) "
            f"injected={sum(r['injected_faults'].values())} {r['injected_faults']}"
        )
    if "R2" in res:
        p, q = res["R2"]["pin"], res["R2"]["pr"]
        rows.append(
            f"R2 crashes (pin)     kills={p.get('kills', 0)} (+{p.get('finished_before_kill', 0)} done first) parse_ok={p.get('parse_ok', 0)} "
            f"old_or_new={p.get('old_or_new', 0)} rerun_ok={p.get('rerun_ok', 0)} tmp_after_kill={p.get('tmp_files_after_kill', 0)} tmp_after_rerun={p.get('tmp_files_after_rerun', 0)}"
        )
        rows.append(
            f"R2 crashes (pr)      kills={q.get('kills', 0)} (+{q.get('finished_before_kill', 0)} done first) rerun_ok={q.get('rerun_ok', 0)} "
            f"half_written_branches={q.get('half_written_branches', 0)} absent/old/complete="
            f"{q.get('branch_absent', 0)}/{q.get('branch_old_tip', 0)}/{q.get('branch_complete_bot_commit', 0)} "
            f"stale_worktrees_made(KILL/TERM/INT of {q.get('signal_SIGKILL', 0)}/{q.get('signal_SIGTERM', 0)}/{q.get('signal_SIGINT', 0)})="
            f"{q.get('new_stale_worktrees_after_SIGKILL', 0)}/{q.get('new_stale_worktrees_after_SIGTERM', 0)}/"
            f"{q.get('new_stale_worktrees_after_SIGINT', 0)} targeted(in worktree window)="
            f"{q.get('targeted_stale_worktrees_after_SIGKILL', 0)}/{q.get('targeted_stale_worktrees_after_SIGTERM', 0)}/"
            f"{q.get('targeted_stale_worktrees_after_SIGINT', 0)} of {q.get('targeted_SIGKILL', 0)}/{q.get('targeted_SIGTERM', 0)}/"
            f"{q.get('targeted_SIGINT', 0)} at_end={q['stale_worktrees_at_end']} "
            f"wedged_reruns={q.get('rerun_failed_wedged_by_stale_worktree', 0)} "
            f"kill_in_worktree_add->rerun_ok={q.get('in_worktree_add_rerun_ok', 0)}/{q.get('in_worktree_add_kills', 0)} "
            f"open_prs={q.get('open_prs_at_end', 0)}"
        )
    if "R3" in res:
        r = res["R3"]
        fails = {k: v for k, v in r.items() if k.startswith(("pin_failed", "pr_failed"))}
        rows.append(
            f"R3 concurrency       rounds={r['rounds']} pins_ok={r.get('pin_ok', 0)} prs_ok={r.get('pr_ok', 0)} failed={fails or 0} "
            f"lost_updates={r.get('lost_pin_updates', 0) + r.get('lost_branch_updates', 0)} "
            f"one_pr_per_processor={r['processors_with_one_pr']}/{r['processors']} "
            f"peak_overlap={max((o['peak_overlap'] for o in r['overlap']), default=0)} late={sum(o['late'] for o in r['overlap'])}"
        )
    if "R4" in res:
        r = res["R4"]
        rows.append(
            f"R4 hostile input     cases={r.get('cases', 0)} (flags={r.get('cases_flags', 0)} yaml={r.get('cases_registry_yaml', 0)} "
            f"inputs={r.get('cases_inputs_json', 0)}) tracebacks={r.get('tracebacks', 0)} json_violations={r.get('json_contract_violations', 0)} "
            f"file_changed_after_failure={r.get('file_changed_after_failure', 0)} hangs={r['subprocess_hangs']}/{r['subprocess_cases']} "
            f"subprocess_tracebacks={r['subprocess_tracebacks']} option_injection={r.get('option_injection', 0)} "
            f"hang_probes_ok={r['hang_probe_ok']}/{len(r['hang_probes'])}"
        )
    if "R5" in res:
        r = res["R5"]
        rows.append(
            f"R5 leaks             places_checked={r['places_checked']} leaks={r['leaks']} verbs={len(r['verbs'])} "
            f"runs={sum(r['verbs'].values())} secrets={len(r['secrets'])} (add-mask lines={r['add_mask_lines']}, not counted)"
        )
    if "left_behind" in res:
        r = res["left_behind"]
        rows.append(
            f"left behind          tmpdir={len(r['tmpdir_entries'])} worktrees={sum(r['worktrees'].values())} locks={len(r['lock_files'])} "
            f"temp_files={len(r['temp_files'])} containers={len(r['containers'])} local_tags={len(r['local_tags'])} "
            f"(kept by design: flock files={len(r['state_flock_files'])}, untagged pulled images={r['untagged_pulled_images']})"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="ci")
    ap.add_argument("--only", default="R1,R2,R3,R4,R5", help="comma-separated sections")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reliability.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=N", help=f"override a size figure: {sorted(SIZES['ci'])}"
    )
    opts = ap.parse_args()
    ctx = Ctx(opts.size, opts.seed)
    for item in opts.set:
        key, _, value = item.partition("=")
        if key not in ctx.n:
            ap.error(f"--set {key}: not one of {sorted(ctx.n)}")
        ctx.n = {**ctx.n, key: int(value)}
    sections = {"R1": r1, "R2": r2, "R3": r3, "R4": r4, "R5": r5}
    results: dict[str, Any] = {"size": opts.size, "n": ctx.n, "seed": opts.seed, "run_id": ctx.run_id, "secs": {}}
    t_all = time.monotonic()
    try:
        for name in opts.only.split(","):
            t0 = time.monotonic()
            print(f"[reliability] {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = sections[name](ctx)
            except Exception:
                results.setdefault("section_errors", {})[name] = traceback.format_exc()[-3000:]
                print(results["section_errors"][name], file=sys.stderr)
            results["secs"][name] = round(time.monotonic() - t0, 1)
        try:
            results["left_behind"] = leftovers(ctx)
        except Exception:
            results.setdefault("section_errors", {})["left_behind"] = traceback.format_exc()[-3000:]
    finally:
        results["secs"]["total"] = round(time.monotonic() - t_all, 1)
        if not opts.keep:
            cleanup(ctx)
        else:
            results["work"] = str(ctx.work)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"wall: {results['secs']}  -> {out}")
    return 1 if results.get("section_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
