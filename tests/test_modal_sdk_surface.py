"""Drift guard: the exact `modal` SDK surface theory-deploy uses (src/theory_deploy/targets/modal.py and
the module it generates, targets/modal_app.py). The SDK is pinned exactly (pyproject: modal==1.6.4);
when a bump changes any name, parameter, keyword-only-ness or default we rely on, this fails loudly
and says which. Re-check the target against the new SDK before updating the expectations here.

Parameters are compared as (name, kind, default): annotations are left out on purpose (their
text changes with the Python version, not with the API).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import modal
import modal.exception
import pytest
from modal.config import config as modal_config

from theory_deploy.targets import modal_app

P, K, V, VK = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY", "VAR_POSITIONAL", "VAR_KEYWORD"
NO = "<no default>"


def shape(fn: Any) -> list[tuple[str, str, str]]:
    out = []
    for p in inspect.signature(fn).parameters.values():
        default = NO if p.default is inspect.Parameter.empty else repr(p.default)
        out.append((p.name, p.kind.name, default))
    return out


def test_sdk_version_is_the_pinned_one() -> None:
    assert modal.__version__ == "1.6.4", (
        f"modal {modal.__version__} is installed, theory-deploy is written against 1.6.4: "
        "re-run this file's checks against the new SDK before bumping the pin."
    )


# Exact signatures of the calls we make (name, kind, default).
EXACT: dict[str, list[tuple[str, str, str]]] = {
    "modal.App.deploy": [
        ("self", P, NO),
        ("name", K, "None"),
        ("environment_name", K, "None"),
        ("tag", K, "''"),
        ("client", K, "None"),
        ("strategy", K, "'rolling'"),
    ],
    "modal.App.lookup": [
        ("name", P, NO),
        ("client", K, "None"),
        ("environment_name", K, "None"),
        ("create_if_missing", K, "False"),
    ],
    "modal.App.get_tags": [("self", P, NO), ("client", K, "None")],
    # the deploy record: documented to replace the whole tag set
    "modal.App.set_tags": [("self", P, NO), ("tags", P, NO), ("client", K, "None")],
    "modal.App.info": [("self", P, NO), ("refresh", P, "False")],
    "modal.App.stop": [("self", P, NO), ("client", K, "None")],
    "modal.Image.from_registry": [
        ("tag", P, NO),
        ("secret", P, "None"),
        ("setup_dockerfile_commands", K, "[]"),
        ("force_build", K, "False"),
        ("add_python", K, "None"),
        ("kwargs", VK, NO),
    ],
    "modal.Image.env": [("self", P, NO), ("vars", P, NO)],
    "modal.Secret.from_name": [
        ("name", P, NO),
        ("environment_name", K, "None"),
        ("required_keys", K, "[]"),
        ("client", K, "None"),
    ],
    "modal.Secret.hydrate": [("self", P, NO), ("client", P, "None")],
    "modal.Secret.update": [("self", P, NO), ("env_dict", P, NO)],
    "modal.Secret.objects.create": [
        ("self", P, NO),
        ("name", P, NO),
        ("env_dict", P, NO),
        ("allow_existing", K, "False"),
        ("environment_name", K, "None"),
        ("client", K, "None"),
    ],
    "modal.Function.from_name": [
        ("app_name", P, NO),
        ("name", P, NO),
        ("version", K, "None"),
        ("environment_name", K, "None"),
        ("client", K, "None"),
    ],
    "modal.Function.get_web_url": [("self", P, NO)],
    # verify-digest's modal_image reading: the live function's image id, and the id Modal gives the
    # expected definition (an identical definition returns its existing image)
    "modal.Function.info": [("self", P, NO), ("refresh", K, "False")],
    "modal.Image.build": [("self", P, NO), ("app", P, "None")],
    "modal.concurrent": [("max_inputs", K, "None"), ("target_inputs", K, "None")],
    "modal.asgi_app": [
        ("label", K, "None"),
        ("custom_domains", K, "None"),
        ("requires_proxy_auth", K, "False"),
    ],
    # cleanup-dev lists the dev environment's live apps
    "modal.Environment.from_name": [
        ("name", P, NO),
        ("create_if_missing", K, "False"),
        ("client", K, "None"),
    ],
    "EnvironmentAppsManager.list": [("self", P, NO)],
    "AppLogsManager.tail": [("self", P, NO), ("entries", P, "100"), ("source", K, "None")],
    "AppLogsManager.stream": [("self", P, NO), ("timeout", P, "None")],
}


def _resolve(name: str) -> Any:
    if name.startswith("EnvironmentAppsManager."):
        from modal.environments import EnvironmentAppsManager

        return getattr(EnvironmentAppsManager, name.split(".", 1)[1])
    if name.startswith("AppLogsManager."):
        from modal._logs_manager import AppLogsManager

        return getattr(AppLogsManager, name.split(".", 1)[1])
    obj: Any = modal
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(EXACT))
def test_signature_unchanged(name: str) -> None:
    assert shape(_resolve(name)) == EXACT[name], f"{name} changed: now {inspect.signature(_resolve(name))}"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # Only the keywords we pass; these signatures are long and grow, that alone is fine.
        ("modal.App", [("name", P, "None"), ("tags", K, "None")]),
        (
            "modal.App.function",
            [
                ("image", K, "None"),
                ("secrets", K, "None"),
                ("gpu", K, "None"),
                ("cpu", K, "None"),
                ("memory", K, "None"),
                ("timeout", K, "300"),
            ],
        ),
    ],
)
def test_keywords_we_pass_exist(name: str, params: list[tuple[str, str, str]]) -> None:
    have = {p[0]: p for p in shape(_resolve(name))}
    for param in params:
        assert have.get(param[0]) == param, f"{name}: {param[0]} is now {have.get(param[0])}"


@pytest.mark.parametrize(
    "name",
    [
        "modal.App.deploy",
        "modal.App.lookup",
        "modal.App.get_tags",
        "modal.App.info",
        "modal.App.stop",
        "modal.Secret.hydrate",
        "modal.Secret.update",
        "modal.Secret.objects.create",
        "modal.Function.get_web_url",
        "modal.Function.info",
        "modal.Image.build",
        "modal.App.set_tags",
        "AppLogsManager.tail",
        "AppLogsManager.stream",
    ],
)
def test_async_variants_exist(name: str) -> None:
    # Every call runs as `.aio` under asyncio.wait_for: that is how the deadlines work.
    assert callable(getattr(_resolve(name), "aio", None)), f"{name}.aio is gone"


def test_function_info_carries_the_image_id() -> None:
    # FunctionInfo.image_info.image_id is what the modal_image reading compares
    fields = {f.name for f in dataclasses.fields(modal.types.FunctionInfo)}
    assert "image_info" in fields
    assert [f.name for f in dataclasses.fields(modal.types.FunctionInfo.ImageInfo)] == ["image_name", "image_id"]


def test_app_logs_is_a_property_returning_the_logs_manager() -> None:
    from modal._logs_manager import _AppLogsManager

    prop = inspect.getattr_static(modal.App, "logs")
    assert isinstance(prop, property)
    assert prop.fget.__annotations__.get("return") in (_AppLogsManager, "_AppLogsManager")


def test_exception_classes_we_map() -> None:
    e = modal.exception
    for name in (
        "Error",
        "AuthError",
        "PermissionDeniedError",
        "NotFoundError",
        "AlreadyExistsError",
        "InvalidError",
        "RemoteError",
        "ImageBuildError",
        "TimeoutError",
        "ConnectionError",
    ):
        assert isinstance(getattr(e, name, None), type), f"modal.exception.{name} is gone"
    assert issubclass(e.ImageBuildError, e.RemoteError)
    for name in (
        "AuthError",
        "NotFoundError",
        "AlreadyExistsError",
        "InvalidError",
        "RemoteError",
        "TimeoutError",
        "ConnectionError",
        "PermissionDeniedError",
    ):
        assert issubclass(getattr(e, name), e.Error)


def test_result_types_we_read() -> None:
    from modal.types import AppInfo, AppLifecycle, LogEntry

    fields = set(AppLifecycle.__dataclass_fields__)
    assert {"state", "version", "deployed_at", "deployed_by"} <= fields
    assert "lifecycle" in AppInfo.__dataclass_fields__
    assert "message" in LogEntry.__dataclass_fields__


def test_config_keys_we_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-surface")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-surface")
    assert modal_config.get("token_id") == "ak-surface"
    assert modal_config.get("token_secret") == "as-surface"
    assert isinstance(modal_config.get("server_url"), str)


def test_tag_rules_still_match_our_encoding() -> None:
    # Modal checks tags client-side: 63 characters of [A-Za-z0-9._-]. Our encoding must pass, raw values not.
    with pytest.raises(modal.exception.InvalidError):
        modal.App("x", tags={"theory.ref": "llm/litellm@1"})
    with pytest.raises(modal.exception.InvalidError):
        modal.App("x", tags={"theory.digest": "sha256:" + "a" * 64})
    with pytest.raises(modal.exception.InvalidError):
        modal.App("x", tags={"k": "a" * 64})
    modal.App("x", tags={"k": "a" * 63})
    labels = {
        "theory.ref": "llm/litellm@1",
        "theory.digest": "sha256:" + "a" * 64,
        "theory.branch": "feat/" + "x_" * 60,
        "theory.user": "Ünïcode User",
    }
    tags = modal_app.encode_tags(labels)
    modal.App("x", tags=tags)  # accepted
    assert modal_app.decode_tags(tags) == labels


def test_registry_secret_keys_the_client_checks() -> None:
    # from_registry(secret=REGISTRY_AUTH) is checked client-side for exactly these keys.
    from modal import _image

    sets = _image._REGISTRY_AUTH_KEY_SETS
    assert {"REGISTRY_USERNAME", "REGISTRY_PASSWORD"} in [s for v in sets.values() for s in v]


def test_transport_exceptions_we_map() -> None:
    # A connection that breaks mid-call surfaces from grpclib (the SDK's transport) unwrapped.
    import grpclib.exceptions

    assert issubclass(grpclib.exceptions.StreamTerminatedError, Exception)
    assert issubclass(grpclib.exceptions.ProtocolError, Exception)
