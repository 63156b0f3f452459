"""The local secret store (theory_deploy.secret_store): layout, permissions, atomic writes, change
detection by name, placeholders and fingerprints. No Docker needed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.helpers import assert_no_canary, make_canary
from theory_deploy import secret_values
from theory_deploy.errors import SecretStoreError
from theory_deploy.secret_store import SecretStore, state_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("THEORY_STATE_DIR", str(root))
    return root


def test_default_state_dir_is_outside_any_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THEORY_STATE_DIR", raising=False)
    assert state_dir() == Path.home() / ".local" / "state" / "theory-deploy"


def test_layout_and_permissions(state: Path) -> None:
    store = SecretStore("dev")
    value = make_canary()
    assert store.write("OPENAI_API_KEY", {"OPENAI_API_KEY": value}) == "created"
    path = state / "secrets" / "dev" / "OPENAI_API_KEY"
    assert path.is_file()
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(state / "secrets") == 0o700
    assert json.loads(path.read_text()) == {"OPENAI_API_KEY": value}
    # No temp files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["OPENAI_API_KEY"]


def test_environments_are_separate(state: Path) -> None:
    SecretStore("dev").write("OPENAI_API_KEY", {"OPENAI_API_KEY": "dev-value-1"})
    SecretStore("main").write("OPENAI_API_KEY", {"OPENAI_API_KEY": "main-value-1"})
    assert SecretStore("dev").value("OPENAI_API_KEY") == {"OPENAI_API_KEY": "dev-value-1"}
    assert SecretStore("main").value("OPENAI_API_KEY") == {"OPENAI_API_KEY": "main-value-1"}
    assert SecretStore("staging").value("OPENAI_API_KEY") is None


def test_created_updated_unchanged(state: Path) -> None:
    store = SecretStore("staging")
    assert store.compare("K1", {"K1": "value-one"}) == "created"
    assert store.write("K1", {"K1": "value-one"}) == "created"
    before = (store.dir / "K1").stat().st_mtime_ns
    assert store.write("K1", {"K1": "value-one"}) == "unchanged"
    assert (store.dir / "K1").stat().st_mtime_ns == before  # unchanged: not rewritten
    assert store.compare("K1", {"K1": "value-two"}) == "updated"
    assert store.write("K1", {"K1": "value-two"}) == "updated"
    assert store.value("K1") == {"K1": "value-two"}


def test_placeholder_then_value_counts_as_created(state: Path) -> None:
    store = SecretStore("dev")
    assert store.state("OPENAI_API_KEY") == "absent"
    assert store.ensure_placeholder("OPENAI_API_KEY") is True
    assert store.ensure_placeholder("OPENAI_API_KEY") is False
    assert store.state("OPENAI_API_KEY") == "placeholder"
    assert store.value("OPENAI_API_KEY") is None
    assert _mode(store.dir / "OPENAI_API_KEY") == 0o600
    assert store.write("OPENAI_API_KEY", {"OPENAI_API_KEY": "now-a-value"}) == "created"
    assert store.state("OPENAI_API_KEY") == "set"
    # A placeholder never overwrites a value.
    assert store.ensure_placeholder("OPENAI_API_KEY") is False
    assert store.value("OPENAI_API_KEY") == {"OPENAI_API_KEY": "now-a-value"}


def test_registry_auth_holds_two_keys(state: Path) -> None:
    store = SecretStore("dev")
    pairs = {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": make_canary()}
    assert store.write("REGISTRY_AUTH", pairs) == "created"
    assert store.value("REGISTRY_AUTH") == pairs
    assert store.write("REGISTRY_AUTH", {**pairs, "REGISTRY_USERNAME": "other"}) == "updated"


def test_store_inside_the_repository_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("THEORY_STATE_DIR", str(repo / ".state"))
    with pytest.raises(SecretStoreError) as info:
        SecretStore("dev", repo_root=repo)
    assert info.value.code == "ERR_SECRET_STORE"
    assert not (repo / ".state").exists()


def test_loose_permissions_are_tightened(state: Path) -> None:
    store = SecretStore("dev")
    store.write("K1", {"K1": "value-one"})
    os.chmod(store.dir, 0o755)
    os.chmod(store.dir / "K1", 0o644)
    assert store.value("K1") == {"K1": "value-one"}
    assert _mode(store.dir / "K1") == 0o600
    store.write("K1", {"K1": "value-two"})
    assert _mode(store.dir) == 0o700


def test_invalid_names_and_corrupt_files(state: Path) -> None:
    store = SecretStore("dev")
    with pytest.raises(SecretStoreError):
        store.write("../escape", {"x": "value"})
    store.write("K1", {"K1": "value-one"})
    (store.dir / "K1").write_text("not json")
    with pytest.raises(SecretStoreError) as info:
        store.value("K1")
    assert "not valid JSON" in info.value.message


def test_read_values_are_registered_with_the_scrubber(state: Path) -> None:
    canary = make_canary()
    path = state / "secrets" / "dev"
    path.mkdir(parents=True, mode=0o700)
    (path / "OPENAI_API_KEY").write_text(json.dumps({"OPENAI_API_KEY": canary}))
    SecretStore("dev").register_all()
    assert_no_canary(secret_values.scrub(f"the processor printed {canary}"), [canary])


def test_fingerprint_is_keyed_and_tracks_values(state: Path) -> None:
    store = SecretStore("dev")
    names = ["A", "B"]
    one = store.fingerprint({"A": {"A": "value-one"}}, names)
    assert one == store.fingerprint({"A": {"A": "value-one"}}, names)
    assert one != store.fingerprint({"A": {"A": "value-two"}}, names)
    assert one != store.fingerprint({"A": {"A": "value-one"}, "B": {"B": "bbbb"}}, names)
    key = store.dir / ".fingerprint-key"
    assert _mode(key) == 0o600
    # Another machine (another key) gives another fingerprint: the label cannot be brute-forced offline.
    other = SecretStore("dev", root=state / "elsewhere")
    assert other.fingerprint({"A": {"A": "value-one"}}, names) != one
    assert "value-one" not in one
    assert ".fingerprint-key" not in store.names()
