"""The stage engine: build → push → pin → pr → start → sync-secrets → verify → run.

Every front end runs processors through this one module: `theory-deploy pipeline` on a laptop,
`processorctl publish` (build, push, pin), and every GitHub Action (`theory_deploy.action`). So there
is one list of stages, one parser for `--stages`, and one rule for which digest an environment
deploys:

- **dev** deploys what this run pushed (or what `--from-push` names), so a feature branch runs its own
  code even before the pin is merged; with nothing pushed it deploys the pin.
- **staging** and **main** deploy the pin registry.yaml holds on the checked-out branch, never a
  rebuild: promotion is exact. Build stages are refused there.

Each stage calls the same functions as its own verb, so the engine cannot drift from what the verbs
do. Stages report their outcome and wall time; a failure stops that processor's run and names its
stage. With several refs, `keep_going` carries on with the next processor and the run fails at the
end.

The target stages (start, sync-secrets, verify, run) of one app are a critical section: the app's
deploy lock (deploy_lock.py, kept in the target) is taken before the first of them and released after
the last one, or when one fails, so no other run can deploy the app between this run's start and its
verify. `lock_holder` names the holder (a CI run: the same holder in every job, with
`release_lock=False` until the last job); without one the run uses a holder of its own and always
releases it. Each target stage's report carries the lock's facts, and every stage its start and end
time (`started_at`/`finished_at`, epoch seconds).

On an unchanged processor a re-run is quick and changes nothing: the build is served from the
engine's cache, the push finds every blob and manifest already there, the pin is `unchanged`, the
app already runs that digest, and the secrets are unchanged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import build as build_mod
from . import gha, output, pin, push
from .deploy_lock import DEFAULT_TTL_S, DEFAULT_WAIT_S, DeployLock, Held, check_holder, new_holder
from .errors import InputsError, TheoryDeployError, UsageError
from .oci import RegistryClients
from .push_records import PushRecord
from .refs import ENVIRONMENTS, Environment, ImageRef, Platform, ProcessorRef, parse_repository
from .registry_file import LoadedProcessor, load_processor, set_repository
from .targets import get_target
from .targets.base import AppContext, Target

STAGES = ("build", "push", "pin", "pr", "start", "sync-secrets", "verify", "run")
# `build-push` is how the GitHub Actions have always spelt the first two stages.
STAGE_ALIASES = {"build-push": ("build", "push")}
BUILD_STAGES = ("build", "push", "pin", "pr")
TARGET_STAGES = ("start", "sync-secrets", "verify", "run")
PROMOTION_ENVS = ("staging", "main")
MODES = ("mock", "real")


# ---------------------------------------------------------------------------------------------------
# Which stages run
# ---------------------------------------------------------------------------------------------------


def parse_stages(text: str | None, *, where: str = "--stages") -> list[str] | None:
    """The stages named in `text`, in pipeline order, or None for `all` (resolved per environment)."""
    items = [s for s in re.split(r"[\s,]+", text or "") if s]
    if not items or items == ["all"]:
        return None
    chosen: set[str] = set()
    unknown = []
    for item in items:
        if item in STAGES:
            chosen.add(item)
        elif item in STAGE_ALIASES:
            chosen.update(STAGE_ALIASES[item])
        else:
            unknown.append(item)
    if unknown:
        raise UsageError(
            f"{where}: unknown stage(s) {', '.join(unknown)}; choose `all` or from {', '.join(STAGES)}.",
            remedy=f"e.g. {where} build,push,pin",
        )
    return [s for s in STAGES if s in chosen]  # always in pipeline order


def resolve_stages(
    requested: Sequence[str] | None, *, env: Environment | None, mode: str | None, open_pr: bool
) -> list[str]:
    """`all` made concrete: dev builds, pushes, pins (and opens the pin PR when asked), then deploys;
    staging and main only deploy the pin; `run` joins when a mode is set."""
    if requested is not None:
        return list(requested)
    chosen: list[str] = []
    if env not in PROMOTION_ENVS:
        chosen += ["build", "push", "pin"] + (["pr"] if open_pr else [])
    if env is not None:
        chosen += ["start", "sync-secrets", "verify"] + (["run"] if mode else [])
    return chosen


def stage_problems(
    stages: Sequence[str], *, env: Environment | None, mode: str | None, from_push: bool, pr_base: str | None
) -> list[str]:
    """Every reason this combination cannot run, found before anything runs."""
    problems = []
    if env in PROMOTION_ENVS:
        building = [s for s in stages if s in BUILD_STAGES]
        if building:
            problems.append(
                f"stages {', '.join(building)} are not allowed in {env}: promotion is exact, {env} deploys the "
                "digest registry.yaml pins on this branch and never rebuilds. Build and pin in dev, then merge the pins."
            )
    if env is None and any(s in TARGET_STAGES for s in stages):
        problems.append("stages start/sync-secrets/verify/run need an environment: dev, staging or main.")
    if "run" in stages and not mode:
        problems.append("stage run needs a mode (mock or real).")
    if from_push and any(s in ("build", "push") for s in stages):
        problems.append("from-push names digests already pushed: drop the build and push stages, or from-push.")
    if "push" in stages and "build" not in stages:
        problems.append("stage push pushes what this run built: add build, or give from-push instead.")
    if "pin" in stages and not ({"push"} & set(stages) or from_push):
        problems.append("stage pin pins what this run pushed: add build and push, or give from-push.")
    if "pr" in stages and not pr_base:
        problems.append("stage pr needs the branch the pin PR targets (pr-base / --pr-base).")
    return problems


def default_inputs(processor: LoadedProcessor) -> dict[str, Any]:
    """The first `examples` entry of the processor's inputs schema: a run needs no hand-written JSON."""
    examples = processor.spec.inputs.get("examples")
    if isinstance(examples, list) and examples and isinstance(examples[0], dict):
        return examples[0]
    raise InputsError(
        f"{processor.ref}: the run stage has no inputs: none were given and the inputs schema of "
        f"{processor.path} has no `examples`.",
        remedy="Pass inputs (--inputs-json, or the action's inputs-json), or add `examples: [{...}]` to `inputs` "
        "in registry.yaml.",
        details={"file": str(processor.path)},
    )


