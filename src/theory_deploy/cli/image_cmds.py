"""processorctl verbs for images: `build`, `push`, `pin`, `publish` (all three in one), and `merge`.

    processorctl build   --ref llm/litellm@1 [--platforms linux/amd64,linux/arm64] [--build-arg K=V ...]
    processorctl push    --ref llm/litellm@1 [--platforms ...] [--repository REPO] [--json]
    processorctl pin     --ref llm/litellm@1 --platform amd64 --oci REPO@sha256:... [--repository REPO]
    processorctl pin     --ref llm/litellm@1 --from-push push.json
    processorctl publish --ref llm/litellm@1 [--platforms ...] [--build-arg K=V ...] [--repository REPO]
    processorctl merge   --ref llm/litellm@1 --from DIR [--out DIR]

`push --json` prints {"index": "<repo>@sha256:...", "platforms": {"amd64": ..., "arm64": ...}}, which
`pin --from-push` reads back. Registry credentials come from REGISTRY_USERNAME/REGISTRY_PASSWORD.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import build as build_mod
from .. import docker, output, pin, push, push_records, registry_file
from ..errors import ImageBuildError, UsageError
from ..oci import RegistryClients
from ..pipeline import Pipeline, PipelineRequest
from ..push_records import PushRecord
from ..refs import ImageRef, ProcessorRef, parse_platform, parse_platforms, parse_repository


def _load(args: argparse.Namespace) -> registry_file.LoadedProcessor:
    return _load_ref(args.ref)


def _load_ref(text: str) -> registry_file.LoadedProcessor:
    return registry_file.load_processor(ProcessorRef.parse(text))


def _platforms(args: argparse.Namespace, loaded: registry_file.LoadedProcessor) -> list[str]:
    if getattr(args, "platforms", None):
        return list(parse_platforms(args.platforms))
    return list(loaded.spec.platform_names())


def parse_build_args(values: list[str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {item!r}: expected KEY=VALUE.")
        result[key] = value
    return result


# ---------------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------------


NO_CACHE_HELP = (
    "run every build step again: neither the engine's build cache nor an earlier build with the same inputs "
    "is reused (see build_inputs)"
)


def _do_build(args: argparse.Namespace, loaded: registry_file.LoadedProcessor) -> dict[str, build_mod.BuiltImage]:
    return build_mod.build_platform_images(
        loaded.spec,
        loaded.repo_root,
        _platforms(args, loaded),
        parse_build_args(args.build_arg),
        registry_path=loaded.path,
        debug=bool(args.debug),
        no_cache=bool(args.no_cache),
    )


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    loaded = _load(args)
    built = _do_build(args, loaded)
    images = {arch: {"image_id": b.image_id, "local_tag": b.local_tag} for arch, b in built.items()}
    lines = [f"built {loaded.ref} (local only; `processorctl push` uploads them):"]
    lines += [f"  {arch}: {b.local_tag} {b.image_id}" for arch, b in built.items()]
    return {"ref": str(loaded.ref), "images": images, "summary": "\n".join(lines)}


# ---------------------------------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------------------------------


def _local_images(loaded: registry_file.LoadedProcessor, platforms: list[str]) -> dict[str, build_mod.BuiltImage]:
    client = docker.docker_client()
    built: dict[str, build_mod.BuiltImage] = {}
    context = (loaded.folder / loaded.spec.build.context).resolve()
    revision = build_mod.source_revision(context)
    for arch in platforms:
        tag = build_mod.local_tag(loaded.ref.slug, arch)
        try:
            info = build_mod.inspect_image(client, tag)
        except ImageBuildError:
            raise ImageBuildError(
                f"no local image {tag} for {loaded.ref} ({arch}).",
                remedy=f"Build it first: `processorctl build --ref {loaded.ref}` (or use `processorctl publish`).",
            ) from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(build_mod.REF_LABEL) != str(loaded.ref):
            raise ImageBuildError(
                f"{tag} was not built from {loaded.ref} "
                f"(its {build_mod.REF_LABEL} label is {labels.get(build_mod.REF_LABEL)!r}).",
                remedy=f"Rebuild it: `processorctl build --ref {loaded.ref}`.",
            )
        built_rev = labels.get("org.opencontainers.image.revision")
        if revision and built_rev and built_rev != revision:
            output.progress(
                f"warning: {tag} was built from revision {built_rev[:12]}, but the build context is now at "
                f"{revision[:12]}; rebuild if that matters"
            )
        built[arch] = build_mod.BuiltImage(image_id=info["Id"], local_tag=tag, platform=arch)
    return built


def _repository(args: argparse.Namespace, loaded: registry_file.LoadedProcessor) -> ImageRef:
    return parse_repository(
        getattr(args, "repository", None) or loaded.spec.image.repository,
        where="--repository" if getattr(args, "repository", None) else "image.repository",
    )


def _do_push(
    args: argparse.Namespace,
    loaded: registry_file.LoadedProcessor,
    built: dict[str, build_mod.BuiltImage],
    clients: RegistryClients,
) -> push.PushResult:
    repository = _repository(args, loaded)
    return push.push_platform_images(built, repository, clients(repository.registry), tag=loaded.ref.slug)


def _push_summary(result: push.PushResult) -> list[str]:
    lines = [f"index: {result.index}"]
    lines += [f"  {arch}: {ref}" for arch, ref in result.platforms.items()]
    lines.append(
        f"uploaded {result.uploaded_blobs} blob(s), {result.skipped_blobs} already in the registry "
        f"({result.mounted_blobs} mounted from another repository)"
    )
    return lines


def cmd_push(args: argparse.Namespace) -> dict[str, Any]:
    loaded = _load(args)
    built = _local_images(loaded, _platforms(args, loaded))
    clients = RegistryClients(credentials_host=_repository(args, loaded).registry)
    try:
        result = _do_push(args, loaded, built, clients)
    finally:
        clients.close()
    return {
        "ref": str(loaded.ref),
        **result.to_json(),
        "uploaded_blobs": result.uploaded_blobs,
        "skipped_blobs": result.skipped_blobs,
        "mounted_blobs": result.mounted_blobs,
        "tags": result.tags,
        "summary": "\n".join([f"pushed {loaded.ref}:", *_push_summary(result)]),
    }


# ---------------------------------------------------------------------------------------------------
# pin
# ---------------------------------------------------------------------------------------------------


def cmd_pin(args: argparse.Namespace) -> dict[str, Any]:
    loaded = _load(args)
    if args.from_push:
        wanted = dict(PushRecord.read(Path(args.from_push), loaded.ref.slug, where="--from-push").platforms)
        if args.platform:
            arch = parse_platform(args.platform)
            if arch not in wanted:
                raise UsageError(f"--from-push {args.from_push} has no {arch} digest.")
            wanted = {arch: wanted[arch]}
    else:
        if not args.oci or not args.platform:
            raise UsageError("pin needs --platform and --oci (or --from-push FILE).")
        wanted = {parse_platform(args.platform): args.oci}
    clients = RegistryClients(credentials_host=loaded.registry)
    try:
        return pin.verify_and_pin(loaded, wanted, clients)
    finally:
        clients.close()


# ---------------------------------------------------------------------------------------------------
# publish
# ---------------------------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> dict[str, Any]:
    """build, push and pin, through the stage engine: exactly what `theory-deploy pipeline` and the
    actions run for those stages."""
    loaded = _load(args)
    request = PipelineRequest(
        refs=[loaded.ref],
        env=None,
        mode=None,
        stages=("build", "push", "pin"),
        platforms=_platforms(args, loaded),
        build_args=parse_build_args(args.build_arg),
        no_cache=bool(args.no_cache),
        repository=str(_repository(args, loaded)) if getattr(args, "repository", None) else None,
        repo_root=loaded.repo_root,
        debug=bool(args.debug),
    )
    report = Pipeline(request).run()
    by_stage = {s["stage"]: s for s in report["stages"]}
    pushed, pinned = by_stage["push"], by_stage["pin"]
    lines = [f"published {loaded.ref}:", f"index: {pushed['index']}"]
    lines += [f"  {arch}: {ref}" for arch, ref in pushed["platforms"].items()]
    lines.append(f"uploaded {pushed['uploaded_blobs']} blob(s), {pushed['skipped_blobs']} already in the registry")
    lines += [
        f"  pin {arch}: " + (f"{o['old'] or '(none)'} -> {o['new']}" if o["changed"] else f"unchanged ({o['new']})")
        for arch, o in pinned["pins"].items()
    ]
    return {
        "ref": str(loaded.ref),
        "index": pushed["index"],
        "platforms": pushed["platforms"],
        "uploaded_blobs": pushed["uploaded_blobs"],
        "pins": pinned["pins"],
        "changed": pinned["changed"],
        "file": pinned["file"],
        "summary": "\n".join(lines),
    }


# ---------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------


def cmd_merge(args: argparse.Namespace) -> dict[str, Any]:
    """Join the per-platform pushes of each processor (one push-<slug>.json per build job) into one index."""
    merged = []
    processors = [_load_ref(text) for text in args.ref]
    clients = RegistryClients(credentials_host=processors[0].registry)
    try:
        for loaded in processors:
            slug = loaded.ref.slug
            platforms = push_records.collect_records(Path(args.source), slug)
            record = push_records.merge(str(loaded.ref), slug, platforms, clients)
            if args.out:
                record.write(Path(args.out), slug)
            merged.append(record.to_json())
    finally:
        clients.close()
    lines = [f"{m['ref']}: index {m['index']} over {', '.join(sorted(m['platforms']))}" for m in merged]
    result: dict[str, Any] = {"merged": merged, "summary": "\n".join(lines)}
    if len(merged) == 1:
        result.update(merged[0])
    return result


# ---------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from .framework import add_verb

    def ref_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ref", required=True, help="processor ref ns/name@N, e.g. llm/litellm@1")

    def platforms_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--platforms", help="comma-separated, e.g. linux/amd64,linux/arm64 (default: build.platforms)")

    def build_arg_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--build-arg", action="append", metavar="KEY=VALUE", help="docker build argument (repeatable)")

    def no_cache_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)

    def repository_flag(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--repository", metavar="REPO", help=what)

    b = add_verb(
        subparsers,
        parent,
        "build",
        cmd_build,
        "build the processor's image once per platform into local tags theory-local/<slug>:<arch>",
    )
    ref_flag(b)
    platforms_flag(b)
    build_arg_flag(b)
    no_cache_flag(b)

    p = add_verb(
        subparsers,
        parent,
        "push",
        cmd_push,
        "upload the locally built images by digest and join them into one index; print per-platform manifest digests",
    )
    ref_flag(p)
    platforms_flag(p)
    repository_flag(p, "push here instead of image.repository (e.g. 127.0.0.1:5000/org/name)")

    pn = add_verb(
        subparsers,
        parent,
        "pin",
        cmd_pin,
        "verify a digest is the platform's image manifest, then write it into registry.yaml",
    )
    ref_flag(pn)
    pn.add_argument("--platform", help="amd64 or arm64 (linux/... accepted)")
    source = pn.add_mutually_exclusive_group()
    source.add_argument(
        "--oci",
        metavar="REPO@sha256:...",
        help="the digest ref to pin (an index is resolved to the platform's manifest)",
    )
    source.add_argument(
        "--from-push", metavar="FILE", help="pin every platform listed in `processorctl push --json` output"
    )

    pb = add_verb(subparsers, parent, "publish", cmd_publish, "build, push and pin every platform in one go")
    ref_flag(pb)
    platforms_flag(pb)
    build_arg_flag(pb)
    no_cache_flag(pb)

    mg = add_verb(
        subparsers,
        parent,
        "merge",
        cmd_merge,
        "join per-platform pushes (push-<slug>.json from each build job) into one multi-arch index",
    )
    mg.add_argument("--ref", required=True, action="append", help="processor ref (repeatable)")
    mg.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="DIR",
        help="folder holding the push-<slug>.json records (any depth)",
    )
    mg.add_argument("--out", metavar="DIR", help="write the merged push-<slug>.json here (for pin --from-push)")
