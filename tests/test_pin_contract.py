"""The exact contract of `theory_deploy.pin`: every refusal's message, remedy, details and error code;
every JSON key `pin` reports (a candidate, a pin outcome, the verb's result); the progress lines and
the human summary. Scripts match on these, so each is asserted whole rather than by substring.

Refusals that happen before the registry is asked need no registry (the client factory given to them
fails the test if it is ever called); the rest push small synthetic images to the loopback registry,
as tests/test_pin.py does. No product function is replaced.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.registry_faults import push_index, push_synthetic_image
from tests.test_pin import make_processor
from theory_deploy import oci, pin, registry_file
from theory_deploy.cli import framework, processorctl
from theory_deploy.errors import InvalidRefError, NotADigestError, RepositoryMismatchError, TheoryDeployError
from theory_deploy.oci import RegistryClient, RetryPolicy
from theory_deploy.refs import ImageRef, parse_platform

# A repository on the loopback registry that nothing is pushed to: refusals before any registry
# request are tested against it, so those tests need no registry at all.
OFFLINE_REPO = "127.0.0.1:5000/test/contract"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

NOT_A_DIGEST_REMEDY = "Pass a digest ref REPO@sha256:<64 hex>, not a tag; `processorctl push --json` prints them."
LOCAL_TAG_REMEDY = "Push first (`processorctl push --ref R --json`) and pin the digests it prints."
MISMATCH_REMEDY = (
    "Pin digests from image.repository, or move the processor first: "
    "`processorctl set-repository --ref R --repository REPO`."
)


def no_registry(host: str) -> RegistryClient:
    raise AssertionError(f"a refusal that needs no registry asked for a client of {host}")


def error_contract(err: TheoryDeployError) -> dict[str, Any]:
    """Everything a user can see of an error: its class, code, message, remedy, details and JSON."""
    return {
        "type": type(err).__name__,
        "code": err.code,
        "message": err.message,
        "remedy": err.remedy,
        "details": err.details,
        "json": err.to_json(),
    }


def expected_error(
    cls: type[TheoryDeployError], message: str, remedy: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": cls.code, "message": f"{message} Fix: {remedy}"}
    if details:
        error["details"] = details
    return {
        "type": cls.__name__,
        "code": cls.code,
        "message": message,
        "remedy": remedy,
        "details": details or {},
        "json": {"status": "error", "error": error},
    }


# ------------------------------------------------------------------------------------------------
# PinCandidate.to_json: the keys of `candidates` in `processorctl pin --json`


def test_candidate_json_has_exactly_the_documented_keys() -> None:
    ref = ImageRef("127.0.0.1:5000", "test/contract", None, DIGEST_A)
    candidate = pin.PinCandidate(
        ref=ref,
        platform="arm64",
        resolved_from_index=True,
        given=f"{OFFLINE_REPO}@{DIGEST_B}",
        media_type=oci.OCI_MANIFEST,
        config_digest=DIGEST_B,
    )
    assert candidate.to_json() == {
        "pin": f"{OFFLINE_REPO}@{DIGEST_A}",
        "platform": "arm64",
        "resolved_from_index": True,
        "given": f"{OFFLINE_REPO}@{DIGEST_B}",
        "media_type": oci.OCI_MANIFEST,
        "config_digest": DIGEST_B,
    }


# ------------------------------------------------------------------------------------------------
# parse_pin_text: what a non-digest looks like, said in so many words


@pytest.mark.parametrize(
    ("text", "kwargs", "cls", "message", "remedy"),
    [
        pytest.param(
            f"{OFFLINE_REPO}:latest",
            {},  # the default `where` is the flag users type: --oci
            NotADigestError,
            f"--oci: '{OFFLINE_REPO}:latest' is a tag, not a digest; tags move, pins must not.",
            NOT_A_DIGEST_REMEDY,
            id="tag",
        ),
        pytest.param(
            "theory-local/demo-pinme-v1:amd64",
            {"where": "amd64 digest"},
            NotADigestError,
            "amd64 digest: 'theory-local/demo-pinme-v1:amd64' is a local build tag; "
            "it exists only on the machine that built it.",
            LOCAL_TAG_REMEDY,
            id="local-build-tag",
        ),
        pytest.param(
            "REPLACE_ARM64",
            {},
            NotADigestError,
            "--oci: 'REPLACE_ARM64' is a placeholder, not a digest ref.",
            NOT_A_DIGEST_REMEDY,
            id="placeholder",
        ),
        pytest.param(
            "replace-me",  # any case: the test is on the upper-cased text
            {},
            NotADigestError,
            "--oci: 'replace-me' is a placeholder, not a digest ref.",
            NOT_A_DIGEST_REMEDY,
            id="lowercase-placeholder",
        ),
        pytest.param(
            "",
            {},
            NotADigestError,
            "--oci: '' is a placeholder, not a digest ref.",
            NOT_A_DIGEST_REMEDY,
            id="empty",
        ),
        pytest.param(
            f"{OFFLINE_REPO}@sha256:abc",
            {"where": "amd64 digest"},  # the caller's `where` reaches the digest-ref parser too
            NotADigestError,
            f"amd64 digest: '{OFFLINE_REPO}@sha256:abc' has digest 'sha256:abc'; "
            "expected sha256: followed by 64 lowercase hex.",
            NOT_A_DIGEST_REMEDY,
            id="short-digest",
        ),
        pytest.param(
            f"{OFFLINE_REPO}:v1@{DIGEST_A}",
            {"where": "registry.yaml image.platforms.amd64"},
            NotADigestError,
            f"registry.yaml image.platforms.amd64: '{OFFLINE_REPO}:v1@{DIGEST_A}' is not a digest ref; "
            "expected REPOSITORY@sha256:<64 lowercase hex> with no tag.",
            NOT_A_DIGEST_REMEDY,
            id="tag-and-digest",
        ),
    ],
)
def test_parse_pin_text_refusals(
    text: str, kwargs: dict[str, str], cls: type[TheoryDeployError], message: str, remedy: str
) -> None:
    with pytest.raises(cls) as info:
        pin.parse_pin_text(text, **kwargs)
    assert error_contract(info.value) == expected_error(cls, message, remedy)


def test_parse_pin_text_accepts_a_digest_ref_and_trims_it() -> None:
    assert pin.parse_pin_text(f"  {OFFLINE_REPO}@{DIGEST_A}\n") == ImageRef(
        "127.0.0.1:5000", "test/contract", None, DIGEST_A
    )


# ------------------------------------------------------------------------------------------------
# verify_pin_candidate: refusals before the registry is asked


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        pytest.param({}, "--oci", id="default-where"),
        pytest.param({"where": "processors/x/registry.yaml image.platforms.amd64"}, None, id="callers-where"),
    ],
)
def test_verify_pin_candidate_names_where_the_bad_text_came_from(kwargs: dict[str, str], where: str | None) -> None:
    where = where or kwargs["where"]
    with pytest.raises(NotADigestError) as info:
        pin.verify_pin_candidate(f"{OFFLINE_REPO}:v1", "amd64", no_registry, **kwargs)
    assert error_contract(info.value) == expected_error(
        NotADigestError,
        f"{where}: '{OFFLINE_REPO}:v1' is a tag, not a digest; tags move, pins must not.",
        NOT_A_DIGEST_REMEDY,
    )


def test_another_repository_is_refused_with_details_and_the_way_out() -> None:
    given = f"127.0.0.1:5000/test/other@{DIGEST_A}"
    with pytest.raises(RepositoryMismatchError) as info:
        pin.verify_pin_candidate(given, "amd64", no_registry, expected_repository=OFFLINE_REPO, where="amd64 digest")
    assert error_contract(info.value) == expected_error(
        RepositoryMismatchError,
        f"amd64 digest: 127.0.0.1:5000/test/other is not the processor's image.repository ({OFFLINE_REPO}).",
        MISMATCH_REMEDY,
        {"given": "127.0.0.1:5000/test/other", "expected": OFFLINE_REPO},
    )


def test_a_bad_expected_repository_is_blamed_on_image_repository() -> None:
    with pytest.raises(InvalidRefError) as info:
        pin.verify_pin_candidate(
            f"{OFFLINE_REPO}@{DIGEST_A}", "amd64", no_registry, expected_repository=f"{OFFLINE_REPO}:v1"
        )
    assert error_contract(info.value) == expected_error(
        InvalidRefError,
        f"image.repository: '{OFFLINE_REPO}:v1' must be a repository without a tag or digest, "
        "e.g. ghcr.io/org/llm-litellm.",
        InvalidRefError.remedy,
    )


# ------------------------------------------------------------------------------------------------
# pin_digests: the {platform: {"old", "new", "changed"}} outcome


def _candidate(platform: str, digest: str, repository: str = OFFLINE_REPO) -> pin.PinCandidate:
    ref = pin.parse_pin_text(f"{repository}@{digest}")
    return pin.PinCandidate(ref=ref, platform=parse_platform(platform), resolved_from_index=False, given=str(ref))


def test_pin_digests_reports_old_new_changed_for_written_and_unchanged_pins(tmp_path: Path) -> None:
    current = f"{OFFLINE_REPO}@{DIGEST_A}"
    path = make_processor(tmp_path, OFFLINE_REPO, amd64=current)
    result = pin.pin_digests(path, {"amd64": _candidate("amd64", DIGEST_A), "arm64": _candidate("arm64", DIGEST_B)})
    assert result == {
        "amd64": {"old": current, "new": current, "changed": False},
        "arm64": {"old": None, "new": f"{OFFLINE_REPO}@{DIGEST_B}", "changed": True},
    }
    assert registry_file.load_path(path).spec.pins() == {"amd64": current, "arm64": f"{OFFLINE_REPO}@{DIGEST_B}"}


def test_pin_digests_refuses_a_candidate_offered_under_another_platform(tmp_path: Path) -> None:
    path = make_processor(tmp_path, OFFLINE_REPO)
    before = path.read_bytes()
    with pytest.raises(NotADigestError) as info:
        pin.pin_digests(path, {"linux/amd64": _candidate("arm64", DIGEST_A)})
    assert error_contract(info.value) == expected_error(
        NotADigestError, "internal: candidate for arm64 offered as amd64.", NOT_A_DIGEST_REMEDY
    )
    assert path.read_bytes() == before


def test_pin_digests_with_nothing_to_pin_touches_nothing(tmp_path: Path) -> None:
    """Nothing to pin: the writer (its lock, its clean-up of a killed writer's temporary) is not run,
    so even a stale temporary next to registry.yaml is left as it is."""
    path = make_processor(tmp_path, OFFLINE_REPO)
    stale = path.parent / f".{path.name}.12345.tmp"
    stale.write_text("left by a killed writer")
    before = sorted(p.name for p in path.parent.iterdir())
    assert pin.pin_digests(path, {}) == {}
    assert sorted(p.name for p in path.parent.iterdir()) == before
    assert stale.read_text() == "left by a killed writer"


# ------------------------------------------------------------------------------------------------
# verify_and_pin: refusals before the registry is asked name the platform


def test_verify_and_pin_names_the_platform_of_a_bad_digest(tmp_path: Path) -> None:
    path = make_processor(tmp_path, OFFLINE_REPO)
    before = path.read_bytes()
    loaded = registry_file.load_path(path)
    progress: list[str] = []
    with pytest.raises(NotADigestError) as info:
        pin.verify_and_pin(loaded, {"arm64": f"{OFFLINE_REPO}:latest"}, no_registry, progress.append)
    assert error_contract(info.value) == expected_error(
        NotADigestError,
        f"arm64 digest: '{OFFLINE_REPO}:latest' is a tag, not a digest; tags move, pins must not.",
        NOT_A_DIGEST_REMEDY,
    )
    assert progress == []
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------------------------
# Against the registry: what a verified candidate carries, and verify_and_pin's whole result


@pytest.fixture
def images(registry: str) -> dict[str, Any]:
    repo = f"test/pin-contract-{uuid.uuid4().hex[:10]}"
    with RegistryClient(registry, retry=RetryPolicy(base_delay=0.01), progress=lambda _m: None) as c:
        amd = push_synthetic_image(c, repo, "amd64", "a")
        arm = push_synthetic_image(c, repo, "arm64", "b")
        amd2 = push_synthetic_image(c, repo, "amd64", "c")
        index = push_index(c, repo, [amd, arm])
    return {"repo": f"{registry}/{repo}", "amd": amd, "arm": arm, "amd2": amd2, "index": index}


@pytest.fixture
def clients():
    made: dict[str, RegistryClient] = {}

    def factory(host: str) -> RegistryClient:
        return made.setdefault(host, RegistryClient(host, progress=lambda _m: None))

    yield factory
    for client in made.values():
        client.close()


def test_a_verified_candidate_carries_what_the_registry_served(images: dict[str, Any], clients) -> None:
    repo, amd, arm = images["repo"], images["amd"], images["arm"]
    registry, path = repo.split("/", 1)

    direct = f"{repo}@{amd.manifest_digest}"
    assert pin.verify_pin_candidate(f" {direct} ", "linux/amd64", clients, expected_repository=repo) == (
        pin.PinCandidate(
            ref=ImageRef(registry, path, None, amd.manifest_digest),
            platform="amd64",
            resolved_from_index=False,
            given=direct,
            media_type=oci.OCI_MANIFEST,
            config_digest=amd.config_digest,
        )
    )

    from_index = f"{repo}@{images['index']}"
    assert pin.verify_pin_candidate(from_index, "arm64", clients) == pin.PinCandidate(
        ref=ImageRef(registry, path, None, arm.manifest_digest),
        platform="arm64",
        resolved_from_index=True,
        given=from_index,  # what was passed, not the manifest it resolved to
        media_type=oci.OCI_MANIFEST,
        config_digest=arm.config_digest,
    )


def test_verify_and_pin_result_progress_and_summary(tmp_path: Path, images: dict[str, Any], clients) -> None:
    repo = images["repo"]
    amd = f"{repo}@{images['amd'].manifest_digest}"
    arm = f"{repo}@{images['arm'].manifest_digest}"
    amd2 = f"{repo}@{images['amd2'].manifest_digest}"
    index = f"{repo}@{images['index']}"
    path = make_processor(tmp_path, repo)
    progress: list[str] = []

    def run(wanted: dict[str, str]) -> dict[str, Any]:
        progress.clear()
        return pin.verify_and_pin(registry_file.load_path(path), wanted, clients, progress.append)

    def candidate(arch: str, pinned: str, given: str, from_index: bool) -> dict[str, Any]:
        config = images["amd2" if pinned == amd2 else arch[:3]].config_digest
        return {
            "pin": pinned,
            "platform": arch,
            "resolved_from_index": from_index,
            "given": given,
            "media_type": oci.OCI_MANIFEST,
            "config_digest": config,
        }

    # both platforms new: one amd64 manifest, arm64 resolved from the index
    result = run({"amd64": amd, "arm64": index})
    assert progress == [
        f"verified amd64: {amd} is a linux/amd64 image manifest",
        f"verified arm64: {arm} is a linux/arm64 image manifest (resolved from its index)",
    ]
    assert result == {
        "ref": "demo/pinme@1",
        "file": str(path),
        "pins": {
            "amd64": {"old": None, "new": amd, "changed": True},
            "arm64": {"old": None, "new": arm, "changed": True},
        },
        "changed": ["amd64", "arm64"],
        "candidates": {"amd64": candidate("amd64", amd, amd, False), "arm64": candidate("arm64", arm, index, True)},
        "summary": f"pinned amd64, arm64 in {path}\n  amd64: (none) -> {amd}\n  arm64: (none) -> {arm}",
    }

    # the same again: nothing changes, and the summary says so
    result = run({"amd64": amd, "arm64": arm})
    assert result["pins"] == {
        "amd64": {"old": amd, "new": amd, "changed": False},
        "arm64": {"old": arm, "new": arm, "changed": False},
    }
    assert result["changed"] == []
    assert result["summary"] == f"{path}: pins unchanged\n  amd64: unchanged ({amd})\n  arm64: unchanged ({arm})"

    # one platform moves: the old pin is shown, not "(none)"
    result = run({"amd64": amd2})
    assert progress == [f"verified amd64: {amd2} is a linux/amd64 image manifest"]
    assert result["pins"] == {"amd64": {"old": amd, "new": amd2, "changed": True}}
    assert result["summary"] == f"pinned amd64 in {path}\n  amd64: {amd} -> {amd2}"


# ------------------------------------------------------------------------------------------------
# `processorctl pin`: the --json payload and the human summary


def test_cli_pin_json_payload_and_human_summary(
    tmp_path: Path, images: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THEORY_REPO_ROOT", str(tmp_path))
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0.01")
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    repo = images["repo"]
    index = f"{repo}@{images['index']}"
    arm = f"{repo}@{images['arm'].manifest_digest}"
    amd = f"{repo}@{images['amd'].manifest_digest}"
    make_processor(tmp_path, repo)
    argv = ["pin", "--ref", "demo/pinme@1", "--platform", "arm64", "--oci", index]

    code = framework.run_tool(processorctl.parser(), [*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, out
    payload = json.loads(out)
    file = payload["file"]
    assert Path(file).resolve() == (tmp_path / "processors/demo/pinme/registry.yaml").resolve()
    assert payload == {
        "status": "success",
        "ref": "demo/pinme@1",
        "file": file,
        "pins": {"arm64": {"old": None, "new": arm, "changed": True}},
        "changed": ["arm64"],
        "candidates": {
            "arm64": {
                "pin": arm,
                "platform": "arm64",
                "resolved_from_index": True,
                "given": index,
                "media_type": oci.OCI_MANIFEST,
                "config_digest": images["arm"].config_digest,
            }
        },
        "summary": f"pinned arm64 in {file}\n  arm64: (none) -> {arm}",
    }
    assert f"verified arm64: {arm} is a linux/arm64 image manifest (resolved from its index)\n" in err

    # without --json the summary is what is printed
    code = framework.run_tool(
        processorctl.parser(), ["pin", "--ref", "demo/pinme@1", "--platform", "amd64", "--oci", amd]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"pinned amd64 in {file}\n  amd64: (none) -> {amd}\n"
    assert f"verified amd64: {amd} is a linux/amd64 image manifest\n" in err
