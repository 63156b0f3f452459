"""Issue 13 end to end: `theory-deploy pipeline … --target local` on the sample processor (which declares
a provenance policy) signs a provenance for every pushed platform digest with a key it makes on first
use, outside the repository; the registry lists it as the digest's referrer; securesystemslib's own
verifier accepts it. Then each refusal: an image pushed by hand with `docker push` is refused by `pin`
and `start`; a provenance about another digest, or altered, is refused by `start`; once the policy
names another signer, `verify-digest` and `start` refuse the running pin; every refusal leaves
registry.yaml and the running app as they were.

The real engine, the real registry, the real CLI in subprocesses: nothing of ours is replaced.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from tests.helpers import make_canaries

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REF = "llm/litellm@1"
REGISTRY_YAML = "processors/llm/litellm/registry.yaml"
ACCEPT = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    for folder in ("processors", "runtime", "schema"):
        shutil.copytree(
            REPO / folder, tmp_path / "ws" / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
        )
    return tmp_path / "ws"


def cli(workspace: Path, env: dict[str, str], tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "THEORY_REPO_ROOT": str(workspace), **env}
    return subprocess.run(
        [str(BIN / tool), *args], cwd=workspace, env=full_env, capture_output=True, text=True, timeout=1500
    )


def referrers(registry: str, repo: str, digest: str) -> list[dict]:
    """The referrers tag scheme's index, read over plain HTTP (Distribution 2.8 has no referrers API)."""
    response = httpx.get(
        f"http://{registry}/v2/{repo}/manifests/sha256-{digest.removeprefix('sha256:')}", headers={"Accept": ACCEPT}
    )
    if response.status_code == 404:
        return []
    return response.json()["manifests"]


def envelope_of(registry: str, repo: str, referrer: str) -> bytes:
    manifest = httpx.get(f"http://{registry}/v2/{repo}/manifests/{referrer}", headers={"Accept": ACCEPT}).json()
    return httpx.get(f"http://{registry}/v2/{repo}/blobs/{manifest['layers'][0]['digest']}").content


def attach(registry: str, repo: str, subject: str, envelope: bytes) -> None:
    """Attach `envelope` as a provenance referrer of `subject`, as anyone with push rights could."""
    from theory_deploy.oci import RegistryClient

    with RegistryClient(registry, progress=lambda _m: None) as client:
        head = client.head_manifest(repo, subject)
        client.put_referrer(
            repo,
            head,
            artifact_type="application/vnd.in-toto+json",
            blob=envelope,
            blob_media_type="application/vnd.dsse.envelope.v1+json",
        )


