"""The one-command pipeline: build → push → pin → start → sync-secrets → verify → run.

Each stage calls the same functions as its own verb, so the pipeline can never drift from what the
verbs do. Stages report their outcome and wall time; the first failure stops the run and names its
stage. On an unchanged processor a re-run is quick and changes nothing: the build is served from the
engine's cache, the push finds every blob and manifest already there, the pin is `unchanged`, the
app is already running at that digest, and the secrets are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import build as build_mod
from . import output, pin, push
from .errors import TheoryDeployError, UsageError
from .oci import RegistryClients
from .refs import Environment, ImageRef, ProcessorRef, parse_repository
from .registry_file import LoadedProcessor, load_processor
from .targets import get_target
from .targets.base import AppContext

STAGES = ("build", "push", "pin", "start", "sync-secrets", "verify", "run")


@dataclass
class PipelineRequest:
    ref: ProcessorRef
    env: Environment
    target: str
    mode: str = "mock"
    platforms: list[str] | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    stages: Sequence[str] = STAGES
    inputs: dict[str, Any] | None = None
    timeout_s: float | None = None


@dataclass
class StageReport:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.name, "status": self.status, "seconds": round(self.seconds, 3), **self.detail}


def parse_stages(text: str | None) -> list[str]:
    if not text or text == "all":
        return list(STAGES)
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}.")
    return [s for s in STAGES if s in stages]  # always in pipeline order


def default_inputs(processor: LoadedProcessor) -> dict[str, Any]:
    """The first `examples` entry of the processor's inputs schema: a run needs no hand-written JSON."""
    examples = processor.spec.inputs.get("examples")
    if isinstance(examples, list) and examples and isinstance(examples[0], dict):
        return examples[0]
    raise UsageError(
        f"{processor.ref}: no --inputs-json given and its inputs schema has no `examples`.",
        remedy="Pass --inputs-json, or add `examples: [{...}]` to `inputs` in registry.yaml.",
    )


class Pipeline:
    def __init__(self, request: PipelineRequest, progress: Callable[[str], None] = output.progress):
        self.request = request
        self.progress = progress
        self.target = get_target(request.target)
        self.processor = load_processor(request.ref)
        self.clients = RegistryClients()
        self.built: dict[str, build_mod.BuiltImage] = {}
        self.pushed: push.PushResult | None = None

    def _repository(self) -> ImageRef:
        # Pins must name image.repository, so the pipeline pushes exactly there (to run against another
        # registry, move the processor first: `processorctl set-repository`).
        return parse_repository(self.processor.spec.image.repository, where="image.repository")

    def _app(self) -> AppContext:
        return AppContext.for_processor(self.processor, self.request.env)

    # --- stages --------------------------------------------------------------------------------------
    def stage_build(self) -> dict[str, Any]:
        platforms = self.request.platforms or self.processor.spec.platform_names()
        if self.target.platform not in platforms and {"start", "verify", "run"} & set(self.request.stages):
            raise UsageError(
                f"--platforms {','.join(platforms)} leaves out {self.target.platform}, which the {self.target.kind} target runs."
            )
        self.built = build_mod.build_platform_images(
            self.processor.spec,
            self.processor.repo_root,
            platforms,
            self.request.build_args,
            registry_path=self.processor.path,
        )
        return {"images": {arch: b.image_id for arch, b in self.built.items()}}

    def stage_push(self) -> dict[str, Any]:
        if not self.built:
            raise UsageError("push needs the build stage in the same run (add build to --stages).")
        repository = self._repository()
        self.pushed = push.push_platform_images(
            self.built, repository, self.clients(repository.registry), tag=self.processor.ref.slug
        )
        return {
            **self.pushed.to_json(),
            "uploaded_blobs": self.pushed.uploaded_blobs,
            "skipped_blobs": self.pushed.skipped_blobs,
            "mounted_blobs": self.pushed.mounted_blobs,
        }

    def stage_pin(self) -> dict[str, Any]:
        if self.pushed is None:
            raise UsageError("pin needs the push stage in the same run (add push to --stages).")
        wanted = {arch: str(ref) for arch, ref in self.pushed.platforms.items()}
        result = pin.verify_and_pin(self.processor, wanted, self.clients)
        self.processor = load_processor(self.request.ref, self.processor.repo_root)  # re-read the new pins
        return {"pins": result["pins"], "changed": result["changed"]}

    def stage_start(self) -> dict[str, Any]:
        app = self._app()
        return self.target.start(app, self.target.image_to_deploy(app, None))

    def stage_sync_secrets(self) -> dict[str, Any]:
        # Real mode cannot run without its required secrets: fail here, naming them, not mid-run.
        return self.target.sync_secrets(self._app(), check=False, fail_on_missing=self.request.mode == "real")

    def stage_verify(self) -> dict[str, Any]:
        return self.target.verify_digest(self._app())

    def stage_run(self) -> dict[str, Any]:
        inputs = self.request.inputs if self.request.inputs is not None else default_inputs(self.processor)
        timeout = self.request.timeout_s or float(self.processor.spec.runtime.timeout_s)
        result = self.target.run(
            self._app(), mode=self.request.mode, inputs=inputs, timeout_s=timeout, stream_tokens=False
        )
        return {"envelope": result["envelope"]}

    # --- driver --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        reports: list[StageReport] = []
        handlers = {
            "build": self.stage_build,
            "push": self.stage_push,
            "pin": self.stage_pin,
            "start": self.stage_start,
            "sync-secrets": self.stage_sync_secrets,
            "verify": self.stage_verify,
            "run": self.stage_run,
        }
        started = time.monotonic()
        try:
            for name in STAGES:
                if name not in self.request.stages:
                    reports.append(StageReport(name, "skipped", 0.0))
                    continue
                self.progress(f"==> {name}")
                t0 = time.monotonic()
                try:
                    detail = handlers[name]()
                except TheoryDeployError as err:
                    reports.append(
                        StageReport(
                            name,
                            "failed",
                            time.monotonic() - t0,
                            {"error": {"code": err.code, "message": err.render()}},
                        )
                    )
                    err.details = {**err.details, "stage": name, "stages": [r.to_json() for r in reports]}
                    err.message = f"pipeline stopped at {name}: {err.message}"
                    raise
                detail.pop("summary", None)
                report = StageReport(name, "ok", time.monotonic() - t0, detail)
                reports.append(report)
                self.progress(f"<== {name}: ok in {report.seconds:.1f}s")
        finally:
            self.clients.close()
        app = self._app()
        lines = [f"pipeline {self.request.ref} -> {self.request.target}/{self.request.env} ({app.name}): ok"]
        lines += [f"  {r.name:<13} {r.status:<7} {r.seconds:6.1f}s" for r in reports]
        return {
            "ref": str(self.request.ref),
            "env": self.request.env,
            "target": self.request.target,
            "app": app.name,
            "seconds": round(time.monotonic() - started, 3),
            "stages": [r.to_json() for r in reports],
            "summary": "\n".join(lines),
        }
