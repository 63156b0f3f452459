"""`processorctl pin`: only a verified platform manifest digest is ever written; every refusal leaves
registry.yaml byte-identical. Synthetic images pushed with our client: no Docker engine needed."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.registry_faults import Fault, FaultProxy, push_attestation, push_index, push_synthetic_image
from theory_deploy import pin
from theory_deploy.cli import framework, processorctl
from theory_deploy.errors import NotADigestError, RepositoryMismatchError
from theory_deploy.oci import RegistryClient, RetryPolicy

REGISTRY_YAML = """\
# a test processor: comments and quoting must survive pin writes
ref: demo/{name}@1

build:
  context: .
  platforms: [linux/amd64, linux/arm64]

image:
  repository: {repository}
  platforms:
    amd64: null  # linux/amd64 manifest
    arm64: null  # linux/arm64 manifest

inputs: {{type: object}}
"""


def make_processor(root: Path, repository: str, name: str = "pinme", *, amd64: str | None = None) -> Path:
    """processors/demo/<name>/registry.yaml for `repository`, its amd64 pin `amd64` (none by default)."""
    folder = root / "processors" / "demo" / name
    folder.mkdir(parents=True)
    path = folder / "registry.yaml"
    text = REGISTRY_YAML.format(name=name, repository=repository)
    if amd64 is not None:
        text = text.replace("amd64: null", f"amd64: {amd64}", 1)
    path.write_text(text)
    return path


@pytest.fixture
def images(registry: str):
    repo = f"test/pin-{uuid.uuid4().hex[:10]}"
    with RegistryClient(registry, retry=RetryPolicy(base_delay=0.01), progress=lambda _m: None) as c:
        amd = push_synthetic_image(c, repo, "amd64", "a")
        arm = push_synthetic_image(c, repo, "arm64", "b")
        att = push_attestation(c, repo, amd.manifest_digest)
        index = push_index(c, repo, [amd, arm], attestations={amd.manifest_digest: att})
        att_only = push_index(c, repo, [], attestations={amd.manifest_digest: att})
    return {
        "repo": f"{registry}/{repo}",
        "amd": amd,
        "arm": arm,
        "att": att,
        "index": index,
        "att_only": att_only,
    }


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("THEORY_REPO_ROOT", str(tmp_path))
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0.01")
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)

    def run(*argv: str) -> tuple[int, dict, str]:
        code = framework.run_tool(processorctl.parser(), ["pin", "--ref", "demo/pinme@1", "--json", *argv])
        out, err = capsys.readouterr()
        return code, json.loads(out), err

    return run


def _snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_pin_both_platforms_then_unchanged(tmp_path: Path, images, cli) -> None:
    path = make_processor(tmp_path, images["repo"])
    amd = f"{images['repo']}@{images['amd'].manifest_digest}"
    arm = f"{images['repo']}@{images['arm'].manifest_digest}"
    code, out, _ = cli("--platform", "amd64", "--oci", amd)
    assert code == 0, out
    assert out["pins"]["amd64"] == {"old": None, "new": amd, "changed": True}
    text = path.read_text()
    assert f"amd64: {amd}  # linux/amd64 manifest" in text
    assert "arm64: null  # linux/arm64 manifest" in text
    assert text.startswith("# a test processor")

    before = _snapshot(path)
    code, out, _ = cli("--platform", "amd64", "--oci", amd)
    assert code == 0 and out["pins"]["amd64"]["changed"] is False and out["changed"] == []
    assert _snapshot(path) == before  # nothing written at all

    code, out, _ = cli("--platform", "arm64", "--oci", arm)
    assert code == 0 and out["changed"] == ["arm64"]


def test_index_digest_resolves_to_the_platform_manifest(tmp_path: Path, images, cli) -> None:
    path = make_processor(tmp_path, images["repo"])
    code, out, err = cli("--platform", "arm64", "--oci", f"{images['repo']}@{images['index']}")
    assert code == 0, out
    want = f"{images['repo']}@{images['arm'].manifest_digest}"
    assert out["pins"]["arm64"]["new"] == want
    assert out["candidates"]["arm64"]["resolved_from_index"] is True
    assert "resolved from its index" in err
    assert want in path.read_text()
    assert images["index"] not in path.read_text()


def test_from_push_file(tmp_path: Path, images, cli) -> None:
    path = make_processor(tmp_path, images["repo"])
    push_json = tmp_path / "push.json"
    push_json.write_text(
        json.dumps(
            {
                "status": "success",
                "index": f"{images['repo']}@{images['index']}",
                "platforms": {
                    "amd64": f"{images['repo']}@{images['amd'].manifest_digest}",
                    "arm64": f"{images['repo']}@{images['arm'].manifest_digest}",
                },
            }
        )
    )
    code, out, _ = cli("--from-push", str(push_json))
    assert code == 0, out
    assert sorted(out["changed"]) == ["amd64", "arm64"]
    text = path.read_text()
    assert images["amd"].manifest_digest in text and images["arm"].manifest_digest in text


@pytest.mark.parametrize(
    ("case", "platform", "code"),
    [
        ("tag", "amd64", "ERR_NOT_A_DIGEST"),
        ("local", "amd64", "ERR_NOT_A_DIGEST"),
        ("placeholder", "arm64", "ERR_NOT_A_DIGEST"),
        ("config", "amd64", "ERR_CONFIG_DIGEST"),
        ("wrong_platform", "amd64", "ERR_PLATFORM_MISMATCH"),
        ("unknown", "amd64", "ERR_IMAGE_UNAVAILABLE"),
        ("attestation", "amd64", "ERR_PLATFORM_MISMATCH"),
        ("attestation_only_index", "amd64", "ERR_PLATFORM_MISMATCH"),
        ("other_repository", "amd64", "ERR_REPOSITORY_MISMATCH"),
        ("short_digest", "amd64", "ERR_NOT_A_DIGEST"),
    ],
)
def test_refusals_leave_the_file_byte_identical(
    tmp_path: Path, images, cli, case: str, platform: str, code: str
) -> None:
    path = make_processor(tmp_path, images["repo"])
    repo = images["repo"]
    given = {
        "tag": f"{repo}:latest",
        "local": "theory-local/demo-pinme-v1:amd64",
        "placeholder": "REPLACE_ARM64",
        "config": f"{repo}@{images['amd'].config_digest}",
        "wrong_platform": f"{repo}@{images['arm'].manifest_digest}",
        "unknown": f"{repo}@sha256:{'0' * 64}",
        "attestation": f"{repo}@{images['att'].manifest_digest}",
        "attestation_only_index": f"{repo}@{images['att_only']}",
        "other_repository": f"{repo}-other@{images['amd'].manifest_digest}",
        "short_digest": f"{repo}@sha256:abc",
    }[case]
    before = _snapshot(path)
    exit_code, out, err = cli("--platform", platform, "--oci", given)
    assert exit_code != 0
    assert out["status"] == "error" and out["error"]["code"] == code, out
    assert _snapshot(path) == before
    assert "Traceback" not in err


@pytest.mark.parametrize("platform", ["amd64", "arm64"])
def test_an_index_whose_entries_lie_about_their_platform_is_never_pinned(
    tmp_path: Path, registry: str, images, cli, platform: str
) -> None:
    """The index lists each image under the other platform (an index made by hand, or a tool that
    mixed them up): what the entry claims is not what the image's config says, so nothing is pinned."""
    repo = images["repo"].removeprefix(f"{registry}/")
    with RegistryClient(registry, retry=RetryPolicy(base_delay=0.01), progress=lambda _m: None) as c:
        swapped = push_index(
            c,
            repo,
            [dataclasses.replace(images["arm"], arch="amd64"), dataclasses.replace(images["amd"], arch="arm64")],
        )
    path = make_processor(tmp_path, images["repo"])
    before = _snapshot(path)
    exit_code, out, err = cli("--platform", platform, "--oci", f"{images['repo']}@{swapped}")
    assert exit_code == 19, out
    assert out["status"] == "error" and out["error"]["code"] == "ERR_PLATFORM_MISMATCH", out
    assert f"not linux/{platform}" in out["error"]["message"]
    assert _snapshot(path) == before
    assert "Traceback" not in err