def deploy_source(env: Environment | None, pushed: PushRecord | None) -> str:
    """Where the deployed digest comes from: `pushed` (dev, after a push) or `pin` (everything else)."""
    return "pushed" if env == "dev" and pushed is not None else "pin"


# ---------------------------------------------------------------------------------------------------
# The request and what each processor's run reports
# ---------------------------------------------------------------------------------------------------


@dataclass
class PipelineRequest:
    refs: list[ProcessorRef]
    env: Environment | None
    target: str = "local"
    mode: str | None = "mock"
    stages: Sequence[str] = ()
    platforms: list[str] | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    repository: str | None = None  # push (and pin) there instead of image.repository
    from_push: Path | None = None  # a push record (file or folder of push-<slug>.json) instead of build+push
    pr_base: str | None = None
    pr_remote: str = "origin"
    open_pr: bool = True  # False: push the bot branch but open no PR
    inputs: dict[str, Any] | None = None
    timeout_s: float | None = None
    fail_on_missing: bool | None = None  # None: only in real mode
    keep_going: bool = False
    repo_root: Path | None = None
    debug: bool = False  # the build's full engine output
    no_cache: bool = False  # run every build step again (`processorctl build --no-cache`)
    # The app's deploy lock, held from the first target stage to the last (deploy_lock.py). None: a
    # holder of this run's own (`user@host:pid:uuid`), always released at the end.
    lock_holder: str | None = None
    release_lock: bool = True  # False: keep a given holder's lock after the last stage (a later job continues it)
    continue_lock: bool = False  # True: a later job of the holder's run; the lock must still be its own
    lock_wait_s: float = DEFAULT_WAIT_S
    lock_ttl_s: float = DEFAULT_TTL_S

    def check(self) -> None:
        problems = stage_problems(
            self.stages, env=self.env, mode=self.mode, from_push=self.from_push is not None, pr_base=self.pr_base
        )
        if self.continue_lock and self.lock_holder is None:
            problems.append("continuing a deploy lock needs the holder that took it (lock_holder).")
        if self.lock_holder is not None:
            try:
                check_holder(self.lock_holder, "lock holder")
            except UsageError as err:
                problems.append(err.message)
        if self.lock_wait_s < 0 or self.lock_ttl_s <= 0:
            problems.append("the lock wait must be 0 or more seconds and the lock lease (ttl) more than 0.")
        if self.env is not None and self.env not in ENVIRONMENTS:
            problems.insert(0, f"{self.env!r} is not an environment; expected dev, staging or main.")
        if self.mode and self.mode not in MODES:
            problems.append(f"{self.mode!r} is not a mode; expected mock or real.")
        if not self.refs:
            problems.append("no processor ref given.")
        if problems:
            raise UsageError("cannot run these stages:\n  - " + "\n  - ".join(problems))


