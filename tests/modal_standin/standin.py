"""``ModalStandIn``: runs the stand-in gRPC server on a loopback port in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpclib.server

from .servicer import StandInServicer
from .state import DEFAULT_ENVIRONMENTS, ImageSpec, LogRecord, StandInState


class ModalStandIn:
    """A local stand-in for Modal's control plane, for the real ``modal`` SDK.

    Usage::

        with ModalStandIn() as modal_cp, modal_cp.activate():
            app.deploy(name="x", environment_name="dev")
            assert modal_cp.state.deployed_app("dev", "x").version == 1

    ``activate()`` points the SDK of *this* process at the stand-in; ``env_vars()`` gives the
    variables for a subprocess (e.g. the product's CLI).
    """

    def __init__(
        self,
        environments: tuple[str, ...] | list[str] = DEFAULT_ENVIRONMENTS,
        *,
        token_id: str = "ak-test",
        token_secret: str = "as-test",
        user: str = "standin-user",
        web_url_for: Callable[..., str] | None = None,
        image_build_hook: Callable[[ImageSpec], None] | None = None,
        image_builder_version: str = "2025.06",
        detect_noop_deploys: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.state = StandInState(environments)
        self.token_id = token_id
        self.token_secret = token_secret
        self.user = user  # created_by / deployed_by / stopped_by
        # web_url_for(app_name, env) -> str; it also gets function_name= and function= (the
        # FunctionRecord: image_id, resources, ...) if its signature names them or takes **kwargs.
        # Consulted when a web function is created, on publish AND on every lookup, so it may be set
        # after a deploy. It runs on the server thread under state.lock: keep it quick (cache).
        self.web_url_for = web_url_for
        # Every build first pulls the FROM reference of a `from_registry` layer from the real (loopback)
        # registry with the attached secret's credentials, as Modal does (servicer.py, rule 4); a failed
        # pull fails the build. Then image_build_hook(spec) runs (in a worker thread), if set; raising
        # fails the build with that message. There is no switch to skip the pull: tests push real images.
        self.image_build_hook = image_build_hook
        self.image_builder_version = image_builder_version
        self.detect_noop_deploys = detect_noop_deploys
        self.host = host
        self.port = 0
        self.servicer = StandInServicer(self, self.state)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpclib.server.Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ModalStandIn:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                server = grpclib.server.Server([self.servicer])
                loop.run_until_complete(server.start(self.host, 0))
                sockets = server._server.sockets if server._server else []  # asyncio.Server
                self.port = sockets[0].getsockname()[1]
                self._server = server
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.wait_for(server.wait_closed(), 5))
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._tmp = tempfile.TemporaryDirectory(prefix="modal-standin-")
        self._thread = threading.Thread(target=run, name="modal-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("modal stand-in did not start within 10 s")
        if failure:
            self._thread = None
            raise RuntimeError(f"modal stand-in failed to start: {failure[0]!r}") from failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ModalStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ pointing the SDK here
    def env_vars(self) -> dict[str, str]:
        """Variables that point the SDK (in any process) at this stand-in.

        No MODAL_ENVIRONMENT on purpose: the product must name the environment on every call.
        MODAL_CONFIG_PATH names a file that does not exist, so no ~/.modal.toml profile leaks in
        (it is read at import time, so it matters for subprocesses).
        """
        assert self.port, "start the stand-in first"
        cfg = os.path.join(self._tmp.name if self._tmp else tempfile.gettempdir(), "no-modal.toml")
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
            "MODAL_CONFIG_PATH": cfg,
        }

    @contextlib.contextmanager
    def activate(self) -> Iterator[ModalStandIn]:
        """Point this process's SDK here: set env_vars(), unset MODAL_ENVIRONMENT/MODAL_PROFILE, and
        drop the SDK's cached ``Client.from_env()`` singleton (before and after)."""
        unset = ("MODAL_ENVIRONMENT", "MODAL_PROFILE")
        saved = {k: os.environ.get(k) for k in (*self.env_vars(), *unset)}
        os.environ.update(self.env_vars())
        for k in unset:
            os.environ.pop(k, None)
        reset_sdk_client()
        try:
            yield self
        finally:
            reset_sdk_client()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # ------------------------------------------------------------------ test conveniences
    def add_log(
        self, environment_name: str, app_name: str, data: str, fd: str = "stdout", at: float | None = None
    ) -> LogRecord:
        """Append a log line to the live app (what its container would print). fd: stdout|stderr|system."""
        with self.state.lock:
            app = self.state.deployed_app(environment_name, app_name) or self.state.app(environment_name, app_name)
            if app is None:
                raise KeyError(f"no app {app_name!r} in {environment_name!r}")
            return self.servicer.add_log(app, data, fd, at)

    def image_spec(self, image_id: str) -> ImageSpec:
        with self.state.lock:
            return self.servicer.image_spec(image_id)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with self.state.lock:
                value = predicate()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)


def reset_sdk_client() -> None:
    """Forget the SDK's process-wide ``Client.from_env()`` client so the next call re-reads the env."""
    try:
        import modal
        from modal.client import _Client
    except ImportError:  # pragma: no cover
        return
    if _Client._client_from_env is not None:
        with contextlib.suppress(Exception):
            modal.Client.from_env().close()  # returns the cached client; closing drops its sockets
    _Client._client_from_env = None
    _Client._client_from_env_lock = None
