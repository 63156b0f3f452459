"""ASGI entry point: `uvicorn app:app` (the image runs it from /app, next to registry.yaml)."""

from pathlib import Path

from handler import handler, warm_up
from theory_runtime import create_app

app = create_app(handler, Path(__file__).resolve().with_name("registry.yaml"))
warm_up()