@dataclass
class StageReport:
    name: str
    status: str  # ok | failed
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None  # epoch seconds: when stages of two runs happened, in one clock
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"stage": self.name, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.started_at is not None and self.finished_at is not None:
            data.update(started_at=round(self.started_at, 3), finished_at=round(self.finished_at, 3))
        return {**data, **self.detail}


@dataclass
class ProcessorResult:
    """What one processor's run did: the facts every front end reports (JSON, outputs, summary)."""

    ref: str
    registry_path: Path | None = None
    pins_before: dict[str, str | None] = field(default_factory=dict)
    pushed: PushRecord | None = None
    pins: dict[str, Any] = field(default_factory=dict)
    pr_url: str = ""
    pr_action: str = ""
    app: str = ""
    url: str = ""
    platform: str = ""
    deployed: str = ""
    verified: bool | None = None
    secrets: dict[str, Any] = field(default_factory=dict)
    envelope: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None  # the deploy lock's facts (holder, waited_s, ..., released)
    reports: list[StageReport] = field(default_factory=list)
    error: TheoryDeployError | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ref": self.ref, "app": self.app, "stages": [r.to_json() for r in self.reports]}
        if self.lock is not None:
            data["lock"] = self.lock
        if self.pushed is not None:
            data["pushed"] = self.pushed.to_json()
        if self.deployed:
            data["deployed"] = self.deployed
        if self.verified is not None:
            data["verified"] = self.verified
        if self.error is not None:
            data["error"] = {"code": self.error.code, "message": self.error.render()}
        return data


# ---------------------------------------------------------------------------------------------------
# One processor through its stages
# ---------------------------------------------------------------------------------------------------


