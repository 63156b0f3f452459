"""Session fixtures for the real local services (see scripts/dev-services, README "Local services").

Fixtures: ``repo_root``, ``docker_cli``, ``registry``, ``auth_registry``, ``base_image``,
``canary_secrets``. Helpers to import: ``tests.helpers`` (``assert_no_canary``, ``AuthRegistry``).

Markers say what a test needs (registered in pyproject.toml). ``pytest_collection_modifyitems``
below adds them from the fixtures a test requests, directly or through other fixtures, so a new
test is marked correctly without anyone remembering to (``EXTRA_MARKERS`` covers the few tests
whose need does not show in their fixtures):

- ``docker``: a Docker engine (``docker_cli``, ``base_image``);
- ``registry``: the loopback registries (``registry``, ``auth_registry``, ``base_image``);
- ``fast``: everything with none of ``docker``, ``registry``, ``network``, ``slow``.
  ``pytest -m fast`` needs no engine, no registry and no network.

A service fixture fails (not skips) a test that reaches it without the matching marker (e.g. via
``request.getfixturevalue``), so a fast run cannot quietly start using a service.

Tests marked ``docker`` are skipped with a reason when no Docker engine answers; the registry
fixtures skip when their registry does not answer. With ``THEORY_REQUIRE_DOCKER=1`` (set by
scripts/test, hence CI) any skip of a ``docker``- or ``registry``-marked test fails the run instead,
and so does any other skip that tests/skip_allowlist.txt does not list (with the reason it may skip).
Values come from the environment when set (``eval "$(scripts/dev-services env)"``):
THEORY_REGISTRY, THEORY_AUTH_REGISTRY, THEORY_AUTH_REGISTRY_USER,
THEORY_AUTH_REGISTRY_PASSWORD_FILE, DOCKER, THEORY_BASE_IMAGE. Otherwise the fixtures run
``scripts/dev-services up`` / ``scripts/local-base-image`` themselves, once per session, unless
``THEORY_DEV_SERVICES_DISABLED=1`` (offline runs: then only the environment's values are used).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # so tests can `from tests.helpers import ...`
    sys.path.insert(0, str(REPO_ROOT))

from tests.helpers import AuthRegistry, make_canaries  # noqa: E402

# Only mutmut sets MUTANT_UNDER_TEST (scripts/mutation): then the CLI subprocesses that tests start
# run the mutated sources too, and count for the tests that start them.
UNDER_MUTATION = "MUTANT_UNDER_TEST" in os.environ
# A push blob cache set in the caller's shell would make the cold-push tests warm (and every test
# share it): tests opt in to the session's own with the `shared_blob_cache` fixture.
os.environ.pop("THEORY_BLOB_CACHE_DIR", None)
if UNDER_MUTATION:
    from tests.mutation_support import plugin as mutation_plugin

    mutation_plugin.activate()


def pytest_configure(config: pytest.Config) -> None:
    if UNDER_MUTATION:
        config.pluginmanager.register(mutation_plugin, "theory-mutation-support")


@pytest.fixture(autouse=True)
def _scrubber_values_stay_with_their_test() -> Iterator[None]:
    """The scrubber (theory_deploy.secret_values) masks every value registered in the process, for
    the life of the process, as it must in a CLI run. In one pytest process that would let a short
    value one test registers ("other", "late") mask words in every later test's output
    (`test_a_push_refused_otherwise` became `..._***wise`): each test leaves the set as it found it."""
    from theory_deploy import secret_values

    values, forms = set(secret_values._known_values), set(secret_values._known_forms)
    yield
    secret_values._known_values.clear()
    secret_values._known_values.update(values)
    secret_values._known_forms.clear()
    secret_values._known_forms.update(forms)


@pytest.fixture(autouse=True)
def _build_records_stay_with_their_test(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged build is not run again (theory_deploy.build_inputs): each test gets its own
    records, so one test's build is never another's, and a test that wants a build reused builds twice."""
    monkeypatch.setenv("THEORY_BUILD_RECORDS_DIR", str(tmp_path_factory.mktemp("build-records")))


