"""A docker CLI stand-in: an executable file the product runs exactly as it runs the real client
(found on PATH or named by THEORY_DOCKER / DOCKER), for tests that need no engine.

    client = FakeDocker(tmp_path / "bin", version="20.10.24", buildx=False)
    client.containers["llm-litellm-v1"] = {...}       # what `docker container inspect` prints for it
    client.images["sha256:..."] = {"RepoDigests": [...]}
    env = {"THEORY_DOCKER": str(client.path)}       # or PATH=client.folder:...

What it answers, as docker 20.10+ does (the product reads nothing else of these commands):

- `docker buildx version`: the plugin's version line (exit 0) when `buildx=True`, otherwise
  `docker: 'buildx' is not a docker command.` (exit 1), as a client without the plugin answers;
- `docker version --format {{.Client.Version}}` / `{{.Server.Version}}`: the client version; the
  server version only when `engine=True`, otherwise the daemon-down message on stderr (exit 1);
- `docker container inspect -- NAME` / `docker image inspect -- REF`: a JSON array of the one record
  (exit 0), or `Error: No such container: NAME` / `Error: No such image: REF` (exit 1);
- `docker pull REF`: exit 0, after recording (in `pulls.jsonl`) its arguments and the registry
  configuration it was given (`$DOCKER_CONFIG` and its `config.json`, parsed; null without one),
  which is how the real client receives credentials;
- `docker build ... --platform linux/ARCH ... --iidfile FILE ... CONTEXT` (the classic builder's
  form, DOCKER_BUILDKIT=1): the image a test planted for ARCH with `add_built_image` becomes the
  build's result: its id goes to FILE and the `-t` tag names it, after BuildKit-style step lines
  (`#1 [1/1] FROM ...`); a platform with nothing planted fails (exit 1) as a failed RUN step would;
  with no image planted at all, a build is unexpected (below);
- `docker tag SOURCE TARGET`: TARGET names SOURCE's record from then on (`No such image` otherwise);
- `docker save -o DEST ID`: the planted image's `docker save` archive (the legacy layout engine
  20.10 writes: manifest.json, the config as <hex>.json, one layer.tar per layer) copied to DEST;
- anything else: `unexpected: ...` on stderr, exit 2, so a test notices a call it did not plan for.

Every call is appended to `calls.log` next to the executable (one line, arguments joined by spaces).
The state (containers, images) is re-read from `state.json` on each call: a test may change it
between calls with `save()`.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import sys
import tarfile
from pathlib import Path
from typing import Any

from tests.modal_standin.images import image_config, layer_tar

_SCRIPT = r"""#!@PYTHON@
import json, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(HERE / "calls.log", "a") as log:
    log.write(" ".join(args) + "\n")
state = json.loads((HERE / "state.json").read_text())
DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"

def out(text, code=0, err=""):
    sys.stdout.write(text)
    sys.stderr.write(err)
    sys.exit(code)

if args[:2] == ["buildx", "version"]:
    if state["buildx"]:
        out("github.com/docker/buildx v0.14.1 59582ec\n")
    out("", 1, "docker: 'buildx' is not a docker command.\nSee 'docker --help'\n")
if args[:2] == ["version", "--format"]:
    if "Server" in args[2]:
        if state["engine"]:
            out(state["version"] + "\n")
        out("", 1, DOWN + "\n")
    out(state["version"] + "\n")
if len(args) == 4 and args[1] == "inspect" and args[2] == "--" and args[0] in ("container", "image"):
    kind, name = args[0], args[3]
    if not state["engine"]:
        out("", 1, DOWN + "\n")
    record = state[kind + "s"].get(name)
    if record is None:
        out("", 1, f"Error: No such {kind}: {name}\n")
    out(json.dumps([record]) + "\n")