class _ProcessorRun:
    def __init__(self, request: PipelineRequest, ref: ProcessorRef, target: Target, clients: RegistryClients):
        self.request, self.ref, self.target, self.clients = request, ref, target, clients
        self.result = ProcessorResult(str(ref))
        self.processor = load_processor(ref, request.repo_root)
        self.result.registry_path = self.processor.path
        self.result.pins_before = {str(arch): pin for arch, pin in self.processor.spec.pins().items()}
        self.built: dict[str, build_mod.BuiltImage] = {}
        if request.from_push is not None:
            self.result.pushed = PushRecord.read(request.from_push, ref.slug)
        self._holder = request.lock_holder or new_holder()
        self._lock: DeployLock | None = None
        self._held: Held | None = None
        self._waited = 0.0
        self._image: ImageRef | None = None  # prepare_start: what start deploys
        self._inputs: dict[str, Any] = {}  # prepare_run: what run sends

    def app(self) -> AppContext:
        assert self.request.env is not None  # stage_problems refuses target stages without an environment
        return AppContext.for_processor(self.processor, self.request.env)

    def _repository(self) -> ImageRef:
        # Pins must name image.repository: pushing elsewhere (`repository`) moves the processor there first.
        text = self.request.repository or self.processor.spec.image.repository
        return parse_repository(text, where="repository" if self.request.repository else "image.repository")

    def _oci_to_deploy(self) -> str | None:
        """dev after a push: the pushed digest for this target's platform; otherwise None (the pin)."""
        pushed = self.result.pushed
        if deploy_source(self.request.env, pushed) != "pushed" or pushed is None:
            return None
        digest = pushed.platforms.get(self.target.platform)
        if not digest:
            raise UsageError(
                f"{self.ref}: the push has no {self.target.platform} digest, which the {self.target.kind} target "
                f"runs (pushed: {', '.join(pushed.platforms) or 'none'}).",
                remedy=f"Build linux/{self.target.platform} too (--platforms).",
            )
        return digest

    # --- stages --------------------------------------------------------------------------------------
    def stage_build(self) -> dict[str, Any]:
        platforms = self.request.platforms or self.processor.spec.platform_names()
        if self.target.platform not in platforms and set(TARGET_STAGES) & set(self.request.stages):
            raise UsageError(
                f"--platforms {','.join(platforms)} leaves out {self.target.platform}, which the "
                f"{self.target.kind} target runs."
            )
        self.built = build_mod.build_platform_images(
            self.processor.spec,
            self.processor.repo_root,
            platforms,
            self.request.build_args,
            registry_path=self.processor.path,
            debug=self.request.debug,
            no_cache=self.request.no_cache,
        )
        return {"images": {arch: b.image_id for arch, b in self.built.items()}}

    def stage_push(self) -> dict[str, Any]:
        repository = self._repository()
        pushed = push.push_platform_images(
            self.built, repository, self.clients(repository.registry), tag=self.processor.ref.slug
        )
        self.result.pushed = PushRecord.from_result(str(self.ref), pushed)
        return {
            **pushed.to_json(),
            "uploaded_blobs": pushed.uploaded_blobs,
            "skipped_blobs": pushed.skipped_blobs,
            "mounted_blobs": pushed.mounted_blobs,
        }

    def stage_pin(self) -> dict[str, Any]:
        pushed = self.result.pushed
        assert pushed is not None  # stage_problems: pin needs a push or from-push
        repository = self.request.repository
        if repository and repository != self.processor.spec.image.repository:
            # Pins always name image.repository. Pinning what went elsewhere (a loopback registry in a
            # smoke test) moves this work tree's registry.yaml there first; never in a run whose pins go
            # into a pull request.
            if "pr" in self.request.stages:
                raise UsageError(
                    f"{self.ref}: repository {repository} is not image.repository "
                    f"({self.processor.spec.image.repository}); a pin PR must pin image.repository.",
                    remedy="Drop the repository input, or the pr stage.",
                )
            set_repository(self.processor.path, repository)
            gha.annotate("notice", f"{self.ref}: image.repository set to {repository} in this work tree only")
            self.processor = load_processor(self.ref, self.processor.repo_root)
        result = pin.verify_and_pin(self.processor, dict(pushed.platforms), self.clients)
        self.processor = load_processor(self.ref, self.processor.repo_root)  # re-read the new pins
        self.result.pins = result["pins"]
        return {"pins": result["pins"], "changed": result["changed"], "file": result["file"]}

    def stage_pr(self) -> dict[str, Any]:
        from .gitpr import propose_pins  # git and the GitHub client: loaded only when a PR is asked for

        assert self.request.pr_base  # stage_problems: pr needs a base branch
        result = propose_pins(
            [self.processor], base=self.request.pr_base, remote=self.request.pr_remote, open_pr=self.request.open_pr
        )
        self.result.pr_url = str(result.get("pr_url") or "")
        processors = result.get("processors") or [{}]
        opened = processors[0].get("pr") or {}
        self.result.pr_action = str(opened.get("result") or processors[0].get("status") or "none")
        return {"pr_url": self.result.pr_url, "action": self.result.pr_action}

    # What a target stage can check without the target is checked before the deploy lock is taken, so
    # a missing pin or missing run inputs fail at once, never after a wait for (or a hold on) the lock.
    def prepare_start(self) -> None:
        self._image = self.target.image_to_deploy(self.app(), self._oci_to_deploy())

    def prepare_run(self) -> None:
        self._inputs = self.request.inputs if self.request.inputs is not None else default_inputs(self.processor)

    def stage_start(self) -> dict[str, Any]:
        app = self.app()
        image = self._image
        assert image is not None  # run() prepares start before it
        self.result.deployed = str(image)
        result = self.target.start(app, image)
        self.result.app = str(result.get("app") or app.name)
        self.result.url = str(result.get("url") or result.get("web_url") or "")
        return result

    def stage_sync_secrets(self) -> dict[str, Any]:
        # Real mode cannot run without its required secrets: fail here, naming them, not mid-run.
        fail = self.request.fail_on_missing
        if fail is None:
            fail = self.request.mode == "real"
        result = self.target.sync_secrets(self.app(), check=False, fail_on_missing=fail)
        self.result.secrets = {k: result[k] for k in ("present", "missing") if k in result}
        return result

    def stage_verify(self) -> dict[str, Any]:
        self.result.verified = False
        oci = self._oci_to_deploy()
        if not self.result.deployed:  # verify alone: what it expects to run, reported even on a mismatch
            pin = self.processor.spec.pins().get(self.target.platform)
            self.result.deployed = oci or pin or ""
        result = self.target.verify_digest(self.app(), oci)
        self.result.verified = bool(result.get("verified"))
        self.result.app = self.result.app or str(result.get("app") or "")
        self.result.deployed = self.result.deployed or str(result.get("expected") or "")
        return result

    def stage_run(self) -> dict[str, Any]:
        inputs = self._inputs
        timeout = self.request.timeout_s or float(self.processor.spec.runtime.timeout_s)
        assert self.request.mode  # stage_problems: run needs a mode
        result = self.target.run(
            self.app(), mode=self.request.mode, inputs=inputs, timeout_s=timeout, stream_tokens=False
        )
        self.result.envelope = result["envelope"]
        return {"envelope": result["envelope"]}

    # --- driver --------------------------------------------------------------------------------------
    def run(self, progress: Callable[[str], None], label: str) -> ProcessorResult:
        handlers: dict[str, Callable[[], dict[str, Any]]] = {
            "build": self.stage_build,
            "push": self.stage_push,
            "pin": self.stage_pin,
            "pr": self.stage_pr,
            "start": self.stage_start,
            "sync-secrets": self.stage_sync_secrets,
            "verify": self.stage_verify,
            "run": self.stage_run,
        }
        target_stages = [s for s in self.request.stages if s in TARGET_STAGES]
        if self.request.env is not None and target_stages:
            self.result.platform = self.target.platform
            self.result.app = self.app().name
        try:
            for name in self.request.stages:
                progress(f"==> {label}{name}")
                t0, started_at = time.monotonic(), time.time()
                try:
                    with gha.group(f"theory-deploy {name}: {self.ref}"):
                        if name in TARGET_STAGES:
                            prepare = {"start": self.prepare_start, "run": self.prepare_run}.get(name)
                            if prepare is not None:
                                prepare()
                            self._hold_lock()  # the wait is the lock's `waited_s`, not the stage's time
                            t0, started_at = time.monotonic(), time.time()
                        detail = dict(handlers[name]())
                        if target_stages and name == target_stages[-1]:
                            self._release_lock()
                except TheoryDeployError as err:
                    self._release_lock()
                    failed = {"error": {"code": err.code, "message": err.render()}}
                    if self.result.lock is not None:
                        failed["lock"] = dict(self.result.lock)
                    self.result.reports.append(
                        StageReport(name, "failed", time.monotonic() - t0, failed, started_at, time.time())
                    )
                    err.details = {**err.details, "stage": name, "stages": [r.to_json() for r in self.result.reports]}
                    err.message = f"{label}pipeline stopped at {name}: {err.message}"
                    self.result.error = err
                    return self.result
                detail.pop("summary", None)
                if name in TARGET_STAGES and self.result.lock is not None:
                    detail["lock"] = dict(self.result.lock)
                report = StageReport(name, "ok", time.monotonic() - t0, detail, started_at, time.time())
                self.result.reports.append(report)
                progress(f"<== {label}{name}: ok in {report.seconds:.1f}s")
            return self.result
        finally:
            self._release_lock()  # interrupted (Ctrl-C, SIGTERM, a bug): the lease must not outlive us

    # --- the deploy lock -----------------------------------------------------------------------------
    def _hold_lock(self) -> None:
        """Before each target stage: take the app's deploy lock (the first), or renew it (the next ones:
        then anything but our own record means the lease was lost, and the run stops)."""
        request = self.request
        if self._lock is None:
            self._lock = self.target.deploy_lock(self.app())
        self._held = self._lock.hold(
            self._holder,
            wait_s=request.lock_wait_s,
            ttl_s=request.lock_ttl_s,
            expect_held=self._held is not None or request.continue_lock,
        )
        self._waited += self._held.waited_s
        self.result.lock = {**self._held.to_json(), "waited_s": round(self._waited, 3)}

    def _release_lock(self) -> None:
        """After the last target stage, or when one fails: release the lock, unless the request keeps a
        holder it named (`release_lock=False`) for a later job. A holder of our own is always released."""
        held, lock = self._held, self._lock
        if held is None or lock is None or held.released:
            return
        if not (self.request.release_lock or self.request.lock_holder is None):
            return
        try:
            outcome = lock.release(held.holder)
        except TheoryDeployError as err:
            output.progress(f"could not release the deploy lock of {lock.app}: {err.message}")
            return
        held.released = bool(outcome.get("released"))
        held.released_at = time.time() if held.released else None
        if self.result.lock is not None:
            self.result.lock.update(released=held.released)
            if held.released_at is not None:
                self.result.lock["released_at"] = held.released_at


