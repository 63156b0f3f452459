#!/usr/bin/env python3
"""Mutation testing of theory-deploy's core, with mutmut; `scripts/mutation` sets up and calls this.

    scripts/mutation                          every core module
    scripts/mutation src/theory_deploy/refs.py  some of them
    scripts/mutation --changed HEAD~1         the core modules a change touched (CI)
    scripts/mutation --report-only            score what mutants/ holds (an interrupted run)

The core is `[tool.mutmut] only_mutate` in pyproject.toml; the tests run against each mutant are its
`pytest_add_cli_args` (the fast and registry-backed suites). mutmut keeps its verdicts in `mutants/`
and re-runs only mutants of functions that changed, so a second run is quick.

A surviving mutant is either killed by a new test or listed in tests/mutation_equivalents.txt with
the reason it is equivalent (it cannot change behaviour any test can observe). Listed mutants are
counted apart; the score is killed / (killed + survived), where "survived" counts every mutant that
no test failed on (survived, no tests, timeout and suspicious are not kills).

Writes bench/results/mutation.json:
  {"modules": {"src/theory_deploy/refs.py": {"killed": N, "survived": M, "score": 0.9, ...}},
   "when": "...", "commit": "..."}
merging with the modules an earlier run measured (each entry keeps its own `commit` and `when`).
Exit 1 when a module measured in this run scores under --min-score.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "mutation.json"
# mutmut's exit codes of a mutant's test run (mutmut/stats.py): 1 and 3 are kills, 37 the type
# checker's kill; everything else is a mutant no test noticed.
KILLED_EXIT_CODES = {1, 3, 37}


def core_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def changed_core_modules(base: str) -> list[str]:
    names = subprocess.run(
        ["git", "diff", "--name-only", base, "--", "src/"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    return [m for m in core_modules() if m in names]


def mutant_glob(module: str) -> str:
    """src/theory_deploy/targets/base.py -> theory_deploy.targets.base.* (mutmut's mutant names)."""
    dotted = Path(module).relative_to("src").with_suffix("").as_posix().replace("/", ".")
    return f"{dotted}.*"


def read_equivalents() -> dict[str, str]:
    """mutant name -> why it is equivalent; lines are `name  # reason`, and a reason is required."""
    equivalents: dict[str, str] = {}
    if not EQUIVALENTS.exists():
        return equivalents
    for number, line in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, reason = line.partition("#")
        if not sep or not reason.strip():
            sys.exit(f"{EQUIVALENTS.relative_to(ROOT)}:{number}: `{name.strip()}` needs a reason after `#`")
        equivalents[name.strip()] = reason.strip()
    return equivalents


def verdicts(module: str) -> dict[str, int | None]:
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def score_module(module: str, equivalents: dict[str, str]) -> dict[str, object]:
    """Counts of one module's verdicts. Mutants mutmut has not checked yet (an interrupted run) are
    reported as `not_checked` and left out of the score; every other mutant no test failed on
    (survived, no tests, timeout, suspicious) counts against it."""
    exit_codes = verdicts(module)
    checked = {n: code for n, code in exit_codes.items() if code is not None}
    killed = [n for n, code in checked.items() if code in KILLED_EXIT_CODES]
    listed = sorted(n for n, code in checked.items() if code not in KILLED_EXIT_CODES and n in equivalents)
    surviving = sorted(n for n, code in checked.items() if code not in KILLED_EXIT_CODES and n not in equivalents)
    counted = len(killed) + len(surviving)
    return {
        "killed": len(killed),
        "survived": len(surviving),
        "score": round(len(killed) / counted, 4) if counted else 1.0,
        "equivalent": len(listed),
        "not_checked": len(exit_codes) - len(checked),
        "surviving_mutants": surviving,
    }


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    return head + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="core modules to mutate (default: all of them)")
    parser.add_argument("--changed", metavar="REV", help="only the core modules changed since REV")
    parser.add_argument("--min-score", type=float, default=0.85)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="score what mutants/ holds (e.g. after an interrupted run) without running mutmut; "
        "mutants not yet checked are counted apart",
    )
    args = parser.parse_args(argv)

    core = core_modules()
    unknown = [m for m in args.modules if m not in core]
    if unknown:
        parser.error(f"not core modules (pyproject.toml [tool.mutmut] only_mutate): {', '.join(unknown)}")
    modules = args.modules or (changed_core_modules(args.changed) if args.changed else core)
    if not modules:
        print(f"mutation: no core module changed since {args.changed}; nothing to mutate")
        return 0

    equivalents = read_equivalents()
    log = ROOT / "mutants" / "mutmut-run.log"
    log.parent.mkdir(exist_ok=True)
    if not args.report_only:
        print(f"mutation: mutmut over {len(modules)} module(s); log: {log.relative_to(ROOT)}", flush=True)
        with log.open("w") as out:
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mutmut",
                    "run",
                    f"--max-children={args.max_children}",
                    *map(mutant_glob, modules),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if run.returncode != 0:
            print(
                f"mutation: mutmut failed (exit {run.returncode}); the end of {log.relative_to(ROOT)}:", file=sys.stderr
            )
            print(log.read_text()[-3000:].replace("\r", "\n"), file=sys.stderr)
            return 2

    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    results = dict(previous.get("modules", {}))
    now, head = dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), commit()
    low = []
    print(f"\n{'module':45} {'killed':>7} {'survived':>9} {'equiv.':>7} {'unchecked':>9} {'score':>7}")
    for module in modules:
        entry = score_module(module, equivalents)
        results[module] = {**entry, "when": now, "commit": head}
        print(
            f"{module:45} {entry['killed']:7} {entry['survived']:9} {entry['equivalent']:7} "
            f"{entry['not_checked']:9} {entry['score']:7.1%}"
        )
        if float(entry["score"]) < args.min_score:  # type: ignore[arg-type]
            low.append(module)
        for name in entry["surviving_mutants"]:  # type: ignore[attr-defined]
            print(f"    survived: {name}    (see: .venv/bin/mutmut show {name})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps({"modules": results, "when": now, "commit": head}, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"\nmutation: wrote {args.output}")
    if low:
        print(f"mutation: under {args.min_score:.0%}: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