if args[:1] == ["build"] and state["engine"] and state["builds"]:
    arch = args[args.index("--platform") + 1].removeprefix("linux/")
    built = state["builds"].get(arch)
    sys.stdout.write(f"#1 [internal] load build definition from Dockerfile\n#2 [1/1] FROM scratch ({arch})\n")
    if built is None:
        out("#3 ERROR: process \"/bin/sh -c false\" did not complete successfully: exit code: 1\n", 1)
    Path(args[args.index("--iidfile") + 1]).write_text(built)
    state["images"][args[args.index("-t") + 1]] = state["images"][built]
    (HERE / "state.json").write_text(json.dumps(state))
    out("#3 DONE 0.0s\n")
if args[:1] == ["tag"] and len(args) == 3 and state["engine"]:
    if args[1] not in state["images"]:
        out("", 1, f"Error response from daemon: No such image: {args[1]}\n")
    state["images"][args[2]] = state["images"][args[1]]
    (HERE / "state.json").write_text(json.dumps(state))
    out("")
if args[:2] == ["save", "-o"] and len(args) == 4 and state["engine"] and args[3] in state["archives"]:
    import shutil
    shutil.copyfile(state["archives"][args[3]], args[2])
    out("")
if args[:1] == ["pull"] and len(args) == 2:
    import os
    folder = os.environ.get("DOCKER_CONFIG")
    config = None
    if folder and os.path.isfile(os.path.join(folder, "config.json")):
        config = json.loads(Path(folder, "config.json").read_text())
    with open(HERE / "pulls.jsonl", "a") as pulls:
        pulls.write(json.dumps({"args": args, "config": config, "docker_config": folder}) + "\n")
    out(args[1].rsplit("@", 1)[-1] + ": Pulling from library\n")
out("", 2, "unexpected: " + " ".join(args) + "\n")
"""


class FakeDocker:
    def __init__(
        self,
        folder: Path,
        *,
        version: str = "20.10.24",
        buildx: bool = False,
        engine: bool = True,
        name: str = "docker",
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / name
        self.version, self.buildx, self.engine = version, buildx, engine
        self.containers: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.builds: dict[str, str] = {}  # arch -> the image id `docker build` for linux/<arch> gives
        self.archives: dict[str, str] = {}  # image id -> its `docker save` archive
        self.path.write_text(_SCRIPT.replace("@PYTHON@", sys.executable))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.save()

    def save(self) -> None:
        state = {
            "version": self.version,
            "buildx": self.buildx,
            "engine": self.engine,
            "containers": self.containers,
            "images": self.images,
            "builds": self.builds,
            "archives": self.archives,
        }
        (self.folder / "state.json").write_text(json.dumps(state))

    def add_built_image(self, arch: str, files: dict[str, bytes]) -> str:
        """Plant the image `docker build` for linux/<arch> gives: one layer holding `files`, with its
        engine record (Architecture, Os, RootFS) and its `docker save` archive. Returns its id, which
        is the config's digest, as the classic image store's ids are."""
        # An engine's mtime, which push normalises; the layer and config are the Modal stand-in's own.
        layer = layer_tar(files, mtime=1_700_000_000)
        diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
        config = image_config(layer, arch=arch)
        hex_id = hashlib.sha256(config).hexdigest()
        archive = self.folder / f"save-{hex_id}.tar"
        with tarfile.open(archive, "w") as tar:
            manifest = [{"Config": f"{hex_id}.json", "RepoTags": None, "Layers": [f"{hex_id[:12]}/layer.tar"]}]
            for name, data in (
                ("manifest.json", json.dumps(manifest).encode()),
                (f"{hex_id}.json", config),
                (f"{hex_id[:12]}/layer.tar", layer),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        image_id = f"sha256:{hex_id}"
        self.images[image_id] = {"Id": image_id, "Architecture": arch, "Os": "linux", "RootFS": {"Layers": [diff_id]}}
        self.builds[arch] = image_id
        self.archives[image_id] = str(archive)
        self.save()
        return image_id

    def pulls(self) -> list[dict[str, Any]]:
        log = self.folder / "pulls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def calls(self) -> list[str]:
        log = self.folder / "calls.log"
        return log.read_text().splitlines() if log.exists() else []
