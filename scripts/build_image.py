#!/usr/bin/env python3
"""`make image`: build Funnel's container image from the Dockerfile, with no registry needed.

Standard library only (it runs before any virtual environment exists). Steps:

1. The base image. The Dockerfile's PYTHON_IMAGE default (python:3.11-slim-bookworm) is used
   when the engine has it or can pull it. When it cannot (no registry reachable), an
   equivalent Debian 12 root is bootstrapped with `mmdebstrap --variant=minbase bookworm`
   (Debian's own python3 is 3.11, with venv, libpython3.11 and `python` on PATH) and imported
   as BOOTSTRAP_BASE; the same Dockerfile builds on either.
2. The build machine's pip configuration is forwarded into the build's RUN steps: every
   setting `pip config list` shows (files and PIP_* variables) goes into one pip.conf mounted
   read-only with PIP_CONFIG_FILE pointing at it, and every local path a setting names (a CA
   bundle, a find-links folder, a file:// index and the folder its relative links lead to, a
   constraints file) is mounted read-only at the same path. Nothing of it is committed to the
   image: RUN-step volumes are not layers, and only the builder stage sees them. When that
   configuration names a package source (find-links or an index), torch comes from it too
   (TORCH_INDEX_URL_CPU=""), as `make install` takes it.
3. `buildah bud --isolation chroot` (or `podman build`), then the image is tagged
   `funnel:<variant>` and `funnel:src-<digest of the build inputs>`. An image already tagged
   with the current digest is reused (`--force` rebuilds): CI's cluster test and a developer's
   second `make image` do not repeat a build of identical inputs.

Exit status: 0 built (or reused), 2 bad usage, 1 the build failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "python:3.11-slim-bookworm"
BOOTSTRAP_BASE = "localhost/funnel-base:bookworm-python3.11"
# Debian 12's python3 is 3.11; python-is-python3 gives the `python` the Dockerfile's RUN steps
# call, as the official image has.
BOOTSTRAP_PACKAGES = ("python3", "python3-venv", "python-is-python3", "libpython3.11",
                      "ca-certificates")
# what the Dockerfile sends to the build (its .dockerignore allow-list): the digest covers these
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "serve", "training",
           "monitoring", "funnel")
FORWARD_MOUNT = "/run/funnel-build/pip.conf"
# settings whose values name package sources (torch comes from them when forwarded)
SOURCE_KEYS = {"find-links", "index-url", "extra-index-url"}


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


# ---- the pip configuration to forward (pure) -----------------------------------------------

@dataclass
class PipForward:
    """The merged settings and the local paths they name."""

    settings: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)

    @property
    def names_sources(self) -> bool:
        return any(k in SOURCE_KEYS for k in self.settings)

    def config_text(self) -> str:
        lines = ["[global]"] + [f"{k} = {v}" for k, v in sorted(self.settings.items())]
        return "\n".join(lines) + "\n"


def parse_pip_config_list(text: str) -> dict[str, str]:
    """`pip config list` output (`global.cert='/x'`, `:env:.find-links='/y'`) as one
    section: later scopes win, and the environment (`:env:`) wins over files, as in pip."""
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or "." not in key:
            continue
        scope, _, name = key.rpartition(".")
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        (env if scope == ":env:" else files)[name] = value
    return {**files, **env}


def local_paths(value: str) -> list[str]:
    """The local paths a setting names: absolute paths and file:// URLs. A file:// index
    (…/simple) links to its files relatively (../../files/x.whl), so its parent goes too."""
    found: list[str] = []
    for token in value.split():
        if token.startswith("file://"):
            path = token[len("file://"):].rstrip("/") or "/"
            found.append(str(Path(path).parent) if Path(path).name == "simple" else path)
        elif token.startswith("/"):
            found.append(token.rstrip("/") or "/")
    return found


def pip_forward(config_list: str, exists: Callable[[str], bool] = os.path.exists) -> PipForward:
    settings = parse_pip_config_list(config_list)
    mounts: list[str] = []
    for value in settings.values():
        for path in local_paths(value):
            if exists(path) and path not in mounts and path != "/":
                mounts.append(path)
    # a mount inside another one is already there
    mounts = [m for m in mounts if not any(m != o and m.startswith(o + "/") for o in mounts)]
    return PipForward(settings=settings, mounts=sorted(mounts))


def build_digest(root: Path, extra: dict[str, str]) -> str:
    """sha256 over the build inputs: the context's files (path and content, as git lists
    them, so untracked scratch files do not count) and the build arguments."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard", "--", *CONTEXT],
                            check=True, capture_output=True).stdout.split(b"\0")
    h = hashlib.sha256()
    for rel in sorted(p.decode() for p in listed if p):
        path = root / rel
        if path.is_file():
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---- the engine (edges) --------------------------------------------------------------------

def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    log("$ " + shlex.join(cmd))
    return subprocess.run(cmd, **kw)


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name]).returncode == 0


