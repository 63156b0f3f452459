"""Benchmark: a mock run over theory.run.v1 WebSockets, against a plain HTTP POST to the same app.

    .venv/bin/python bench/ws_latency.py [--url http://127.0.0.1:PORT] [--runs 300] [--json]

Without --url it starts the sample processor (llm/litellm@1, mock mode) under uvicorn in a separate
process on loopback; with --url it measures an already running app, e.g. the one `localctl start`
runs (`localctl status --ref llm/litellm@1 --env dev --json` prints its URL). The client is the
product's own `protocol.run_processor`, so what is measured is what `localctl run` does.

For each concurrency (1, 10, 100 clients) it reports p50/p99 latency per run and throughput
(runs/s), for the WebSocket run and for `POST /invoke` (the same handler over one HTTP request: the
floor that the WebSocket protocol's handshake, Ack and RunResult frames are compared with).
Results go to stdout (markdown, or JSON with --json) and to bench/results/ws_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from theory_deploy.protocol import run_processor  # noqa: E402

INPUTS = {"schema": "v1", "params": {"messages": [{"role": "user", "content": "benchmark"}]}}
CONCURRENCY = (1, 10, 100)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sample_app() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    folder = REPO / "processors/llm/litellm"
    # The sample's app.py reads its registry.yaml from the source tree when no processor.json is there.
    env = {**os.environ, "PYTHONPATH": str(REPO / "runtime")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--app-dir",
            str(folder),
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                # The sample imports LiteLLM in a background thread at startup (seconds of work that
                # holds the GIL); measuring during it would time the import, not the protocol.
                time.sleep(10)
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the sample app did not come up within 60 s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _timed_runs(total: int, concurrency: int, one: object) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            t0 = time.perf_counter()
            await one()  # type: ignore[operator]
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


async def measure(url: str, runs: int) -> list[dict[str, object]]:
    ws_url = url.replace("http", "ws", 1) + "/run"
    rows: list[dict[str, object]] = []
    limits = httpx.Limits(max_connections=max(CONCURRENCY), max_keepalive_connections=max(CONCURRENCY))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def ws_once() -> None:
            envelope = await run_processor(ws_url, mode="mock", inputs=INPUTS, timeout_s=60)
            assert envelope["status"] == "success", envelope

        async def post_once() -> None:
            response = await http.post("/invoke", json={"mode": "mock", "inputs": INPUTS})
            assert response.status_code == 200 and response.json()["status"] == "success", response.text

        for name, one in (("websocket run", ws_once), ("HTTP POST /invoke (floor)", post_once)):
            await _timed_runs(min(20, runs), 1, one)  # warm up: imports, connection pools
            for concurrency in CONCURRENCY:
                total = max(runs, concurrency * 3)
                latencies, wall = await _timed_runs(total, concurrency, one)
                rows.append(
                    {
                        "transport": name,
                        "clients": concurrency,
                        "runs": total,
                        "p50_ms": round(statistics.median(latencies) * 1000, 2),
                        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                        "runs_per_s": round(total / wall, 1),
                    }
                )
    return rows


def ratios(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    out = []
    for clients in CONCURRENCY:
        ws = next(r for r in rows if r["clients"] == clients and str(r["transport"]).startswith("websocket"))
        post = next(r for r in rows if r["clients"] == clients and str(r["transport"]).startswith("HTTP"))
        out.append(
            {
                "clients": clients,
                "p50_ws_over_post": round(float(ws["p50_ms"]) / float(post["p50_ms"]), 2),  # type: ignore[arg-type]
                "throughput_ws_over_post": round(float(ws["runs_per_s"]) / float(post["runs_per_s"]), 2),  # type: ignore[arg-type]
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running processor (default: start the sample in-process)")
    parser.add_argument("--runs", type=int, default=300, help="runs per measurement (default 300)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    proc = None
    url = args.url
    if not url:
        proc, url = start_sample_app()
    try:
        rows = asyncio.run(measure(url, args.runs))
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
    result = {"url": url, "rows": rows, "ratios": ratios(rows)}
    out = REPO / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ws_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| transport | clients | runs | p50 ms | p99 ms | runs/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['transport']} | {r['clients']} | {r['runs']} | {r['p50_ms']} | {r['p99_ms']} | {r['runs_per_s']} |"
        )
    print("\n| clients | p50 WS / POST | throughput WS / POST |\n|---|---|---|")
    for r in result["ratios"]:
        print(f"| {r['clients']} | {r['p50_ws_over_post']}x | {r['throughput_ws_over_post']}x |")


if __name__ == "__main__":
    main()
