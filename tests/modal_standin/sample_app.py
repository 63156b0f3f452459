"""Writes and imports deploy modules shaped like the product's, for tests of the stand-in.

Each call (re)writes ``<directory>/<module>.py`` (Modal needs the decorated function at module
scope, and mounts the module's file), executes it afresh as ``<module>`` and returns its
``modal.App``. Same arguments -> same file -> same function definition, so a redeploy is a no-op.

``image_ref`` has no default: the stand-in pulls what a deploy references, so it must name an image
that exists in a loopback registry (``modal_standin.images.push_tiny_image``), unless the deploy
is meant to fail before its image is built. ``registry_secret=None`` attaches no pull secret.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

TEMPLATE = """\
import modal

ENV = {env!r}
app = modal.App({app_name!r}, tags={tags!r})
image = modal.Image.from_registry(
    {image_ref!r},
    secret={registry_secret_expr},
).env({image_env!r})


@app.function(
    image=image,
    cpu={cpu!r},
    memory={memory!r},
    timeout={timeout!r},
    gpu={gpu!r},
    secrets=[modal.Secret.from_name(n, environment_name=ENV) for n in {secrets!r}],
)
@modal.concurrent(max_inputs={max_inputs!r})
@modal.asgi_app()
def {function_name}():
    from fastapi import FastAPI

    return FastAPI()
"""


def load_app(
    directory: Path,
    *,
    env: str,
    app_name: str = "proc-demo",
    function_name: str = "web",
    image_ref: str,
    registry_secret: str | None = "REGISTRY_AUTH",
    image_env: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    secrets: tuple[str, ...] = ("proc-demo-env",),
    cpu: float = 1.0,
    memory: int = 512,
    timeout: int = 300,
    gpu: str | None = None,
    max_inputs: int = 100,
    module: str = "standin_sample_app",
) -> Any:
    """Return the ``modal.App`` of a freshly written deploy module (same args -> same file content)."""
    mod_name = module
    path = Path(directory) / f"{mod_name}.py"
    path.write_text(
        TEMPLATE.format(
            env=env,
            app_name=app_name,
            function_name=function_name,
            image_ref=image_ref,
            registry_secret_expr=(
                f"modal.Secret.from_name({registry_secret!r}, environment_name=ENV)" if registry_secret else "None"
            ),
            image_env=image_env or {},
            tags=tags or {},
            secrets=list(secrets),
            cpu=cpu,
            memory=memory,
            timeout=timeout,
            gpu=gpu,
            max_inputs=max_inputs,
        )
    )
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod.app
