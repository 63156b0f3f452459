#!/usr/bin/env python3
"""Mutation testing of theory-deploy's core, with mutmut; `scripts/mutation` sets up and calls this.

    scripts/mutation                          every core module
    scripts/mutation src/theory_deploy/refs.py  some of them
    scripts/mutation --changed HEAD~1         the core modules a change touched (CI)
    scripts/mutation --report-only            score what mutants/ holds (an interrupted run)
    scripts/mutation --recheck MODULE...      only what changed since the module's recorded run

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

--recheck follows mutmut's own incremental rule without needing the mutants/ folder of the earlier
run (a fresh checkout has none): against the module's entry in the output file, every mutant of a
function whose code changed since the entry's commit is tested again, and so is every mutant the
entry left alive that tests/mutation_equivalents.txt does not list now. Every other mutant keeps
the entry's verdict: killed then, so killed now, as mutmut itself assumes when it skips a function
whose code did not change. A mutant that is listed now, or was listed at any time since the entry,
counts as equivalent (never as a kill) unless it is run again. The mutants generated from the entry
commit's source must add up to its counts. An entry that is not a complete run of a clean commit (an
interrupted run) keeps no verdict: every mutant of that module is tested, in the same mutmut run.
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
# checker's kill. A timeout (36, and SIGXCPU as 24, -24 or 152; 255) is a kill too, as PIT and Stryker
# count it: the tests did not pass, and a CI run on that code would hang until its own limit. They are
# counted in `timeouts` as well, so a score that rests on them shows it. Everything else is a mutant
# no test noticed.
TIMEOUT_EXIT_CODES = {36, 24, -24, 152, 255}
KILLED_EXIT_CODES = {1, 3, 37} | TIMEOUT_EXIT_CODES


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


def score_module(exit_codes: dict[str, int | None], equivalents: dict[str, str]) -> dict[str, object]:
    """Counts of one module's verdicts (mutant name -> mutmut exit code). Mutants mutmut has not
    checked yet (an interrupted run) are reported as `not_checked` and left out of the score; every
    other mutant no test failed on (survived, no tests, timeout, suspicious) counts against it."""
    checked = {n: code for n, code in exit_codes.items() if code is not None}
    killed = [n for n, code in checked.items() if code in KILLED_EXIT_CODES]
    listed = sorted(n for n, code in checked.items() if code not in KILLED_EXIT_CODES and n in equivalents)
    surviving = sorted(n for n, code in checked.items() if code not in KILLED_EXIT_CODES and n not in equivalents)
    counted = len(killed) + len(surviving)
    return {
        "killed": len(killed),
        "timeouts": sorted(n for n in killed if checked[n] in TIMEOUT_EXIT_CODES),
        "survived": len(surviving),
        "score": round(len(killed) / counted, 4) if counted else 1.0,
        "equivalent": len(listed),
        "not_checked": len(exit_codes) - len(checked),
        "surviving_mutants": surviving,
    }


# --- --recheck: only what changed since a module's recorded run -----------------------------------


def dotted(module: str) -> str:
    return mutant_glob(module)[:-1]  # "theory_deploy.refs."


def git_show(commit: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def mutants_by_function(module: str, source: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The mutants mutmut generates for `source` (full names), grouped by function, and each mutated
    function's hash (mutmut's own, the one it compares to decide what to test again)."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    mutated = mutate_file_contents(module, source)
    grouped: dict[str, list[str]] = {}
    for name in mutated.mutant_names:
        grouped.setdefault(name.rpartition("__mutmut_")[0], []).append(dotted(module) + name)
    return grouped, dict(mutated.hash_by_function_name)


def equivalents_ever_listed_since(commit: str) -> set[str]:
    """Every mutant name tests/mutation_equivalents.txt has held at any commit since `commit` (an
    entry may have been scored with equivalents committed only after it)."""
    path = EQUIVALENTS.relative_to(ROOT).as_posix()
    later = subprocess.run(
        ["git", "rev-list", f"{commit}..HEAD", "--", path], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    names: set[str] = set()
    for rev in [commit, *later]:
        try:
            text = git_show(rev, path)
        except subprocess.CalledProcessError:  # no list at that commit yet
            continue
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                names.add(line.partition("#")[0].strip())
    return names


class RecheckPlan:
    """Which mutants of one module to test again, and the verdicts the recorded run still gives."""

    def __init__(self, module: str, entry: dict[str, object], equivalents: dict[str, str]) -> None:
        commit = str(entry["commit"])
        self.commit = commit
        self.to_run: list[str] = []
        self.killed_then: list[str] = []
        self.listed: list[str] = []
        if commit.endswith("+dirty") or int(entry.get("not_checked", 0)):  # type: ignore[call-overload]
            # An interrupted run, or one of uncommitted code, gives no verdict worth keeping (its
            # killed mutants are not named): every mutant of the module is tested, as a full run would.
            self.partial = True
            current, _ = mutants_by_function(module, (ROOT / module).read_text())
            self.changed_functions = sorted(current)
            for name in (n for names in current.values() for n in names):
                (self.listed if name in equivalents else self.to_run).append(name)
            return
        self.partial = False
        old, old_hashes = mutants_by_function(module, git_show(commit, module))
        new, new_hashes = mutants_by_function(module, (ROOT / module).read_text())
        recorded = sum(int(entry[k]) for k in ("killed", "survived", "equivalent"))  # type: ignore[call-overload]
        generated = sum(map(len, old.values()))
        if generated != recorded:
            raise SystemExit(
                f"mutation: {module}: {commit}'s source gives {generated} mutants but its entry counts {recorded} "
                "(another mutmut version?); run the module in full (without --recheck)"
            )
        alive_then = set(entry["surviving_mutants"])  # type: ignore[call-overload]
        listed_since = equivalents_ever_listed_since(commit)
        self.changed_functions = sorted(f for f in new if new_hashes.get(f) != old_hashes.get(f))
        for function, names in new.items():
            if function in self.changed_functions:
                self.to_run += names
                continue
            for name in names:
                if name in equivalents:
                    self.listed.append(name)
                elif name in alive_then or name in listed_since:
                    self.to_run.append(name)
                else:
                    self.killed_then.append(name)

    def verdicts(self, tested: dict[str, int | None]) -> dict[str, int | None]:
        """Exit codes for every mutant: this run's where it tested one, else the recorded run's (1, a
        kill, for the killed; 0 for the listed, which score_module counts as equivalent)."""
        codes: dict[str, int | None] = {name: 1 for name in self.killed_then}
        codes.update({name: 0 for name in self.listed})
        codes.update({name: tested.get(name) for name in self.to_run})
        return codes


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
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="test again only the mutants of functions changed since each module's recorded run, and the "
        "mutants it left alive that are not listed as equivalent (see the module docstring)",
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
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    results = dict(previous.get("modules", {}))
    plans: dict[str, RecheckPlan] = {}
    if args.recheck:
        missing = [m for m in modules if m not in results]
        if missing:
            parser.error(f"--recheck needs a recorded run in {args.output} of: {', '.join(missing)}")
        # A rechecked entry keeps the complete run it was built on: checking again starts from there.
        plans = {m: RecheckPlan(m, results[m].get("baseline", results[m]), equivalents) for m in modules}
        for module, plan in plans.items():
            print(
                f"mutation: {module}: since {plan.commit[:12]}, {len(plan.changed_functions)} function(s) changed; "
                f"{len(plan.to_run)} mutant(s) to test again, {len(plan.killed_then)} killed then, "
                f"{len(plan.listed)} listed as equivalent"
            )
    targets = (
        [name for plan in plans.values() for name in plan.to_run] if args.recheck else list(map(mutant_glob, modules))
    )
    # The commit is what mutmut copies now (src/ and tests/ into mutants/): a commit or an edit made
    # while it runs is not what it tested.
    head = commit()
    log = ROOT / "mutants" / "mutmut-run.log"
    log.parent.mkdir(exist_ok=True)
    if not args.report_only and targets:
        print(f"mutation: mutmut over {len(modules)} module(s); log: {log.relative_to(ROOT)}", flush=True)
        with log.open("w") as out:
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mutmut",
                    "run",
                    f"--max-children={args.max_children}",
                    *targets,
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

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    low = []
    print(f"\n{'module':45} {'killed':>7} {'survived':>9} {'equiv.':>7} {'unchecked':>9} {'score':>7}")
    for module in modules:
        if module in plans and not plans[module].partial:
            plan = plans[module]
            entry = score_module(plan.verdicts(verdicts(module)), equivalents)
            baseline = results[module].get("baseline", results[module])
            entry |= {
                "rechecked": {
                    "since": plan.commit,
                    "changed_functions": plan.changed_functions,
                    "tested_again": len(plan.to_run),
                },
                "baseline": baseline,
            }
        elif module in plans:  # every mutant was tested: a full run of its own, with no baseline
            entry = score_module(plans[module].verdicts(verdicts(module)), equivalents)
        else:
            entry = score_module(verdicts(module), equivalents)
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
