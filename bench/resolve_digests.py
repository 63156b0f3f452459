#!/usr/bin/env python3
"""How long does it take to learn (and prove) the per-platform manifest digests of N multi-arch images?

    .venv/bin/python bench/resolve_digests.py [--registry 127.0.0.1:5000] [--images 50] [--reps 5]

Setup: N synthetic two-platform images (a config and one tiny layer per platform, an OCI index
tagged `v1`) pushed to the loopback registry with theory-deploy's own client. Re-runs reuse them.

Timed, in the same run, each repeated --reps times (median reported):
  ours    RegistryClient.resolve_platforms(amd64, arm64) of every image, from the `v1` tag, on a
          thread pool (--workers), a new client per repetition (cold: nothing cached): GET the index,
          GET each platform manifest, GET its config blob; sha256 of every body checked, each
          manifest's media type and each config's os/architecture checked (5 requests/image).
  warm    the same with one client kept across repetitions (after one untimed pass): the tag is
          asked and its index hashed every time; platform manifests and configs come from the
          client's cache of bodies already verified against their digests (1 request/image).
  skopeo  the loop a user would script: `skopeo inspect --raw` of the tag, then
          `skopeo inspect --config` of each platform digest (to see its architecture).
  floor   raw concurrent httpx HEADs of the same 3 manifests per image (3 requests/image, nothing
          read or verified): what the network and registry alone cost.

Prints one JSON object and a markdown table on stdout; writes bench/results/resolve_digests-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from theory_deploy import oci, push  # noqa: E402
from theory_deploy.oci import RegistryClient, RetryPolicy  # noqa: E402

ARCHES = ("amd64", "arm64")


def _quiet(_message: str) -> None:
    pass


def setup_images(registry: str, count: int, prefix: str) -> list[str]:
    """Push `count` two-platform images (deterministic content: re-runs upload nothing)."""
    import gzip
    import io
    import tarfile

    repos = [f"{prefix}/img{i:03d}" for i in range(count)]

    def one(repo: str) -> None:
        with RegistryClient(registry, retry=RetryPolicy(base_delay=0.2), progress=_quiet) as c:
            entries = []
            for arch in ARCHES:
                raw = io.BytesIO()
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    data = f"{repo} {arch}\n".encode()
                    info = tarfile.TarInfo("payload.txt")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
                layer = gzip.compress(raw.getvalue(), mtime=0)
                config = json.dumps(
                    {
                        "architecture": arch,
                        "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": [oci.sha256_digest(raw.getvalue())]},
                    }
                ).encode()
                ld, cd = oci.sha256_digest(layer), oci.sha256_digest(config)
                c.upload_blob(repo, ld, layer)
                c.upload_blob(repo, cd, config)
                body = push.image_manifest_bytes(
                    push.Descriptor(oci.OCI_CONFIG, cd, len(config)),
                    [push.Descriptor(oci.OCI_LAYER_GZIP, ld, len(layer))],
                )
                digest = c.put_manifest(repo, None, body, oci.OCI_MANIFEST)
                entries.append((arch, None, push.Descriptor(oci.OCI_MANIFEST, digest, len(body))))
            c.put_manifest(repo, "v1", push.index_bytes(entries), oci.OCI_INDEX)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, repos))
    return repos


def resolve_all(c: RegistryClient, repos: list[str], workers: int) -> dict[str, dict[str, str]]:
    def one(repo: str) -> tuple[str, dict[str, str]]:
        found = c.resolve_platforms(repo, "v1", list(ARCHES))
        return repo, {arch: res.manifest_digest for arch, res in found.items()}

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, repos))


REQUESTS: dict[str, int] = {}  # requests (and cache hits) of the last run of each kind


def run_ours(registry: str, repos: list[str], workers: int) -> dict[str, dict[str, str]]:
    with RegistryClient(registry, progress=_quiet, max_connections=workers) as c:
        found = resolve_all(c, repos, workers)
        REQUESTS["ours"], REQUESTS["ours_cache_hits"] = c.stats["requests"], c.stats["cache_hits"]
        return found


def run_warm(c: RegistryClient, repos: list[str], workers: int) -> dict[str, dict[str, str]]:
    before, hits = c.stats["requests"], c.stats["cache_hits"]
    found = resolve_all(c, repos, workers)
    REQUESTS["warm"], REQUESTS["warm_cache_hits"] = c.stats["requests"] - before, c.stats["cache_hits"] - hits
    return found


def run_skopeo(registry: str, repos: list[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for repo in repos:
        base = f"docker://{registry}/{repo}"
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"{base}:v1"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        digests = {}
        for entry in json.loads(raw)["manifests"]:
            arch = entry["platform"]["architecture"]
            cfg = subprocess.run(
                ["skopeo", "inspect", "--config", "--tls-verify=false", f"{base}@{entry['digest']}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            assert json.loads(cfg)["architecture"] == arch
            digests[arch] = entry["digest"]
        found[repo] = digests
    return found


def run_floor(registry: str, repos: list[str], expected: dict[str, dict[str, str]], workers: int) -> None:
    accept = {"Accept": oci.ACCEPT_MANIFESTS}
    with httpx.Client(base_url=f"http://{registry}", limits=httpx.Limits(max_connections=workers)) as c:

        def one(repo: str) -> None:
            c.head(f"/v2/{repo}/manifests/v1", headers=accept).raise_for_status()
            for arch in ARCHES:
                c.head(f"/v2/{repo}/manifests/{expected[repo][arch]}", headers=accept).raise_for_status()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, repos))


def timed(fn, reps: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default=os.environ.get("THEORY_REGISTRY", "127.0.0.1:5000"))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skopeo-reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--prefix", default="bench/resolve")
    args = parser.parse_args()

    t0 = time.perf_counter()
    repos = setup_images(args.registry, args.images, args.prefix)
    setup_s = time.perf_counter() - t0

    ours_times, ours = timed(lambda: run_ours(args.registry, repos, args.workers), args.reps)
    skopeo_times, theirs = timed(lambda: run_skopeo(args.registry, repos), args.skopeo_reps)
    if ours != theirs:
        print("MISMATCH between our client and skopeo", file=sys.stderr)
        return 1
    floor_times, _ = timed(lambda: run_floor(args.registry, repos, ours, args.workers), args.reps)  # type: ignore[arg-type]
    with RegistryClient(args.registry, progress=_quiet, max_connections=args.workers) as warm_client:
        resolve_all(warm_client, repos, args.workers)  # fills the cache; untimed
        warm_times, warm = timed(lambda: run_warm(warm_client, repos, args.workers), args.reps)
    if warm != ours:
        print("MISMATCH between the cold and the warm client", file=sys.stderr)
        return 1

    runs = (("ours", ours_times), ("skopeo", skopeo_times), ("floor", floor_times), ("warm", warm_times))
    med = {k: statistics.median(v) for k, v in runs}
    n = args.images
    result = {
        "benchmark": "resolve_digests",
        "registry": args.registry,
        "images": args.images,
        "platforms_per_image": len(ARCHES),
        "workers": args.workers,
        "setup_s": round(setup_s, 3),
        "runs_s": {k: v for k, v in runs},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_ours_over_skopeo": round(med["ours"] / med["skopeo"], 4),
        "ratio_ours_over_floor": round(med["ours"] / med["floor"], 3),
        "ratio_warm_over_skopeo": round(med["warm"] / med["skopeo"], 4),
        "ratio_warm_over_floor": round(med["warm"] / med["floor"], 3),
        "requests_per_image": {
            "ours": REQUESTS["ours"] / n,
            "warm": REQUESTS["warm"] / n,
            "floor": 1 + len(ARCHES),
        },
        "cache_hits_per_image": {"ours": REQUESTS["ours_cache_hits"] / n, "warm": REQUESTS["warm_cache_hits"] / n},
        "digests_agree_with_skopeo": True,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"resolve_digests-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2) + "\n")

    print(json.dumps(result, indent=2))
    print()
    print(f"| method ({n} images x 2 platforms) | median wall time | per image | requests/image | vs ours |")
    print("|---|---|---|---|---|")
    for key, label in (
        ("ours", "theory-deploy RegistryClient, cold (verified, concurrent)"),
        ("warm", "theory-deploy RegistryClient, warm (tag asked; verified bodies cached by digest)"),
        ("skopeo", "skopeo inspect loop (--raw + --config per platform)"),
        ("floor", "raw concurrent HEADs (httpx, unverified)"),
    ):
        per_image = "3 skopeo runs" if key == "skopeo" else f"{result['requests_per_image'][key]:g}"  # type: ignore[index]
        print(
            f"| {label} | {med[key]:.3f} s | {1000 * med[key] / n:.1f} ms | {per_image} | "
            f"{med[key] / med['ours']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
