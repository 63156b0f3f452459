"""Export registry.yaml to the `processor.json` a processor image carries.

    python -m theory_runtime.spec export SRC.yaml DEST.json

Why not copy registry.yaml into the image: registry.yaml also holds the image pins
(`image.platforms.*`), which are rewritten after every build. An image carrying them would change
with every pin commit, need a new pin, and so on forever. The export keeps everything the runtime
reads (ref, api, secrets, runtime, inputs, outputs) and drops what it never reads: `image` (the
repository and the pins) and `build` (how to build; the builder reads it from the source tree).

The output is canonical, so the same input always gives the same bytes: sorted keys, 2-space
indent, UTF-8, one trailing newline, and the file's mtime set to 0 (layer tars record mtimes).
The spec is validated exactly as the server validates it at startup, so a bad registry.yaml fails
the image build instead of the first container start.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .registry import RegistryFileError, read_document, registry_from_data

#: Top-level sections of registry.yaml that never go into an image (see the module docstring).
DROPPED_SECTIONS = ("image", "build")


def _check_json_types(value: Any, where: str) -> None:
    """JSON can hold only string keys and str/int/float/bool/null/list/dict values: no silent coercion."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RegistryFileError(f"{where}: key {k!r} is not a string (quote it in the YAML)")
            _check_json_types(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_types(v, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise RegistryFileError(
            f"{where}: {type(value).__name__} value {value!r} has no JSON form (quote it in the YAML)"
        )


def runtime_spec(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a parsed registry.yaml) without the sections an image must not carry."""
    return {k: v for k, v in data.items() if k not in DROPPED_SECTIONS}


def canonical_json(data: Any) -> bytes:
    text = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def export(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bytes:
    """Validate `src`, write its runtime spec to `dest` (atomically, mtime 0); return the bytes written."""
    src_p, dest_p = Path(src), Path(dest)
    data = read_document(src_p)
    if not isinstance(data, dict):
        raise RegistryFileError(f"{src_p}: top level must be a mapping")
    spec = runtime_spec(data)
    _check_json_types(spec, str(src_p))
    try:
        body = canonical_json(spec)
    except ValueError as e:  # NaN / infinity
        raise RegistryFileError(f"{src_p}: {e}") from None
    registry_from_data(json.loads(body), src_p)  # exactly what the server will load
    dest_p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_p.parent, prefix=f".{dest_p.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.utime(tmp, (0, 0))
        os.replace(tmp, dest_p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return body


USAGE = "usage: python -m theory_runtime.spec export SRC.yaml DEST.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "export":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        export(args[1], args[2])
    except RegistryFileError as e:
        print(f"theory_runtime.spec: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"theory_runtime.spec: cannot write {args[2]}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
