"""The fast registry.yaml reader (bounded_yaml.fast_document) against the exact one (limits, then the
round-trip loader, then plain containers): it may decline any document, but a document it answers
for must be exactly what the exact reader gives; and check_file answers the same either way."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theory_deploy import bounded_yaml, registry_file
from theory_deploy.bounded_yaml import Refused, check_yaml_limits, fast_document, has_fast_reader
from theory_deploy.cli import processorctl
from theory_deploy.registry_file import check_file, check_files

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "processors/llm/litellm/registry.yaml"

pytestmark = pytest.mark.skipif(not has_fast_reader(), reason="PyYAML's libyaml parser is not installed")


def exact(text: str):
    """What check_file's exact reader makes of `text`: the plain document, or None when it refuses."""
    try:
        check_yaml_limits(text)
        doc = registry_file._yaml().load(text)
    except Refused:
        return None
    except Exception:
        return None
    if not isinstance(doc, registry_file.CommentedMap):
        return None
    return registry_file._plain(doc)


def same_or_declined(text: str) -> object:
    fast = fast_document(text)
    if fast is not None:
        slow = exact(text)
        assert slow is not None, f"the fast reader accepted what the exact reader refuses: {text!r}"
        assert fast == slow and _types(fast) == _types(slow), text
    return fast


def _types(node):
    if isinstance(node, dict):
        return {k: _types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_types(v) for v in node]
    return type(node).__name__ if not isinstance(node, str) else "str"


PLAIN_DOCUMENTS = [
    SAMPLE.read_text(),
    "a: 1\nb: -2\nc: +3\nd: 0x1F\ne: 0o17\nf: 1_000\ng: 017\n",
    "a: 1.5\nb: .inf\nc: -.Inf\nd: .nan\ne: 1e3\nf: 6.02E+23\ng: 1.\n",
    "a: true\nb: False\nc: TRUE\nd: yes\ne: no\nf: on\ng: off\nh: y\n",
    "a: null\nb: ~\nc:\nd: Null\ne: NULL\nf: ''\ng: \"\"\n",
    "a: 2024-01-01\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10 -5\n",
    "a: 'single ''quoted'''\nb: \"double \\t \\u00e9 \\x41\"\nc: plain text with: colon\nd: \"1\"\ne: '2'\n",
    "a: |\n  literal\n   more\n\n  end\nb: >\n  folded\n  text\n\n   indented\n  back\nc: |-\n  strip\nd: >+\n  keep\n\n",
    "a: [1, two, 'three', {four: 4}, [5]]\nb: {x: 1, y: [2, 3], 'z': \"w\"}\nc: []\nd: {}\n",
    "# comment\na:   # trailing\n  - b   # c\n  - c\n\nd:\n- e\n- f: g\n  h: i\n",
    'é: ünïcödé\n日本: 語\nemoji: "\\U0001F600"\n',
    "a: b # comment\n---\n",
    "a:\n  b:\n    c:\n      d: [e]\n",
    "key with spaces: value\n? explicit\n: value\n",
    "a: \"multi\n  line\n\n  double\"\nb: 'multi\n  line single'\nc: plain\n  multi\n  line\n",
]


@pytest.mark.parametrize("text", PLAIN_DOCUMENTS)
def test_plain_documents_read_the_same_both_ways(text: str) -> None:
    result = same_or_declined(text)
    if text == PLAIN_DOCUMENTS[0]:
        assert result is not None  # the sample takes the fast path


DECLINED = [
    "a: &x 1\nb: *x\n",  # alias (refused by the limits)
    "a: &x 1\n",  # anchor
    "a: !!str 1\n",  # tag
    "a: !custom x\n",
    "a: ! x\n",
    "%YAML 1.1\n---\na: yes\n",  # a directive changes how scalars resolve
    "%TAG !e! tag:example.com,2000:\n---\na: 1\n",
    "<<: {a: 1}\nb: 2\n",  # merge key
    "a: 1\na: 2\n",  # duplicate key
    "1: a\n",  # a key that is not a string
    "null: a\n",
    "[a]: b\n",  # a collection as a key
    "? {a: 1}\n: b\n",
    "a: 1\n---\nb: 2\n",  # two documents
    "- a\n- b\n",  # not a mapping
    "just text\n",
    "",
    "a: [1\n",  # not YAML
    "a: b: c\n",
    "\ta: 1\n",
    "a:\n\t- b\n",
    "=: 1\n",
    "a: b\tc\n",  # ruamel refuses tabs libyaml takes
    "a: |#x\n  b\n",  # ruamel refuses a comment glued to the indicator
    "a: b\u2028c: d\n",
]


@pytest.mark.parametrize("text", DECLINED)
def test_anything_unusual_is_left_to_the_exact_reader(text: str) -> None:
    assert fast_document(text) is None


def test_the_limits_decline_as_the_exact_reader_refuses(monkeypatch) -> None:
    deep = "a: " + "[" * (bounded_yaml.MAX_DEPTH + 1) + "]" * (bounded_yaml.MAX_DEPTH + 1) + "\n"
    assert fast_document(deep) is None
    ok = "a: " + "[" * (bounded_yaml.MAX_DEPTH - 1) + "]" * (bounded_yaml.MAX_DEPTH - 1) + "\n"
    assert fast_document(ok) == exact(ok) != None  # noqa: E711
    monkeypatch.setenv(bounded_yaml.MAX_NODES_ENV, "5")
    assert fast_document("a: [1, 2, 3]\n") is None  # 6 nodes: the mapping, a, the list, 1, 2, 3
    with pytest.raises(Refused):
        check_yaml_limits("a: [1, 2, 3]\n")
    assert fast_document("a: [1, 2]\n") == {"a": [1, 2]}  # 5 nodes
    monkeypatch.setenv(bounded_yaml.MAX_BYTES_ENV, "10")
    assert fast_document("a: 123456789\n") is None


