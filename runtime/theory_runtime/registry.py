"""Read the processor's spec and compile its `inputs` schema.

The spec is either `registry.yaml` itself (a plain YAML load: source trees, in-process tests) or
`processor.json`, what images carry: registry.yaml without the sections the runtime never reads
(`image`, whose pins change after every build, and `build`), written by `theory_runtime.spec export`.
Both are validated the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from .errors import InputsError


class RegistryFileError(ValueError):
    """registry.yaml is missing or unusable; raised at startup so a bad image fails fast."""


@dataclass(frozen=True)
class Registry:
    ref: str
    path: str
    api_path: str = "/run"
    healthz_path: str = "/healthz"
    auth_secret: str | None = None
    inputs_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    required_secrets: tuple[str, ...] = ()
    optional_secrets: tuple[str, ...] = ()
    timeout_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def secret_names(self) -> tuple[str, ...]:
        names = [*self.required_secrets, *self.optional_secrets]
        if self.auth_secret:
            names.append(self.auth_secret)
        return tuple(names)


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RegistryFileError(f"{where} must be a list of environment variable names")
    return tuple(value)


def read_document(path: str | Path) -> Any:
    """The parsed file: JSON when it ends in .json, else YAML (safe load). RegistryFileError if unusable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RegistryFileError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise RegistryFileError(f"{p} is not UTF-8 text") from None
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise RegistryFileError(f"{p} is not valid JSON: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RegistryFileError(f"{p} is not valid YAML: {e}") from None


def load_registry(path: str | Path) -> Registry:
    """Load registry.yaml or an exported processor.json (see the module docstring)."""
    return registry_from_data(read_document(path), Path(path))


def registry_from_data(data: Any, p: Path) -> Registry:
    if not isinstance(data, dict):
        raise RegistryFileError(f"{p}: top level must be a mapping")
    ref = data.get("ref")
    if not isinstance(ref, str) or not ref:
        raise RegistryFileError(f"{p}: `ref` is missing")
    api = data.get("api") or {}
    if not isinstance(api, dict):
        raise RegistryFileError(f"{p}: `api` must be a mapping")
    api_path = api.get("path") or "/run"
    healthz = api.get("healthz") or "/healthz"
    for name, value in (("api.path", api_path), ("api.healthz", healthz)):
        if not isinstance(value, str) or not value.startswith("/"):
            raise RegistryFileError(f"{p}: `{name}` must be a path starting with '/'")
    auth_secret = api.get("auth_secret")
    if auth_secret is not None and (not isinstance(auth_secret, str) or not auth_secret):
        raise RegistryFileError(f"{p}: `api.auth_secret` must be an environment variable name or null")
    schema = data.get("inputs")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise RegistryFileError(f"{p}: `inputs` must be a JSON Schema (a mapping)")
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise RegistryFileError(f"{p}: `inputs` is not a valid JSON Schema: {e.message}") from None
    secrets = data.get("secrets") or {}
    if not isinstance(secrets, dict):
        raise RegistryFileError(f"{p}: `secrets` must be a mapping")
    runtime = data.get("runtime") or {}
    timeout = runtime.get("timeout_s") if isinstance(runtime, dict) else None
    try:
        timeout_s = float(timeout) if timeout is not None else None
    except (TypeError, ValueError):
        raise RegistryFileError(f"{p}: `runtime.timeout_s` must be a number") from None
    return Registry(
        ref=ref,
        path=str(p),
        api_path=api_path,
        healthz_path=healthz,
        auth_secret=auth_secret,
        inputs_schema=schema,
        required_secrets=_names(secrets.get("required"), "secrets.required"),
        optional_secrets=_names(secrets.get("optional"), "secrets.optional"),
        timeout_s=timeout_s,
        raw=data,
    )


def json_pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class InputsValidator:
    def __init__(self, schema: dict[str, Any]):
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        self._validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def validate(self, inputs: Any) -> None:
        """Raise InputsError naming the JSON pointer of the most relevant bad field."""
        errors = list(self._validator.iter_errors(inputs))
        if not errors:
            return
        err = best_match(errors)
        assert err is not None
        parts = list(err.absolute_path)
        if err.validator == "required" and isinstance(err.instance, dict):
            # point at the missing property itself, not at its parent
            for prop in err.validator_value or ():
                if prop not in err.instance and repr(prop) in err.message:
                    parts.append(prop)
                    break
        pointer = json_pointer(parts)
        message = err.message
        if len(message) > 300:
            message = message[:297] + "..."
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise InputsError(
            f"Invalid inputs at {pointer or '/'}: {message}{more}",
            details={"pointer": pointer, "schema_path": json_pointer(err.absolute_schema_path)},
        )