def tampered(envelope: bytes) -> bytes:
    data = json.loads(envelope)
    stmt = json.loads(base64.b64decode(data["payload"]))
    stmt["predicate"]["runDetails"]["builder"]["id"] = "urn:theory-deploy:host:attacker"
    data["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    return json.dumps(data).encode()


def test_pipeline_signs_every_digest_and_every_gate_refuses_what_it_must(
    workspace: Path, tmp_path: Path, registry: str, base_image: str, docker_cli: str
) -> None:
    state = tmp_path / "state"  # outside the workspace: where this "machine" keeps its key
    env = {
        "GIT_BRANCH": f"prov-{uuid.uuid4().hex[:8]}",
        "GIT_USER": "tester",
        "THEORY_STATE_DIR": str(state),
        **make_canaries("OPENAI_API_KEY"),
    }
    repo = f"theory-test/provenance-{uuid.uuid4().hex[:8]}"
    assert (
        cli(
            workspace, env, "processorctl", "set-repository", "--ref", REF, "--repository", f"{registry}/{repo}"
        ).returncode
        == 0
    )
    registry_yaml = workspace / REGISTRY_YAML
    run = cli(
        workspace,
        env,
        "theory-deploy",
        "pipeline",
        "--ref",
        REF,
        "--env",
        "dev",
        "--target",
        "local",
        "--stages",
        "build,push,pin,start,verify",
        "--platforms",
        "linux/amd64",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--json",
    )
    try:
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout)
        by = {s["stage"]: s for s in report["stages"]}
        pushed = by["push"]["platforms"]
        assert set(pushed) == {"amd64"}

        # The key: made on first use, outside the repository, private; never printed.
        key_file = state / "signing" / "provenance-ed25519.pem"
        assert key_file.stat().st_mode & 0o777 == 0o600
        private = key_file.read_bytes()
        secret_body = b"".join(line for line in private.splitlines() if b"-----" not in line).decode()
        assert secret_body not in run.stdout and secret_body not in run.stderr
        key = SSlibKey.from_crypto(load_pem_private_key(private, password=None).public_key())  # type: ignore[arg-type]

        # Every platform digest: one provenance referrer, which securesystemslib verifies, about that digest.
        for arch, pinned in pushed.items():
            digest = pinned.split("@")[1]
            listed = referrers(registry, repo, digest)
            assert [m["artifactType"] for m in listed] == ["application/vnd.in-toto+json"], listed
            assert by["push"]["provenance"][arch] == listed[0]["digest"]
            envelope = Envelope.from_dict(json.loads(envelope_of(registry, repo, listed[0]["digest"])))
            envelope.verify([key], 1)
            stmt = json.loads(envelope.payload)
            assert stmt["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}
            params = stmt["predicate"]["buildDefinition"]["externalParameters"]
            assert params["platform"] == f"linux/{arch}" and params["processor"] == REF
            assert params["buildArgs"] == {"BASE_IMAGE": base_image}
            assert stmt["predicate"]["runDetails"]["builder"]["id"].startswith("urn:theory-deploy:host:")
        assert by["pin"]["changed"] == ["amd64"]
        assert by["verify"]["verified"] is True and by["verify"]["provenance"]["keyid"] == key.keyid
        pinned = pushed["amd64"]
        pinned_digest = pinned.split("@")[1]

        def app_state() -> tuple[str, str]:
            status = json.loads(
                cli(workspace, env, "localctl", "status", "--ref", REF, "--env", "dev", "--json").stdout
            )
            return status["container_id"], status["deployed_digest"]

        running = app_state()
        assert running[1] == pinned_digest
        pins_text = registry_yaml.read_text()

        # An image pushed by hand with `docker push`: no provenance.
        local_tag = "theory-local/llm-litellm-v1:amd64"
        by_hand = f"{registry}/{repo}:by-hand"
        subprocess.run([docker_cli, "tag", local_tag, by_hand], check=True, capture_output=True)
        push_out = subprocess.run([docker_cli, "push", by_hand], check=True, capture_output=True, text=True).stdout
        hand_digest = next(w for w in push_out.split() if w.startswith("sha256:"))
        hand = f"{registry}/{repo}@{hand_digest}"

        def refused(code: str, *args: str, tool: str = "localctl") -> dict:
            proc = cli(workspace, env, tool, *args, "--json")
            out = json.loads(proc.stdout)
            assert proc.returncode != 0 and out["error"]["code"] == code, (out, proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr
            assert secret_body not in proc.stdout + proc.stderr
            assert registry_yaml.read_text() == pins_text
            assert app_state() == running
            return out

        refused(
            "ERR_PROVENANCE_MISSING", "pin", "--ref", REF, "--platform", "amd64", "--oci", hand, tool="processorctl"
        )
        refused("ERR_PROVENANCE_MISSING", "start", "--ref", REF, "--env", "dev", "--oci", hand)

        # A provenance about another digest (ours, copied onto the hand-pushed image).
        ours = envelope_of(registry, repo, referrers(registry, repo, pinned_digest)[0]["digest"])
        attach(registry, repo, hand_digest, ours)
        refused("ERR_PROVENANCE_SUBJECT", "start", "--ref", REF, "--env", "dev", "--oci", hand)

        # An altered envelope beside a digest of ours that has none yet (a push by hand, then edited).
        other_tag = f"{registry}/{repo}:by-hand-2"
        subprocess.run([docker_cli, "tag", local_tag, other_tag], check=True, capture_output=True)
        # the same image under another tag has the same digest: give it a fresh one with a label
        relabel = subprocess.run(
            [docker_cli, "build", "-q", "-t", other_tag, "--label", f"x={uuid.uuid4().hex}", "-"],
            input=f"FROM {local_tag}\n",
            check=True,
            capture_output=True,
            text=True,
        )
        assert relabel.returncode == 0
        out = subprocess.run([docker_cli, "push", other_tag], check=True, capture_output=True, text=True).stdout
        other_digest = next(w for w in out.split() if w.startswith("sha256:"))
        attach(registry, repo, other_digest, tampered(ours))
        refused(
            "ERR_PROVENANCE_INVALID",
            "start",
            "--ref",
            REF,
            "--env",
            "dev",
            "--oci",
            f"{registry}/{repo}@{other_digest}",
        )

        # Another signer: the policy names a release key, not this machine's; the pin itself is refused.
        release = CryptoSigner.generate_ed25519()
        from theory_deploy.provenance import public_key_pem

        pem = "".join(f"        {line}\n" for line in public_key_pem(release.public_key).splitlines())
        policy_text = pins_text.replace("    - key: local\n", f"    - key: |\n{pem}")
        assert policy_text != pins_text
        registry_yaml.write_text(policy_text)
        pins_text = policy_text
        refused("ERR_PROVENANCE_SIGNER", "verify-digest", "--ref", REF, "--env", "dev")
        refused("ERR_PROVENANCE_SIGNER", "start", "--ref", REF, "--env", "dev")
    finally:
        cli(workspace, env, "localctl", "stop", "--ref", REF, "--env", "dev")