# ---------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------


class Pipeline:
    def __init__(self, request: PipelineRequest, progress: Callable[[str], None] = output.progress):
        request.check()
        self.request = request
        self.progress = progress
        self.target = get_target(request.target)
        self.results: list[ProcessorResult] = []

    def run_all(self) -> list[ProcessorResult]:
        """Run every ref; stop at the first failure unless keep_going. Failures are in the results."""
        clients = RegistryClients(credentials_host=self._credentials_host())
        several = len(self.request.refs) > 1
        try:
            for ref in self.request.refs:
                try:
                    run = _ProcessorRun(self.request, ref, self.target, clients)
                except TheoryDeployError as err:  # the processor cannot even be loaded
                    result = ProcessorResult(str(ref), error=err)
                else:
                    result = run.run(self.progress, f"{ref}: " if several else "")
                self.results.append(result)
                if result.error is not None and not self.request.keep_going:
                    break
        finally:
            clients.close()
        return self.results

    def _credentials_host(self) -> str | None:
        """REGISTRY_USERNAME/REGISTRY_PASSWORD belong to one registry: where this run pushes
        (`repository`), else the first processor's image.repository (THEORY_REGISTRY_HOST overrides)."""
        if self.request.repository:
            return parse_repository(self.request.repository, where="repository").registry
        try:
            return load_processor(self.request.refs[0], self.request.repo_root).registry
        except TheoryDeployError:
            return None  # the run reports the processor's own error

    def run(self) -> dict[str, Any]:
        """Run, and return the report as a verb's JSON; raise the first failure (with every result)."""
        started = time.monotonic()
        results = self.run_all()
        failed = [r for r in results if r.error is not None]
        if failed:
            err = failed[0].error
            assert err is not None
            if len(self.request.refs) > 1:
                err.details = {**err.details, "results": [r.to_json() for r in results]}
                if len(failed) > 1:
                    err.message += f" ({len(failed)} of {len(self.request.refs)} processors failed.)"
            raise err
        return self._report(results, time.monotonic() - started)

    def _report(self, results: list[ProcessorResult], seconds: float) -> dict[str, Any]:
        request = self.request
        where = f"{request.target}/{request.env}" if request.env else "registry"
        lines = []
        for r in results:
            lines.append(f"pipeline {r.ref} -> {where}" + (f" ({r.app})" if r.app else "") + ": ok")
            lines += [f"  {s.name:<13} {s.status:<7} {s.seconds:6.1f}s" for s in r.reports]
            if r.lock is not None:
                kept = "released" if r.lock.get("released") else "kept"
                lines.append(f"  deploy lock: {r.lock['holder']} ({kept}; waited {r.lock['waited_s']:.1f}s)")
        report: dict[str, Any] = {
            "env": request.env,
            "target": request.target,
            "seconds": round(seconds, 3),
            "summary": "\n".join(lines),
        }
        if len(results) == 1:  # one ref: the stages at the top level, as the verb has always printed
            only = results[0]
            report.update(ref=only.ref, app=only.app, stages=[s.to_json() for s in only.reports])
            if only.lock is not None:
                report["lock"] = only.lock
        else:
            report["results"] = [r.to_json() for r in results]
        return report


def platform_of(target: str) -> Platform:
    """The platform a target runs, without building the target (the Modal SDK stays unloaded)."""
    return get_target(target).platform if target == "local" else "amd64"
