"""An unchanged build is not run again (theory_deploy.build_inputs): what counts as a change, what
does not, and when no fingerprint is trusted at all.

The builds run through build.build_platform_images, the stage engine's own call, against the docker
CLI stand-in (tests/fake_docker.py), whose calls.log shows whether the engine was asked to build.
The ignore rules are checked against real BuildKit in tests/test_build_inputs_docker.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fake_docker import FakeDocker
from theory_deploy import build, build_inputs, registry_file
from theory_deploy.build_inputs import IgnoreRules, UnsupportedInput, named_images
from theory_deploy.docker import Builder
from theory_deploy.refs import ProcessorRef

ROOT = Path(__file__).resolve().parents[1]
REF = ProcessorRef.parse("llm/litellm@1")
BASE = "127.0.0.1:5000/theory/python-base@sha256:" + "b" * 64
PIN = "ghcr.io/theory-deploy/llm-litellm@sha256:" + "a" * 64


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's repository holding the sample processor (context: the repository root, cut down by
    the processor's Dockerfile.dockerignore), and a docker CLI stand-in with an amd64 image to give."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "processors" / "llm" / "litellm", root / "processors" / "llm" / "litellm")
    (root / "README.md").write_text("a user's repository\n")
    monkeypatch.setenv("THEORY_BUILD_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setenv("THEORY_RUNTIME_CACHE_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("GITHUB_SERVER_URL", raising=False)
    return root


@pytest.fixture
def engine(tmp_path: Path) -> FakeDocker:
    docker = FakeDocker(tmp_path / "bin")
    docker.add_built_image("amd64", {"app.txt": b"one\n"})
    docker.add_built_image("arm64", {"app.txt": b"one\n"})
    return docker


def _build(
    repo: Path, engine: FakeDocker, *, platforms: tuple[str, ...] = ("linux/amd64",), **kwargs: object
) -> tuple[dict[str, str], list[str], list[str]]:
    """Build as `processorctl build` does: the image ids, this build's engine calls and progress lines."""
    before = len(engine.calls())
    lines: list[str] = []
    loaded = registry_file.load_processor(REF, repo)
    built = build.build_platform_images(
        loaded.spec,
        repo,
        list(platforms),
        kwargs.pop("build_args", {"BASE_IMAGE": BASE}),  # type: ignore[arg-type]
        builder=Builder(str(engine.path), "buildkit"),
        progress=lines.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return {arch: image.image_id for arch, image in built.items()}, engine.calls()[before:], lines


def _builds(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("build ")]


def test_an_unchanged_build_is_not_run_again(repo: Path, engine: FakeDocker) -> None:
    first, calls, _ = _build(repo, engine)
    assert len(_builds(calls)) == 1
    again, calls, lines = _build(repo, engine)
    assert again == first
    # one look at the engine's image for the tag, nothing built
    assert calls == [f"image inspect -- theory-local/{REF.slug}:amd64"]
    assert (
        f"linux/amd64: nothing it is built from changed: theory-local/{REF.slug}:amd64 is still {first['amd64']} (not rebuilt)"
        in lines
    )


FOLDER = Path("processors/llm/litellm")


@pytest.mark.parametrize(
    ("change", "rebuilt"),
    [
        (lambda r: (r / FOLDER / "handler.py").write_text("# changed\n"), True),
        (lambda r: (r / FOLDER / "handler.py").chmod(0o755), True),
        (lambda r: (r / FOLDER / "new_module.py").write_text("x = 1\n"), True),
        (
            lambda r: (r / FOLDER / "Dockerfile").write_text((r / FOLDER / "Dockerfile").read_text() + "\n# note\n"),
            True,
        ),
        (
            lambda r: (r / FOLDER / "registry.yaml").write_text(
                (r / FOLDER / "registry.yaml").read_text().replace("cpu: 1", "cpu: 2")
            ),
            True,
        ),
        # left out of the context by Dockerfile.dockerignore: the engine would not even see these
        (lambda r: (r / "README.md").write_text("edited\n"), False),
        (lambda r: (r / "other").mkdir() or (r / "other" / "x.py").write_text("y\n"), False),
        (
            lambda r: (r / FOLDER / "__pycache__").mkdir() or (r / FOLDER / "__pycache__" / "h.pyc").write_bytes(b"\0"),
            False,
        ),
        (
            lambda r: (r / FOLDER / "Dockerfile.dockerignore").write_text(
                (r / FOLDER / "Dockerfile.dockerignore").read_text()
            ),
            False,
        ),
        # a pin: what the pin stage itself commits, which no image holds
        (lambda r: registry_file.write_pins(r / FOLDER / "registry.yaml", {"amd64": PIN}), False),
    ],
    ids=[
        "source",
        "mode",
        "new-file",
        "dockerfile",
        "registry-field",
        "outside",
        "other-folder",
        "pycache",
        "ignore-same",
        "pin",
    ],
)
def test_what_makes_a_build_run_again(repo: Path, engine: FakeDocker, change: object, rebuilt: bool) -> None:
    _build(repo, engine)
    change(repo)  # type: ignore[operator]
    _, calls, _ = _build(repo, engine)
    assert len(_builds(calls)) == (1 if rebuilt else 0)


def test_build_args_labels_and_the_engine_are_part_of_the_build(
    repo: Path, engine: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    _build(repo, engine)
    _, calls, _ = _build(repo, engine, build_args={"BASE_IMAGE": BASE, "EXTRA": "1"})
    assert len(_builds(calls)) == 1
    _, calls, _ = _build(repo, engine, build_args={"BASE_IMAGE": BASE, "EXTRA": "1"}, labels={"team": "x"})
    assert len(_builds(calls)) == 1
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")  # another engine
    _, calls, _ = _build(repo, engine, build_args={"BASE_IMAGE": BASE, "EXTRA": "1"}, labels={"team": "x"})
    assert len(_builds(calls)) == 1
    _, calls, _ = _build(repo, engine, build_args={"BASE_IMAGE": BASE, "EXTRA": "1"}, labels={"team": "x"})
    assert _builds(calls) == []


def test_a_reused_image_must_still_be_in_the_engine_for_its_platform(repo: Path, engine: FakeDocker) -> None:
    first, _, _ = _build(repo, engine)
    tag = f"theory-local/{REF.slug}:amd64"
    # another build moved the tag: the image is still there, so the tag is pointed back at it
    engine.images[tag] = {"Id": "sha256:" + "c" * 64, "Architecture": "amd64", "Os": "linux"}
    engine.save()
    again, calls, _ = _build(repo, engine)
    assert again == first and _builds(calls) == []
    assert calls[-1] == f"tag {first['amd64']} {tag}"
    assert engine.calls()[-1] == calls[-1]
    # the image itself is gone (docker rmi, an engine reset): built again
    rebuilt = engine.add_built_image("amd64", {"app.txt": b"one, built again\n"})
    for name in (tag, first["amd64"]):
        del engine.images[name]
    engine.save()
    again, calls, _ = _build(repo, engine)
    assert len(_builds(calls)) == 1 and again == {"amd64": rebuilt}


def test_no_fingerprint_when_the_inputs_cannot_be_trusted(repo: Path, engine: FakeDocker) -> None:
    # the Dockerfile's default base is a tag the engine does not hold: the build would pull it
    for _ in range(2):
        _, calls, lines = _build(repo, engine, build_args={})
        assert len(_builds(calls)) == 1
    assert (
        "linux/amd64: building without a fingerprint: python:3.12-slim is a tag the engine does not have yet" in lines
    )
    # --no-cache asks for every step to run
    _build(repo, engine)
    _, calls, _ = _build(repo, engine, no_cache=True)
    assert len(_builds(calls)) == 1 and "--no-cache" in _builds(calls)[0]


def test_a_base_by_tag_counts_by_the_engines_image_of_it(repo: Path, engine: FakeDocker) -> None:
    engine.images["base:1"] = {"Id": "sha256:" + "1" * 64}
    engine.save()
    _build(repo, engine, build_args={"BASE_IMAGE": "base:1"})
    _, calls, _ = _build(repo, engine, build_args={"BASE_IMAGE": "base:1"})
    assert _builds(calls) == [] and "image inspect -- base:1" in calls
    engine.images["base:1"] = {"Id": "sha256:" + "2" * 64}  # the tag now names another image
    engine.save()
    _, calls, _ = _build(repo, engine, build_args={"BASE_IMAGE": "base:1"})
    assert len(_builds(calls)) == 1
    # two platforms build with --pull: the tag may move in its registry, so nothing is reused
    for _ in range(2):
        _, calls, lines = _build(
            repo, engine, platforms=("linux/amd64", "linux/arm64"), build_args={"BASE_IMAGE": "base:1"}
        )
        assert len(_builds(calls)) == 2
    assert "linux/arm64: building without a fingerprint: base:1 is a tag and the build pulls it (--pull)" in lines
    # by digest, --pull changes nothing the build can see
    _build(repo, engine, platforms=("linux/amd64", "linux/arm64"))
    _, calls, _ = _build(repo, engine, platforms=("linux/amd64", "linux/arm64"))
    assert _builds(calls) == []


# --- the ignore rules (moby/patternmatcher) -------------------------------------------------------


def test_ignore_rules_as_buildkit_applies_them() -> None:
    rules = IgnoreRules((ROOT / FOLDER / "Dockerfile.dockerignore").read_text().splitlines())
    kept = [
        "processors/llm/litellm",
        "processors/llm/litellm/app.py",
        "processors/llm/litellm/registry.yaml",
        "processors/llm/litellm/sub/x.py",
    ]
    left_out = [
        "README.md",
        "processors",  # the folder itself: matched by `*`; only what is under litellm/ comes back
        "processors/llm",
        "processors/llm/other/app.py",
        "processors/llm/litellm/Dockerfile",
        "processors/llm/litellm/Dockerfile.dockerignore",
        "processors/llm/litellm/processor.json",
        "processors/llm/litellm/__pycache__",
        "processors/llm/litellm/__pycache__/handler.cpython-312.pyc",
        "processors/llm/litellm/sub/mod.pyc",
        "processors/llm/litellm/x.egg-info/PKG-INFO",
    ]
    assert [p for p in kept if rules.excluded(p)] == []
    assert [p for p in left_out if not rules.excluded(p)] == []
    assert rules.may_reinclude_under("processors") and rules.may_reinclude_under("processors/llm")
    assert not rules.may_reinclude_under("src") and not rules.may_reinclude_under("processors/other")


@pytest.mark.parametrize(
    ("lines", "path", "excluded"),
    [
        (["*.md"], "README.md", True),
        (["*.md"], "docs/README.md", False),  # `*` stays within one folder
        (["**/*.md"], "docs/deep/README.md", True),
        (["**/*.md"], "README.md", True),  # `**/` matches no folder at all too
        (["docs/**"], "docs/a/b", True),
        (["a/**b"], "a/x/y/b", True),
        (["a/**b"], "a/b", True),
        (["a/**b"], "a/xb", False),
        (["/docs"], "docs/a", True),  # a leading slash is the context's root; a folder takes what is under it
        (["docs/"], "docs/a", True),
        (["./docs/../build"], "build/x", True),  # cleaned as Go's filepath.Clean
        (["?.txt"], "a.txt", True),
        (["?.txt"], "ab.txt", False),
        (["docs", "!docs/keep.md"], "docs/keep.md", False),
        (["docs", "!docs/keep.md", "docs/*.md"], "docs/keep.md", True),  # the last match wins
        (["# a comment", "", "  a  "], "a", True),
    ],
)
def test_ignore_patterns(lines: list[str], path: str, excluded: bool) -> None:
    assert IgnoreRules(lines).excluded(path) is excluded


@pytest.mark.parametrize("line", ["[abc].txt", "a\\*b", "**.md", "!**x"])
def test_ignore_syntax_not_interpreted_gives_no_fingerprint(line: str) -> None:
    with pytest.raises(UnsupportedInput):
        IgnoreRules([line])


# --- the images a Dockerfile names ----------------------------------------------------------------

DIGEST = "@sha256:" + "d" * 64


@pytest.mark.parametrize(
    ("dockerfile", "args", "images"),
    [
        ("FROM scratch\nCOPY a /\n", {}, []),
        (
            f"ARG BASE=py{DIGEST}\nFROM ${{BASE}} AS deps\nFROM deps AS spec\nFROM deps\nCOPY --from=spec /a /a\n",
            {},
            [f"py{DIGEST}"],
        ),
        ("ARG BASE=py:1\nFROM $BASE\n", {"BASE": "other:2"}, ["other:2"]),
        ("ARG V\nFROM img:${V:-3}\n", {}, ["img:3"]),
        (
            "FROM a:1 AS one\nFROM b:2\nCOPY --from=one /x /x\nCOPY --from=0 /y /y\nCOPY --from=tools:9 /z /z\n",
            {},
            ["a:1", "b:2", "tools:9"],
        ),
        ("FROM a:1\nRUN --mount=type=bind,from=cache:5,source=/s,target=/t \\\n    true\n", {}, ["a:1", "cache:5"]),
        ("FROM --platform=$BUILDPLATFORM a:1\n", {}, ["a:1"]),
        (f"# syntax=docker/dockerfile{DIGEST}\nFROM a:1\n", {}, [f"docker/dockerfile{DIGEST}", "a:1"]),
    ],
)
def test_the_images_a_dockerfile_names(dockerfile: str, args: dict[str, str], images: list[str]) -> None:
    assert named_images(dockerfile, args) == images


@pytest.mark.parametrize(
    "dockerfile",
    [
        "# escape=`\nFROM a:1\n",
        "# syntax=docker/dockerfile:1\nFROM a:1\n",  # the frontend is resolved in its registry each build
        "FROM img:$UNSET\n",
        "FROM a:1\nADD https://example.com/x.tgz /x\n",
        "FROM a:1\nADD git@github.com:o/r.git /r\n",
        "FROM a:1 AS one\nFROM b:1\nARG LOCAL=x\nCOPY --from=$LOCAL /a /a\n",
    ],
)
def test_dockerfiles_whose_inputs_cannot_be_named_give_no_fingerprint(dockerfile: str) -> None:
    with pytest.raises(UnsupportedInput):
        named_images(dockerfile, {})


def test_records_of_another_machine_or_a_broken_file_are_ignored(tmp_path: Path) -> None:
    records = build_inputs.BuildRecords(tmp_path)
    records.remember("f" * 64, "sha256:" + "e" * 64, "amd64")
    assert records.image_for("f" * 64) == "sha256:" + "e" * 64
    (tmp_path / ("0" * 64 + ".json")).write_text("{not json")
    (tmp_path / ("1" * 64 + ".json")).write_text('{"image_id": "latest"}')
    assert records.image_for("0" * 64) is None and records.image_for("1" * 64) is None
    assert records.image_for("2" * 64) is None


@pytest.mark.parametrize(
    ("tool", "argv"),
    [
        ("processorctl", ["build"]),
        ("theory-deploy", ["pipeline", "--env", "dev", "--stages", "build"]),
    ],
)
def test_no_cache_on_the_command_line_reaches_the_build(
    tool: str,
    argv: list[str],
    repo: Path,
    engine: FakeDocker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--no-cache` on build and on the pipeline (publish shares the pipeline's request): the second,
    unchanged build runs again, with --no-cache, instead of reusing the first one's image."""
    from theory_deploy.cli import framework, pipeline, processorctl

    parser = processorctl.parser() if tool == "processorctl" else pipeline.parser()
    monkeypatch.setenv("THEORY_REPO_ROOT", str(repo))
    monkeypatch.setenv("THEORY_DOCKER", str(engine.path))
    common = ["--ref", str(REF), "--platforms", "linux/amd64", "--build-arg", f"BASE_IMAGE={BASE}", "--json"]
    assert framework.run_tool(parser, [*argv, *common]) == 0, capsys.readouterr()
    before = len(engine.calls())
    assert framework.run_tool(parser, [*argv, *common]) == 0, capsys.readouterr()
    assert _builds(engine.calls()[before:]) == []  # unchanged: reused
    before = len(engine.calls())
    assert framework.run_tool(parser, [*argv, *common, "--no-cache"]) == 0, capsys.readouterr()
    [again] = _builds(engine.calls()[before:])
    assert "--no-cache" in again.split()


def test_build_records_keep_the_ones_used_last(tmp_path: Path) -> None:
    records = build_inputs.BuildRecords(tmp_path / "records", keep=3)
    image = {name: "sha256:" + name * 64 for name in "abcde"}
    for age, name in enumerate("abc"):
        records.remember(name, image[name], "amd64")
        os.utime(records.root / f"{name}.json", ns=(age * 10**9, age * 10**9))  # a oldest, c newest
    assert records.image_for("a") == image["a"]  # a reuse makes `a` the one used last
    records.remember("d", image["d"], "amd64")  # four records: the least recently used goes
    assert sorted(p.name for p in records.root.iterdir()) == ["a.json", "c.json", "d.json"]
    assert records.image_for("b") is None
    records.remember("e", image["e"], "amd64")
    assert len(list(records.root.iterdir())) == 3 and records.image_for("e") == image["e"]