def test_deep_nesting_in_the_c_parser_is_declined_without_a_crash() -> None:
    """libyaml's own nesting cap, and ours before any recursion: a megabyte of brackets is no crash."""
    for text in ("[" * 500_000, "- " * 300_000 + "x", "a: " + "{b: " * 200_000):
        assert fast_document(text) is None


YAMLISH = st.lists(
    st.sampled_from(
        [*"ab1 :-[]{},'\"#|>\n\t.?!&*%@`\\0xeE+_~", "é", "\u2028", "\x85", "\r", "\ufeff", ": ", "- ", "\n  "]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_fuzz_the_fast_reader_never_accepts_what_the_exact_one_reads_otherwise(text: str) -> None:
    same_or_declined(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
            ),
            max_leaves=10,
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(["block", "flow"]),
)
def test_fuzz_documents_written_by_ruamel_read_the_same(data: dict, style: str) -> None:
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.default_flow_style = style == "flow"
    out = io.StringIO()
    yaml.dump(data, out)
    same_or_declined(out.getvalue())


# --- check_file: the same answers with and without the fast reader ---------------------------------


def _repo_with(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "processors/llm/litellm"
    folder.mkdir(parents=True)
    path = folder / "registry.yaml"
    path.write_text(text)
    return path


BROKEN = {
    "unknown key": ("  port: 8000\n", "  port: 8000\n  colour: red\n"),
    "bad pin": ("amd64: null", "amd64: ghcr.io/theory-deploy/llm-litellm:latest"),
    "reserved secret": ("required: [OPENAI_API_KEY]", "required: [OPENAI_API_KEY, GITHUB_TOKEN]"),
    "bad schema": ("      const: v1", "      type: 12"),
    "nul": ("path: /run", 'path: "/run\\0"'),
    "context outside": ("context: ../../..", "context: ../../../.."),
    "alias": ("runtime:\n  cpu: 1", "runtime:\n  cpu: &c 1\n  gpu2: *c"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_problems_are_the_same_with_or_without_the_fast_reader(tmp_path: Path, case: str, monkeypatch) -> None:
    old, new = BROKEN[case]
    text = SAMPLE.read_text()
    assert old in text
    path = _repo_with(tmp_path, text.replace(old, new, 1))
    monkeypatch.chdir(tmp_path)
    spec, problems = check_file(path)
    assert spec is None and problems
    assert all(p.line > 1 or "outside" in p.message for p in problems), problems  # placed, not 1:1
    monkeypatch.setattr(bounded_yaml, "_reader", None)  # no C parser: the exact reader alone
    assert check_file(path) == (spec, problems)


def test_a_valid_file_gives_the_same_spec_either_way(tmp_path: Path, monkeypatch) -> None:
    path = _repo_with(tmp_path, SAMPLE.read_text().replace("cpu: 1", "cpu: 1.5").replace("port: 8000", "port: 0x1F40"))
    fast = check_file(path)
    monkeypatch.setattr(bounded_yaml, "_reader", None)
    slow = check_file(path)
    assert fast == slow and fast[1] == [] and fast[0].build.port == 8000


def test_check_files_reports_like_check_file_one_by_one(tmp_path: Path) -> None:
    good = _repo_with(tmp_path, SAMPLE.read_text())
    bad_folder = tmp_path / "processors/llm/bad"
    bad_folder.mkdir()
    bad = bad_folder / "registry.yaml"
    bad.write_text(SAMPLE.read_text().replace("llm/litellm", "llm/bad").replace("cpu: 1", "cpu: -1"))
    valid, problems = check_files([good, bad])
    assert [p for p, _ in valid] == [good]
    assert problems == check_file(bad)[1] and problems[0].line == 21


# --- start-up: a verb loads its own module only ------------------------------------------------------


def test_every_verb_is_registered_by_the_module_the_table_names() -> None:
    parser = processorctl.parser()
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    found = {verb: sub.get_default("handler").__module__.rsplit(".", 1)[-1] for verb, sub in subparsers.choices.items()}
    assert found == processorctl.VERB_MODULES


def test_validate_and_plan_do_not_import_the_build_push_and_target_machinery(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from theory_deploy.cli import processorctl
        for verb in ("validate", "plan"):
            processorctl.parser([verb])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("httpx", "modal", "websockets", "docker")
                       or m in ("theory_deploy.cli.image_cmds", "theory_deploy.pipeline", "theory_deploy.oci"))
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_validate_runs_from_a_partial_parser_with_every_verb_still_in_help(tmp_path: Path) -> None:
    shutil.copytree(REPO / "processors/llm/litellm", tmp_path / "processors/llm/litellm")
    ok = subprocess.run(
        [sys.executable, "-m", "theory_deploy.cli.processorctl", "validate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "theory_deploy.cli.processorctl", "nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert usage.returncode == 2 and "'publish'" in usage.stderr and "'validate'" in usage.stderr
