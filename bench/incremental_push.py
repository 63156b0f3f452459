#!/usr/bin/env python3
"""What does an incremental push cost after a one-line app change, ours vs `docker push`?

    .venv/bin/python bench/incremental_push.py [--registry 127.0.0.1:5000] [--base-image REF]

Setup: a copy of processors/llm/litellm (and runtime/) in a temporary repository root, built for
linux/amd64 with `processorctl build`'s code (warm build cache), then pushed once both ways: ours
(`processorctl push`'s code, to <registry>/bench/incr-ours) and `docker push` (the same local image
tagged into <registry>/bench/incr-docker). Then one line is appended to app.py, the image is rebuilt
(warm: only the app layer changes) and pushed again both ways; that second push is what is measured.

Both talk to the registry through a tiny counting HTTP proxy on 127.0.0.1 (a loopback address, so the
engine speaks plain HTTP to it too): requests, request body bytes (uploaded) and response body bytes.
Ours runs with its blob cache as left by the first push (a warm CI cache or a developer machine).

BASE_IMAGE: --base-image, else $THEORY_BASE_IMAGE, else `scripts/local-base-image <registry>`.
Prints one JSON object and a markdown table on stdout; writes bench/results/incremental_push-<time>.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from theory_deploy import build, push, registry_file  # noqa: E402
from theory_deploy.docker import find_builder  # noqa: E402
from theory_deploy.oci import RegistryClient  # noqa: E402
from theory_deploy.refs import parse_repository  # noqa: E402


def _quiet(_message: str) -> None:
    pass


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.sent = 0  # request bodies: what was uploaded
        self.received = 0  # response bodies
        self.by_method: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "uploaded_bytes": self.sent,
                "downloaded_bytes": self.received,
                "by_method": dict(sorted(self.by_method.items())),
            }


def start_proxy(upstream: str, counter: Counter) -> tuple[ThreadingHTTPServer, str]:
    """A counting HTTP/1.1 proxy to `upstream` (host:port); returns the server and its host:port."""
    up_host, up_port = upstream.rsplit(":", 1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self) -> None:
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=600)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            with counter.lock:
                counter.requests += 1
                counter.sent += len(body)
                counter.received += len(data)
                counter.by_method[self.command] = counter.by_method.get(self.command, 0) + 1
            self.send_response_only(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            # A HEAD's Content-Length is the size of what a GET would return (a blob's size): pass it on.
            length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def base_image(registry: str, given: str | None) -> str:
    if given or os.environ.get("THEORY_BASE_IMAGE"):
        return given or os.environ["THEORY_BASE_IMAGE"]
    out = subprocess.run(
        [str(ROOT / "scripts" / "local-base-image"), registry], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def make_repo(tmp: Path) -> Path:
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "processor.json")
    shutil.copytree(ROOT / "runtime", tmp / "runtime", ignore=junk)
    folder = tmp / "processors" / "llm" / "litellm"
    shutil.copytree(ROOT / "processors" / "llm" / "litellm", folder, ignore=junk)
    path = folder / "registry.yaml"
    version = random.randint(100000, 999999)  # its own local tag
    path.write_text(path.read_text().replace("ref: llm/litellm@1\n", f"ref: llm/litellm@{version}\n", 1))
    return path


def build_once(path: Path, root: Path, base: str) -> build.BuiltImage:
    loaded = registry_file.load_path(path, root)
    return build.build_platform_images(
        loaded.spec, root, ["amd64"], {"BASE_IMAGE": base}, registry_path=path, progress=_quiet
    )["amd64"]


def push_ours(proxy: str, repo: str, image: build.BuiltImage, cache: Path) -> dict[str, Any]:
    with RegistryClient(proxy, progress=_quiet) as client:
        result = push.push_platform_images(
            {"amd64": image}, parse_repository(f"{proxy}/{repo}"), client, cache_dir=cache, progress=_quiet
        )
    return {"digest": result.platforms["amd64"].digest, "blobs_uploaded": result.uploaded_blobs}


def push_docker(cli: str, proxy: str, repo: str, image: build.BuiltImage) -> dict[str, Any]:
    tag = f"{proxy}/{repo}:bench"
    subprocess.run([cli, "tag", image.image_id, tag], check=True, capture_output=True)
    try:
        out = subprocess.run([cli, "push", tag], check=True, capture_output=True, text=True, timeout=1800)
    finally:
        subprocess.run([cli, "rmi", tag], capture_output=True)
    return {"pushed_layers": out.stdout.count("Pushed"), "already": out.stdout.count("Layer already exists")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=os.environ.get("THEORY_REGISTRY", "127.0.0.1:5000"))
    parser.add_argument("--base-image")
    args = parser.parse_args()
    base = base_image(args.registry, args.base_image)
    cli = find_builder().client
    os.environ.setdefault("THEORY_DOCKER", cli)
    counter = Counter()
    server, proxy = start_proxy(args.registry, counter)
    run_id = f"{int(time.time())}"
    repos = {"ours": f"bench/incr-ours-{run_id}", "docker": f"bench/incr-docker-{run_id}"}
    images: list[build.BuiltImage] = []
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="theory-bench-incr-") as tmp_name:
        tmp = Path(tmp_name)
        path = make_repo(tmp / "repo")
        try:
            first = build_once(path, tmp / "repo", base)
            images.append(first)
            push_ours(proxy, repos["ours"], first, tmp / "blobs")
            push_docker(cli, proxy, repos["docker"], first)
            app = path.parent / "app.py"
            app.write_text(app.read_text() + f"# bench: one-line change {run_id}\n")
            started = time.perf_counter()
            second = build_once(path, tmp / "repo", base)
            rebuild_s = time.perf_counter() - started
            images.append(second)
            for label, fn in (
                ("ours", lambda: push_ours(proxy, repos["ours"], second, tmp / "blobs")),
                ("docker push", lambda: push_docker(cli, proxy, repos["docker"], second)),
            ):
                counter.reset()
                started = time.perf_counter()
                detail = fn()
                measured[label] = {"seconds": round(time.perf_counter() - started, 3), **counter.snapshot(), **detail}
        finally:
            server.shutdown()
            subprocess.run([cli, "rmi", "-f", *(i.local_tag for i in images[-1:])], capture_output=True)
            subprocess.run([cli, "rmi", "-f", *(i.image_id for i in images)], capture_output=True)
    result = {
        "bench": "incremental_push",
        "registry": args.registry,
        "base_image": base,
        "change": "one line appended to processors/llm/litellm/app.py (copy), warm build cache",
        "rebuild_seconds": round(rebuild_s, 3),
        "results": measured,
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"incremental_push-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(json.dumps(result, indent=2))
    print()
    ours, docker = measured["ours"], measured["docker push"]
    print("| push after a one-line change (linux/amd64) | uploaded bytes | requests | wall time |")
    print("|---|---|---|---|")
    for label, row in measured.items():
        print(f"| {label} | {row['uploaded_bytes']:,} | {row['requests']} | {row['seconds']:.2f} s |")
    ratio = (ours["uploaded_bytes"] / max(docker["uploaded_bytes"], 1), ours["requests"] / max(docker["requests"], 1))
    print(f"| ours / docker push | {ratio[0]:.2f}x | {ratio[1]:.2f}x | {ours['seconds'] / docker['seconds']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
