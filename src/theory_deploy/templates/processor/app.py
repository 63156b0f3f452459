"""ASGI entry point: `uvicorn app:app` (the image runs it from /app).

In the image the spec is /app/processor.json: registry.yaml without its pins, exported at build time
(`python -m theory_runtime.spec export`; see the Dockerfile). Run from the source tree, there is no
processor.json and registry.yaml itself is read.
"""

from pathlib import Path

from handler import handler
from theory_runtime import create_app

HERE = Path(__file__).resolve().parent
SPEC = HERE / "processor.json"

app = create_app(handler, SPEC if SPEC.is_file() else HERE / "registry.yaml")
