"""Benchmark: the whole pipeline cold and warm, beside the plain docker CLI doing the same job.

    .venv/bin/python bench/pipeline_timing.py --registry 127.0.0.1:5000 --base-image "$THEORY_BASE_IMAGE" [--platforms linux/amd64] [--json]

Ours: `theory-deploy pipeline --target local --mode mock` (build → push → pin → start → sync-secrets
→ verify → run) in a scratch copy of the sample processor pointed at a new loopback repository.
 - cold: the build cache pruned (`docker builder prune`), a repository nobody pushed to, no app running;
 - warm: the same command again, nothing changed.
Peer, in the same run: the script a user would otherwise write with the docker CLI — `docker build`,
`docker push` (to a tag), `docker rm -f` + `docker run -d`, then poll /healthz — which pins nothing,
verifies nothing and runs nothing; cold and warm likewise. Reported as seconds and ratios
(ours / peer). Results also go to bench/results/pipeline_timing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from theory_deploy import runtime_bundle

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REF = "llm/litellm@1"
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def prune_build_cache() -> None:
    run([DOCKER, "builder", "prune", "-af"], env={"DOCKER_BUILDKIT": "1"})


def ours(workspace: Path, args: list[str], env: dict[str, str]) -> dict:
    proc = run([str(BIN / "theory-deploy"), "pipeline", *args, "--json"], env=env, cwd=workspace)
    return json.loads(proc.stdout)


def peer(context: Path, dockerfile: Path, tag: str, base_image: str, name: str) -> None:
    env = {"DOCKER_BUILDKIT": "1"}
    run(
        [
            DOCKER,
            "build",
            "--platform",
            "linux/amd64",
            "-f",
            str(dockerfile),
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--secret",
            "id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt",
            # the processor runtime, as any script building a theory.run.v1 processor must pass it
            *runtime_bundle.ensure_bundle().docker_flags(),
            "-t",
            tag,
            str(context),
        ],
        env=env,
    )
    run([DOCKER, "push", tag])
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
    run([DOCKER, "run", "-d", "--name", name, "-p", "127.0.0.1::8000", "-e", "IMAGE_DIGEST=unknown", tag])
    port = run([DOCKER, "port", name, "8000/tcp"]).stdout.strip().rsplit(":", 1)[-1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("peer container never became healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=os.environ.get("THEORY_REGISTRY", "127.0.0.1:5000"))
    parser.add_argument(
        "--base-image", default=os.environ.get("THEORY_BASE_IMAGE"), required=not os.environ.get("THEORY_BASE_IMAGE")
    )
    parser.add_argument("--platforms", default="linux/amd64")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    workspace = Path(tempfile.mkdtemp(prefix="theory-bench-"))
    for folder in ("processors", "runtime", "schema"):
        shutil.copytree(REPO / folder, workspace / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    env = {
        "THEORY_REPO_ROOT": str(workspace),
        "GIT_BRANCH": f"bench-{tag}",
        "GIT_USER": "bench",
        # Build records of this run only: the cold run finds none, the warm one finds the cold run's.
        "THEORY_BUILD_RECORDS_DIR": str(workspace / ".build-records"),
    }
    run(
        [
            str(BIN / "processorctl"),
            "set-repository",
            "--ref",
            REF,
            "--repository",
            f"{args.registry}/theory-bench/ours-{tag}",
        ],
        env=env,
        cwd=workspace,
    )
    pipeline_args = [
        "--ref",
        REF,
        "--env",
        "dev",
        "--target",
        "local",
        "--mode",
        "mock",
        "--platforms",
        args.platforms,
        "--build-arg",
        f"BASE_IMAGE={args.base_image}",
    ]
    peer_tag = f"{args.registry}/theory-bench/peer-{tag}:latest"
    peer_name = f"bench-peer-{tag}"
    context, dockerfile = workspace, workspace / "processors/llm/litellm/Dockerfile"
    results: dict[str, float] = {}
    stage_times: dict[str, dict[str, float]] = {}
    try:
        prune_build_cache()
        results["ours_cold_s"], cold = timed(lambda: ours(workspace, pipeline_args, env))
        results["ours_warm_s"], warm = timed(lambda: ours(workspace, pipeline_args, env))
        for label, payload in (("cold", cold), ("warm", warm)):
            stage_times[label] = {s["stage"]: s["seconds"] for s in payload["stages"]}  # type: ignore[index]
        prune_build_cache()
        results["peer_cold_s"], _ = timed(lambda: peer(context, dockerfile, peer_tag, args.base_image, peer_name))
        results["peer_warm_s"], _ = timed(lambda: peer(context, dockerfile, peer_tag, args.base_image, peer_name))
    finally:
        subprocess.run([DOCKER, "rm", "-f", peer_name], capture_output=True, check=False)
        subprocess.run(
            [str(BIN / "localctl"), "stop", "--ref", REF, "--env", "dev"],
            env={**os.environ, **env},
            cwd=workspace,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(workspace, ignore_errors=True)
    results = {k: round(v, 2) for k, v in results.items()}
    ratios = {
        "cold_ours_over_peer": round(results["ours_cold_s"] / results["peer_cold_s"], 2),
        "warm_ours_over_peer": round(results["ours_warm_s"] / results["peer_warm_s"], 2),
        "warm_over_cold_ours": round(results["ours_warm_s"] / results["ours_cold_s"], 3),
    }
    report = {"platforms": args.platforms, "seconds": results, "ratios": ratios, "stages": stage_times}
    out = REPO / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_timing.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("| run | theory-deploy pipeline | docker CLI script | ours / peer |\n|---|---|---|---|")
    print(f"| cold | {results['ours_cold_s']} s | {results['peer_cold_s']} s | {ratios['cold_ours_over_peer']}x |")
    print(f"| warm | {results['ours_warm_s']} s | {results['peer_warm_s']} s | {ratios['warm_ours_over_peer']}x |")
    print("\n| stage | cold s | warm s |\n|---|---|---|")
    for stage in stage_times["cold"]:
        print(f"| {stage} | {stage_times['cold'][stage]} | {stage_times['warm'][stage]} |")


if __name__ == "__main__":
    main()