DEV_SERVICES = REPO_ROOT / "scripts" / "dev-services"
LOCAL_BASE_IMAGE = REPO_ROOT / "scripts" / "local-base-image"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def _require_docker() -> bool:
    """THEORY_REQUIRE_DOCKER=1: a skipped service test (docker or registry) fails the run."""
    return _env_flag("THEORY_REQUIRE_DOCKER")


def _dev_services_disabled() -> bool:
    """THEORY_DEV_SERVICES_DISABLED=1: never run `scripts/dev-services` (offline / fast runs)."""
    return _env_flag("THEORY_DEV_SERVICES_DISABLED")


# ------------------------------------------------------------------------------------------------
# Service discovery (cached per process)

_services: dict[str, object] = {}


def _http_status(url: str, timeout: float = 3.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _docker_works(cli: str) -> bool:
    try:
        return subprocess.run([cli, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _services_env() -> dict[str, str]:
    """The `scripts/dev-services env` values, running `up` first unless the env already has them."""
    if "env" in _services:
        return _services["env"]  # type: ignore[return-value]
    env: dict[str, str] = {}
    keys = (
        "THEORY_REGISTRY",
        "THEORY_AUTH_REGISTRY",
        "THEORY_AUTH_REGISTRY_USER",
        "THEORY_AUTH_REGISTRY_PASSWORD_FILE",
        "DOCKER",
    )
    if all(os.environ.get(k) for k in keys[:4]) or _dev_services_disabled():
        env = {k: os.environ[k] for k in keys if os.environ.get(k)}
        if _dev_services_disabled() and len(env) < len(keys):
            _services["up_error"] = "THEORY_DEV_SERVICES_DISABLED=1, so scripts/dev-services was not run"
    else:
        up = subprocess.run(
            [str(DEV_SERVICES), "up"], capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
        )
        if up.returncode != 0:
            _services["up_error"] = up.stderr.strip()[-2000:]
        out = subprocess.run([str(DEV_SERVICES), "env"], capture_output=True, text=True, timeout=60)
        for line in out.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                k, _, v = line[len("export ") :].partition("=")
                env[k] = shlex.split(v)[0] if v else ""
        if os.environ.get("DOCKER"):
            env["DOCKER"] = os.environ["DOCKER"]
    _services["env"] = env
    return env


def _skip_reason_no_engine() -> str | None:
    """None if a Docker engine answers; otherwise why docker tests cannot run."""
    if "engine_reason" not in _services:
        env = _services_env()
        cli = env.get("DOCKER") or "/usr/bin/docker"
        if _docker_works(cli):
            _services["engine_reason"] = None
        else:
            why = _services.get("up_error") or f"'{cli} info' failed"
            _services["engine_reason"] = (
                f"no Docker engine reachable ({why}); run `scripts/dev-services up` "
                f'(as root, or with Docker running) and `eval "$(scripts/dev-services env)"`'
            )
    return _services["engine_reason"]  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# Hooks: mark tests by the services they use; skip docker tests without an engine; under
# THEORY_REQUIRE_DOCKER=1 any skipped service test fails the run.

# fixture -> the markers a test that requests it (directly or through another fixture) must carry
SERVICE_FIXTURES: dict[str, tuple[str, ...]] = {
    "docker_cli": ("docker",),
    "registry": ("registry",),
    "auth_registry": ("registry",),
    # THEORY_BASE_IMAGE, or built with the engine by scripts/local-base-image and pushed to `registry`
    "base_image": ("docker", "registry"),
}
SERVICE_MARKERS = ("docker", "registry")
# Markers for tests that need them but do not carry them in their own file (yet). Keys are node ids
# or node-id prefixes; prefer a `pytestmark` / decorator in the test file and drop the entry here.
EXTRA_MARKERS: dict[str, tuple[str, ...]] = {
    # every test runs scripts/action-entrypoint (a Python process or two) in a subprocess
    "tests/test_action_glue.py::": ("slow",),
    # the real `setup` verb: pip installs requirements/lock.txt from the package index
    "tests/test_action_glue.py::test_setup_builds_a_private_hash_locked_venv_once": ("network",),
}
NOT_FAST_MARKERS = (*SERVICE_MARKERS, "network", "slow")

_skipped_docker: list[str] = []  # node ids of skipped docker- or registry-marked tests
_current_item: list[pytest.Item] = []  # the test being set up / run, for _check_marked


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m fast` / `-m registry` see these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    conflicts = []
    for item in items:
        for prefix, extra in EXTRA_MARKERS.items():
            if item.nodeid.startswith(prefix):
                for marker in extra:
                    if item.get_closest_marker(marker) is None:
                        item.add_marker(marker)
        names = set(getattr(item, "fixturenames", ()))
        for fixture, markers in SERVICE_FIXTURES.items():
            if fixture in names:
                for marker in markers:
                    if item.get_closest_marker(marker) is None:
                        item.add_marker(marker)
        needs = [m for m in NOT_FAST_MARKERS if item.get_closest_marker(m) is not None]
        if not needs:
            item.add_marker("fast")
        elif item.get_closest_marker("fast") is not None:
            conflicts.append(f"{item.nodeid} (marked fast, but also {', '.join(needs)})")
    if conflicts:
        raise pytest.UsageError("tests marked fast that are not:\n  " + "\n  ".join(conflicts))
    # Longest modules first (stable: a module's own order is kept): scripts/test hands modules to two
    # workers in this order, and a long one started last would leave the other worker idle at the end.
    items.sort(key=lambda item: _module_rank(item.nodeid))


# The modules that take minutes (scripts/test's --durations), longest first.
LONGEST_MODULES = (
    "tests/test_reliability.py",
    "tests/test_action_glue.py",
    "tests/test_image_reproducible.py",
    "tests/test_modal_target.py",
    "tests/test_act_consumer.py",
    "tests/test_local_target.py",
)


def _module_rank(nodeid: str) -> int:
    module = nodeid.split("::", 1)[0]
    return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)


def _check_marked(fixture: str) -> None:
    """Fail the current test if it reaches a service fixture without that service's marker.

    Requesting the fixture as an argument marks the test (above), so this only catches dynamic use
    (``request.getfixturevalue``). The fixtures are session-scoped, so the check runs on first use;
    pytest then re-raises the same failure to every later user, naming the unmarked test.
    """
    item = _current_item[0] if _current_item else None
    if item is None:
        return
    missing = [m for m in SERVICE_FIXTURES[fixture] if item.get_closest_marker(m) is None]
    if missing:
        pytest.fail(
            f"{item.nodeid} uses the {fixture!r} fixture without the marker(s) {', '.join(missing)}: "
            f"request it as a test argument (marked automatically) or add @pytest.mark.{missing[0]}",
            pytrace=False,
        )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current_item[:] = [item]
    if item.get_closest_marker("docker") is not None:
        reason = _skip_reason_no_engine()
        if reason:
            pytest.skip(reason)


SKIP_ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")
_skipped_unlisted: list[str] = []  # node ids of other skipped tests that no allow-list entry names


def skip_allowlist(path: Path = SKIP_ALLOWLIST) -> dict[str, str]:
    """tests/skip_allowlist.txt: node id (or prefix) -> why it may skip. An entry without a reason is
    refused: the list is reviewed, and a reason is what a reviewer reads."""
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        nodeid, _, why = line.partition("#")
        if not why.strip():
            raise pytest.UsageError(f"{path}:{number}: an allow-listed skip needs `# why` after the node id")
        entries[nodeid.strip()] = why.strip()
    return entries


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    # The report's keywords hold the test's markers, those added at collection too. (Under pytest-xdist
    # the controller that sees every report collects nothing itself.)
    if any(marker in report.keywords for marker in SERVICE_MARKERS):
        _skipped_docker.append(report.nodeid)
    elif not any(report.nodeid.startswith(prefix) for prefix in skip_allowlist()):
        _skipped_unlisted.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (_skipped_docker or _skipped_unlisted) and _require_docker() and exitstatus in (0, 5):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if not _require_docker():
        return
    for skipped, what in (
        (_skipped_docker, "docker- or registry-marked test(s) were skipped"),
        (_skipped_unlisted, f"test(s) were skipped that {SKIP_ALLOWLIST.name} does not list"),
    ):
        if skipped:
            terminalreporter.section("THEORY_REQUIRE_DOCKER", sep="=", red=True, bold=True)
            terminalreporter.line(f"{len(skipped)} {what}; with THEORY_REQUIRE_DOCKER=1 that fails the run:", red=True)
            for nodeid in skipped:
                terminalreporter.line(f"  {nodeid}")


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """Path of the docker client that works with BuildKit (DOCKER_BUILDKIT=1)."""
    _check_marked("docker_cli")
    reason = _skip_reason_no_engine()
    if reason:
        pytest.skip(reason)
    return _services_env().get("DOCKER") or "/usr/bin/docker"


@pytest.fixture(scope="session")
def registry() -> str:
    """host:port of the anonymous loopback registry (e.g. 127.0.0.1:5000)."""
    _check_marked("registry")
    host = _services_env().get("THEORY_REGISTRY", "")
    if not host or _http_status(f"http://{host}/v2/") != 200:
        pytest.skip(
            f"anonymous registry {host or '(unset)'} does not answer /v2/; "
            f"run `scripts/dev-services up`. {_services.get('up_error', '')}".strip()
        )
    return host


@pytest.fixture(scope="session")
def auth_registry() -> AuthRegistry:
    """The basic-auth loopback registry: (host, user, password)."""
    _check_marked("auth_registry")
    env = _services_env()
    host = env.get("THEORY_AUTH_REGISTRY", "")
    pw_file = env.get("THEORY_AUTH_REGISTRY_PASSWORD_FILE", "")
    if not host or _http_status(f"http://{host}/v2/") != 401 or not pw_file or not Path(pw_file).is_file():
        pytest.skip(
            f"auth registry {host or '(unset)'} not up (or password file missing); run `scripts/dev-services up`. "
            f"{_services.get('up_error', '')}".strip()
        )
    password = Path(pw_file).read_text().strip()
    return AuthRegistry(host=host, user=env.get("THEORY_AUTH_REGISTRY_USER", "theory"), password=password)


@pytest.fixture(scope="session")
def base_image(registry: str) -> str:
    """`REGISTRY/theory/python-base@sha256:...`, a linux/amd64+arm64 Python index (BASE_IMAGE build arg)."""
    _check_marked("base_image")
    ref = os.environ.get("THEORY_BASE_IMAGE", "")
    if ref:
        return ref
    reason = _skip_reason_no_engine()
    if reason:
        pytest.skip(reason)
    res = subprocess.run(
        [str(LOCAL_BASE_IMAGE), registry], capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL
    )
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or len(lines) != 1:
        pytest.skip(f"scripts/local-base-image failed (exit {res.returncode}): {res.stderr.strip()[-1500:]}")
    os.environ["THEORY_BASE_IMAGE"] = lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def shared_blob_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One push blob cache (THEORY_BLOB_CACHE_DIR) for the tests whose subject is not the cold push.
    With it a push of layers pushed before (by any test) mounts or skips them, as on a developer's
    machine, instead of re-compressing and re-uploading ~190 MiB per test (~40 s each). The cold path
    keeps its own tests, each with its own empty cache: tests/test_build_push.py and
    tests/test_image_reproducible.py."""
    return str(tmp_path_factory.mktemp("blob-cache"))


@pytest.fixture
def canary_secrets() -> Iterator[dict[str, str]]:
    """NAME -> `canary-<uuid4 hex>`; check outputs with `tests.helpers.assert_no_canary`."""
    yield make_canaries()
