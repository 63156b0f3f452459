"""Run a composite action's steps the way the GitHub runner does, on this machine.

`run_action(path, inputs, ...)` parses `action.yml`, fills in the inputs' defaults, and for each step:
evaluates its `if:`, evaluates the `${{ }}` expressions in its `env:` (inputs, earlier steps'
outputs), writes the `run:` script to a file and runs it with `bash --noprofile --norc -eo pipefail`
(what `shell: bash` means), with GITHUB_ACTION_PATH, GITHUB_OUTPUT (a fresh file per step),
GITHUB_STEP_SUMMARY, RUNNER_TEMP, GITHUB_WORKSPACE and GITHUB_ACTIONS=true set. Step outputs are
parsed from GITHUB_OUTPUT in both of GitHub's forms (`k=v` and `k<<DELIM ... DELIM`); the action's
outputs are then evaluated from `outputs.*.value`. A failing step stops the action, as on GitHub.

The expression evaluator covers what our actions use: string literals, `inputs.*`,
`steps.<id>.outputs.*`, `==`, `!=`, `!`, `&&`, `||` and parentheses, with GitHub's semantics
(`a || b` is the first truthy operand, `a && b` the last one when all are truthy; '' is falsy).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))")


class _Expr:
    def __init__(self, text: str, context: dict[str, Any]):
        self.tokens: list[tuple[str, str]] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise ValueError(f"cannot parse expression {text!r} at {pos}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.i, self.context = 0, context

    def _peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def parse(self) -> Any:
        value = self._or()
        if self.i != len(self.tokens):
            raise ValueError(f"trailing tokens in expression: {self.tokens[self.i :]}")
        return value

    def _or(self) -> Any:
        value = self._and()
        while self._peek() == "||":
            self.i += 1
            right = self._and()
            value = value if _truthy(value) else right
        return value

    def _and(self) -> Any:
        value = self._cmp()
        while self._peek() == "&&":
            self.i += 1
            right = self._cmp()
            value = right if _truthy(value) else value
        return value

    def _cmp(self) -> Any:
        left = self._unary()
        if self._peek() in ("==", "!="):
            op = self.tokens[self.i][1]
            self.i += 1
            right = self._unary()
            same = str(left if left is not None else "").lower() == str(right if right is not None else "").lower()
            return same if op == "==" else not same
        return left

    def _unary(self) -> Any:
        if self._peek() == "!":
            self.i += 1
            return not _truthy(self._unary())
        if self._peek() == "(":
            self.i += 1
            value = self._or()
            assert self._peek() == ")", "missing )"
            self.i += 1
            return value
        kind, text = self.tokens[self.i]
        self.i += 1
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if text in ("true", "false"):
            return text == "true"
        node: Any = self.context
        for part in text.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


def _truthy(value: Any) -> bool:
    return value not in (None, "", False, 0)


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    return _Expr(expression, context).parse()


def substitute(text: str, context: dict[str, Any]) -> str:
    """Replace each `${{ expr }}` in `text` with its value ('' for null), as GitHub does."""

    def one(match: re.Match[str]) -> str:
        value = evaluate(match.group(1), context)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return re.sub(r"\$\{\{(.*?)\}\}", one, str(text))


def parse_output_file(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT's two forms: `name=value` and `name<<DELIMITER` ... `DELIMITER`."""
    result: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body: list[str] = []
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise AssertionError(f"output {name!r}: delimiter {delimiter!r} never closed")
            i += 1
            result[name] = "\n".join(body)
        else:
            name, _, value = line.partition("=")
            result[name] = value
    return result


@dataclass
class ActionResult:
    returncode: int
    outputs: dict[str, str]
    steps: dict[str, dict[str, str]]
    stdout: str
    stderr: str
    summary: str
    output_files: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return self.stdout + self.stderr


def run_action(
    action_dir: Path,
    inputs: dict[str, str],
    *,
    workspace: Path,
    runner_temp: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> ActionResult:
    spec = YAML(typ="safe").load((action_dir / "action.yml").read_text())
    assert spec["runs"]["using"] == "composite"
    unknown = set(inputs) - set(spec.get("inputs") or {})
    assert not unknown, f"not inputs of {action_dir}/action.yml: {sorted(unknown)}"
    values = {name: str((meta or {}).get("default", "")) for name, meta in (spec.get("inputs") or {}).items()}
    values.update(inputs)
    context: dict[str, Any] = {"inputs": values, "steps": {}}
    summary_file = runner_temp / "step-summary.md"
    summary_file.touch()
    stdout, stderr, ran, output_files = [], [], [], {}
    returncode = 0
    base_env = {**os.environ, **(env or {})}
    for key in [k for k in base_env if k.startswith("GITHUB_")]:
        base_env.pop(key)
    for index, step in enumerate(spec["runs"]["steps"]):
        step_id = step.get("id") or f"__step{index}"
        condition = step.get("if")
        if condition is not None and not _truthy(
            evaluate(str(condition).replace("${{", "").replace("}}", ""), context)
        ):
            context["steps"][step_id] = {"outputs": {}, "outcome": "skipped"}
            continue
        assert step.get("shell") == "bash", f"step {step_id}: run steps must say shell: bash"
        assert "${{" not in step["run"], f"step {step_id}: ${{{{ }}}} inside run:"
        output_file = runner_temp / f"output-{step_id}"
        output_file.write_text("")
        script = runner_temp / f"step-{step_id}.sh"
        script.write_text(step["run"])
        step_env = {
            **base_env,
            "GITHUB_ACTIONS": "true",
            "GITHUB_ACTION_PATH": str(action_dir),
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_STEP_SUMMARY": str(summary_file),
            "GITHUB_WORKSPACE": str(workspace),
            "RUNNER_TEMP": str(runner_temp),
            **{k: substitute(v, context) for k, v in (step.get("env") or {}).items()},
        }
        if env:
            step_env.update({k: v for k, v in env.items() if k.startswith("GITHUB_")})
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workspace,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        ran.append(step_id)
        stdout.append(proc.stdout)
        stderr.append(proc.stderr)
        output_files[step_id] = output_file.read_text()
        context["steps"][step_id] = {
            "outputs": parse_output_file(output_files[step_id]),
            "outcome": "success" if proc.returncode == 0 else "failure",
        }
        if proc.returncode != 0:
            returncode = proc.returncode
            break
    outputs = {name: substitute(meta["value"], context) for name, meta in (spec.get("outputs") or {}).items()}
    return ActionResult(
        returncode=returncode,
        outputs=outputs,
        steps={k: v["outputs"] for k, v in context["steps"].items()},
        stdout="".join(stdout),
        stderr="".join(stderr),
        summary=summary_file.read_text(),
        output_files=output_files,
        ran=ran,
    )