def test_another_repository_is_refused(images) -> None:
    other = images["repo"]
    clients: dict[str, RegistryClient] = {}

    def factory(host: str) -> RegistryClient:
        return clients.setdefault(host, RegistryClient(host, progress=lambda _m: None))

    ref = f"{other}@{images['amd'].manifest_digest}"
    with pytest.raises(RepositoryMismatchError) as info:
        pin.verify_pin_candidate(ref, "amd64", factory, expected_repository="ghcr.io/org/demo")
    assert "set-repository" in info.value.render()
    cand = pin.verify_pin_candidate(ref, "amd64", factory, expected_repository=other)
    assert str(cand.ref) == ref and cand.resolved_from_index is False
    with pytest.raises(NotADigestError):
        pin.verify_pin_candidate(f"{other}:v1", "amd64", factory)


def test_pin_through_a_flaky_registry_retries_visibly(tmp_path: Path, registry: str, cli) -> None:
    repo = f"test/pinflaky-{uuid.uuid4().hex[:10]}"
    with RegistryClient(registry, progress=lambda _m: None) as c:
        amd = push_synthetic_image(c, repo, "amd64")
        arm = push_synthetic_image(c, repo, "arm64")
        index = push_index(c, repo, [amd, arm])
    faults = [
        Fault(r"/manifests/", "503", times=1),
        Fault(r"/blobs/", "429", times=1),
        Fault(r"/manifests/", "drop", times=1),
    ]
    with FaultProxy(registry, faults=faults) as proxy:
        path = make_processor(tmp_path, f"{proxy.host}/{repo}")
        code, out, err = cli("--platform", "arm64", "--oci", f"{proxy.host}/{repo}@{index}")
    assert code == 0, out
    assert out["pins"]["arm64"]["new"] == f"{proxy.host}/{repo}@{arm.manifest_digest}"
    retries = [line for line in err.splitlines() if line.startswith("retrying ")]
    assert len(retries) == 3, err
    assert any("after 503" in line for line in retries)
    assert any("after 429" in line for line in retries)
    assert any("EOF" in line for line in retries)
    assert arm.manifest_digest in path.read_text()


def test_pin_fails_cleanly_when_the_registry_stays_down(tmp_path: Path, registry: str, cli) -> None:
    repo = f"test/pindown-{uuid.uuid4().hex[:10]}"
    with FaultProxy(registry, faults=[Fault(r"/", "503", times=100)]) as proxy:
        path = make_processor(tmp_path, f"{proxy.host}/{repo}")
        before = _snapshot(path)
        code, out, err = cli("--platform", "amd64", "--oci", f"{proxy.host}/{repo}@sha256:{'1' * 64}")
    assert out["error"]["code"] == "ERR_REGISTRY_UNREACHABLE"
    assert code == 16
    assert err.count("retrying ") == 2
    assert _snapshot(path) == before
    assert not os.path.exists(path.with_suffix(".yaml.tmp"))
