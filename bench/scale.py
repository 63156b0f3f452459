#!/usr/bin/env python3
"""How do `processorctl validate` and `processorctl plan` scale with the number of processors?

    .venv/bin/python bench/scale.py [--sizes 10,100,1000] [--reps 5] [--keep DIR]

Setup, per size N: a git repository in a temporary folder holding processors/llm/litellm (the
sample) and N copies of it under other names (processors/bench/pNNNN, each with its own ref,
Dockerfile path and image repository), committed; then one line is added to one copy's handler.py
and committed, so `HEAD~1..HEAD` changes one handler among N+1 processors.

Timed, each a fresh process run --reps times (median reported; the first run of each is a warm-up
and not counted, so every series reads files from the page cache):
  validate  `processorctl validate` (every registry.yaml in the repository)
  plan      `processorctl plan --base HEAD~1` (one handler changed)
  parse     a bare C-accelerated YAML parse of the same registry.yaml files: `python -c` reading each
            file and `yaml.load(text, Loader=yaml.CSafeLoader)` (PyYAML over libyaml), what reading
            the files costs with no validation at all; a fresh interpreter, like the CLI runs
  help      `processorctl --help`: the CLI's own start-up

Ratios: validate/parse (goal ≤ 3 at 1,000) and plan/help (goal ≤ 4; plan must not grow with N).

Prints one JSON object and a markdown table on stdout; writes bench/results/scale-<time>.json and a
plot of seconds against N for each series (log-log) next to it, bench/results/scale-<time>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "processors" / "llm" / "litellm"
BIN = Path(sys.executable).parent
SERIES = ("validate", "plan", "parse", "help")

PARSE_SCRIPT = """
import glob, yaml
for name in sorted(glob.glob("processors/*/*/registry.yaml")):
    with open(name, encoding="utf-8") as f:
        yaml.load(f.read(), Loader=yaml.CSafeLoader)
"""


def _git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def make_repo(repo: Path, copies: int) -> None:
    """The sample plus `copies` renamed copies, committed; then one handler changed and committed."""
    (repo / "processors" / "llm").mkdir(parents=True)
    shutil.copytree(SAMPLE, repo / "processors" / "llm" / "litellm")
    text = (SAMPLE / "registry.yaml").read_text(encoding="utf-8")
    for i in range(1, copies + 1):
        name = f"p{i:04d}"
        folder = repo / "processors" / "bench" / name
        shutil.copytree(SAMPLE, folder)
        renamed = text.replace("llm/litellm", f"bench/{name}").replace("llm-litellm", f"bench-{name}")
        (folder / "registry.yaml").write_text(renamed, encoding="utf-8")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "processors")
    handler = repo / "processors" / "bench" / "p0001" / "handler.py"
    handler.write_text(handler.read_text(encoding="utf-8") + "\n# one changed line\n", encoding="utf-8")
    _git(repo, "commit", "-q", "-a", "-m", "change one handler")


def commands(repo: Path) -> dict[str, list[str]]:
    processorctl = str(BIN / "processorctl")
    return {
        "validate": [processorctl, "validate"],
        "plan": [processorctl, "plan", "--base", "HEAD~1"],
        "parse": [sys.executable, "-c", PARSE_SCRIPT],
        "help": [processorctl, "--help"],
    }


def time_command(argv: list[str], cwd: Path, reps: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "GITHUB_OUTPUT", "THEORY_REPO_ROOT")}
    times = []
    for rep in range(reps + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed in {cwd} ({done.returncode}):\n{done.stdout}{done.stderr}")
        if rep:  # the first run warms the page cache and the bytecode cache
            times.append(elapsed)
    return times


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["processors"] for row in result["rows"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {
        "validate": "processorctl validate",
        "plan": "processorctl plan --base HEAD~1 (one handler changed)",
        "parse": "bare CSafeLoader parse of the same files",
        "help": "processorctl --help (start-up)",
    }
    for series in SERIES:
        ax.plot(sizes, [row[series]["median_s"] for row in result["rows"]], marker="o", label=labels[series])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("processors in the repository")
    ax.set_ylabel("seconds (median)")
    ax.set_title("theory-deploy: validate and plan against repository size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="numbers of processors (the sample counts as one)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--keep", help="build the repositories in this folder and keep them")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    rows = []
    with tempfile.TemporaryDirectory(prefix="theory-scale-") as scratch:
        base = Path(args.keep) if args.keep else Path(scratch)
        for n in sizes:
            repo = base / f"repo-{n}"
            if repo.exists():
                shutil.rmtree(repo)
            repo.mkdir(parents=True)
            make_repo(repo, n - 1)
            row: dict = {"processors": n}
            for series, argv in commands(repo).items():
                times = time_command(argv, repo, args.reps)
                row[series] = {"median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times]}
            row["validate_over_parse"] = round(row["validate"]["median_s"] / row["parse"]["median_s"], 2)
            row["plan_over_help"] = round(row["plan"]["median_s"] / row["help"]["median_s"], 2)
            rows.append(row)
            print(f"{n} processors: done", file=sys.stderr)

    result = {
        "benchmark": "scale",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reps": args.reps,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "commands": {
            k: " ".join(v) if k != "parse" else "python -c <read + yaml.load(CSafeLoader) each file>"
            for k, v in commands(Path(".")).items()
        },
        "rows": rows,
        "goals": {"validate_s_at_1000": 1.0, "validate_over_parse": 3.0, "plan_s": 1.0, "plan_over_help": 4.0},
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"scale-{stamp}.json"
    png_path = out_dir / f"scale-{stamp}.png"
    if not args.no_plot:
        plot(result, png_path)
        result["plot"] = str(png_path.relative_to(ROOT))
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    print(json.dumps(result, indent=2))
    print()
    print("| processors | validate (s) | bare parse (s) | validate / parse | plan (s) | --help (s) | plan / --help |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['processors']} | {row['validate']['median_s']:.3f} | {row['parse']['median_s']:.3f} | "
            f"{row['validate_over_parse']:.2f}x | {row['plan']['median_s']:.3f} | {row['help']['median_s']:.3f} | "
            f"{row['plan_over_help']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