def ensure_base(base: str, pull_timeout_s: int) -> str:
    """`base` if the engine has it or can pull it; else, for the default base, the
    bootstrapped Debian 12 equivalent."""
    if image_exists(base):
        return base
    try:
        pulled = run(["podman", "pull", "--quiet", base], timeout=pull_timeout_s,
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if pulled.returncode == 0:
            return base
        why = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
    except subprocess.TimeoutExpired:
        why = f"no answer in {pull_timeout_s} s"
    if base != DEFAULT_BASE:
        log(f"--base {base!r}: not present and cannot be pulled ({why[:160]}); without "
            "--base, make image bootstraps its own")
        raise SystemExit(2)
    log(f"{base} cannot be pulled here ({why[:160]}); using a bootstrapped Debian bookworm base")
    if image_exists(BOOTSTRAP_BASE):
        return BOOTSTRAP_BASE
    if shutil.which("mmdebstrap") is None:
        sys.exit("image: no registry and no mmdebstrap: apt-get install mmdebstrap")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="funnel-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        if run(["mmdebstrap", "--quiet", "--variant=minbase",
                "--include=" + ",".join(BOOTSTRAP_PACKAGES), "bookworm", str(tar)]).returncode:
            sys.exit("image: mmdebstrap failed")
        changes = ["ENV LANG=C.UTF-8", "CMD [\"python3\"]",
                   "LABEL org.opencontainers.image.description="
                   "\"Debian bookworm with its python3 (3.11), bootstrapped by make image\""]
        cmd = ["podman", "import"]
        for c in changes:
            cmd += ["--change", c]
        if run([*cmd, str(tar), BOOTSTRAP_BASE], stdout=subprocess.DEVNULL).returncode:
            sys.exit("image: podman import failed")
    log(f"bootstrapped {BOOTSTRAP_BASE} in {time.monotonic() - t0:.0f} s")
    return BOOTSTRAP_BASE


def image_size_mb(name: str) -> float:
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", name],
                         check=True, capture_output=True, text=True).stdout
    return round(int(out.strip()) / 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make image", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tag", default=None, help="image name (default funnel:<variant>)")
    p.add_argument("--base", default=DEFAULT_BASE, help="PYTHON_IMAGE build argument")
    p.add_argument("--no-forward-pip", action="store_true",
                   help="do not forward this machine's pip configuration into the build")
    p.add_argument("--force", action="store_true", help="rebuild even if the digest matches")
    p.add_argument("--pull-timeout-s", type=int, default=60)
    p.add_argument("--report", type=Path, default=None,
                   help="write build_s, size_mb, command and machine to this JSON file")
    args = p.parse_args(argv)
    tag = args.tag or f"funnel:{args.variant}"
    if shutil.which("podman") is None:
        p.error("podman is not installed (Debian: apt-get install buildah podman)")

    t0 = time.monotonic()
    base = ensure_base(args.base, args.pull_timeout_s)
    forward = PipForward()
    pip = shutil.which("pip3") or shutil.which("pip")
    if not args.no_forward_pip and pip:
        listed = subprocess.run([pip, "config", "list"], capture_output=True, text=True)
        forward = pip_forward(listed.stdout if listed.returncode == 0 else "")
    build_args = {"VARIANT": args.variant, "PYTHON_IMAGE": base}
    if forward.settings:
        build_args["PIP_CONFIG_FILE"] = FORWARD_MOUNT
        if forward.names_sources:
            build_args["TORCH_INDEX_URL_CPU"] = ""
    digest = build_digest(ROOT, {**build_args, "pip": forward.config_text()})
    digest_tag = f"funnel:src-{digest}"
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    reused = image_exists(digest_tag) and not args.force
    if reused:
        log(f"{digest_tag} is built from these inputs already; tagging it {tag} (--force rebuilds)")
        run(["podman", "tag", digest_tag, tag], check=True)
    else:
        with tempfile.TemporaryDirectory(prefix="funnel-pip-") as tmp:
            conf = Path(tmp) / "pip.conf"
            conf.write_text(forward.config_text())
            volumes = [f"{m}:{m}:ro" for m in forward.mounts]
            if forward.settings:
                volumes.append(f"{conf}:{FORWARD_MOUNT}:ro")
                log(f"forwarding pip's configuration ({', '.join(sorted(forward.settings))})"
                    f" and {len(forward.mounts)} local path(s), read-only")
            all_args = {**build_args, "REVISION": revision,
                        "CREATED": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            if shutil.which("buildah"):
                cmd = ["buildah", "bud", "--isolation", "chroot", "--layers=false"]
            else:
                cmd = ["podman", "build", "--isolation", "chroot"]
            for k, v in all_args.items():
                cmd += ["--build-arg", f"{k}={v}"]
            for v in volumes:
                cmd += ["--volume", v]
            cmd += ["--tag", digest_tag, "--tag", tag, "--file", str(ROOT / "Dockerfile"),
                    str(ROOT)]
            if run(cmd).returncode:
                log("the build failed (see above)")
                return 1
    build_s = round(time.monotonic() - t0, 1)
    size = image_size_mb(tag)
    log(f"{tag} ({digest_tag}): {size:.0f} MB, {'reused' if reused else 'built'} in {build_s} s")
    if args.report:
        if reused:
            log("--report needs a build: rerun with --force")
            return 2
        args.report.write_text(json.dumps({
            "command": "make image IMAGE_ARGS=" + shlex.quote(shlex.join(sys.argv[1:])),
            "date": datetime.now(UTC).date().isoformat(),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
                       f"{platform.system()}, podman/buildah (chroot isolation)",
            "base": base, "variant": args.variant, "image": tag, "digest_tag": digest_tag,
            "build_s": build_s, "size_mb": size,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
