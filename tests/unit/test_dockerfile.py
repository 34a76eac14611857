"""Static checks of the Dockerfile, its build context and the README's `docker` commands.

No Docker engine: the Dockerfile is parsed (dockerfile-parse) and held against the repository
and the installed project. Every COPY from the build context names files that exist and that
.dockerignore lets through; the final stage runs as a numeric non-root uid, installs nothing
and copies only from the builder; the entrypoint is the `funnel` console script, and every
command line the image runs or the README shows parses with the real CLI; the torch and
recbole pins and the run-time environment match `make install` / `make run`; the container
Serve configs the builder derives from serve/configs/local.yaml are valid and expose the
ports the Dockerfile declares.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import typer
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from typer.testing import CliRunner

from funnel.cli import app
from serve.config import load_serve_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCAL_CONFIG = ROOT / "serve" / "configs" / "local.yaml"
IMAGE = re.compile(r"^funnel:(cpu|cuda)$")
COMPILERS = {"gcc", "g++", "clang", "build-essential", "make", "cmake"}
DEV_TOOLS = {"pytest", "ruff", "mypy"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def all_values(self, instruction: str) -> list[str]:
        return [v for s in self.stages for v in s.values(instruction)]


@cache
def dockerfile() -> Dockerfile:
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"].strip()
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            stages.append(Stage(name=name, base=words[0]))
        elif not stages and instruction == "ARG":
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, value))
    return Dockerfile(global_args=global_args, stages=stages)


def _pairs(value: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` / `ARG A=1` / `LABEL a=b` -> {A: 1, ...}."""
    return dict(w.partition("=")[::2] for w in shlex.split(value))


def stage_args(stage: Stage) -> dict[str, str]:
    return {k: v for a in stage.values("ARG") for k, v in _pairs(a).items()}


def stage_env(stage: Stage) -> dict[str, str]:
    return {k: v for e in stage.values("ENV") for k, v in _pairs(e).items()}


def copy_parts(value: str) -> tuple[dict[str, str], list[str], str]:
    """COPY/ADD -> (flags, sources, destination); shell or JSON form."""
    words = shlex.split(value)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    rest = [w for w in words if not w.startswith("--")]
    if value.lstrip().startswith("["):
        rest = json.loads(value[value.index("["):])
    return flags, rest[:-1], rest[-1]


# .dockerignore, as Docker reads it (moby/patternmatcher): Go filepath.Match globs plus `**`,
# `!` re-includes, the last matching pattern wins, and a pattern also matches a path's parents.
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end
        elif c == "\\":
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


@cache
def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        cleaned = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negate, _glob_regex(cleaned)))
    return patterns


def ignored(path: str) -> bool:
    parts = path.split("/")
    candidates = [path, *("/".join(parts[:i]) for i in range(1, len(parts)))]
    result = False
    for negate, regex in ignore_patterns():
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def context_sources() -> list[str]:
    """Every COPY/ADD source that comes from the build context (not another stage)."""
    sources = []
    for instruction in ("COPY", "ADD"):
        for value in dockerfile().all_values(instruction):
            flags, srcs, _ = copy_parts(value)
            if "from" not in flags:
                sources += srcs
    return sources


def test_every_copy_from_the_context_exists_and_is_not_dockerignored() -> None:
    sources = context_sources()
    assert {"pyproject.toml", "serve"} <= set(sources), sources
    for src in sources:
        matches = sorted(ROOT.glob(src))
        assert matches, f"COPY {src}: nothing in the repository matches"
        for path in matches:
            rel = path.relative_to(ROOT).as_posix()
            assert not ignored(rel), f"COPY {src}: {rel} is excluded by .dockerignore"
            if path.is_dir():  # what the build reads under it must be sent too
                needed = [p for p in path.rglob("*") if p.suffix in {
                    ".py", ".proto", ".yaml", ".json"} and "__pycache__" not in p.parts
                    and "_pb2" not in p.name and "results" not in p.parts]
                assert needed, f"COPY {src}: no source files under it"
                dropped = [p.relative_to(ROOT).as_posix() for p in needed
                           if ignored(p.relative_to(ROOT).as_posix())]
                assert not dropped, f"COPY {src}: .dockerignore drops {dropped}"


@pytest.mark.parametrize("path", [
    ".venv/bin/python", "artifacts/latest/manifest.json", "tests/unit/test_dockerfile.py",
    ".git/HEAD", "impressions/part-0.parquet", "serve/__pycache__/cli.cpython-311.pyc",
    "serve/protos/funnel/v1/feed_pb2.py", "serve/protos/funnel/v1/feed_pb2_grpc.py",
    "benchmarks/results/feed.json", "funnel-review.sqlite3",
])
def test_dockerignore_keeps_local_state_and_generated_files_out(path: str) -> None:
    assert ignored(path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_sends_the_protos_and_configs() -> None:
    for path in ("serve/protos/funnel/v1/feed.proto", "serve/configs/local.yaml",
                 "training/configs/tiny.yaml", "funnel/cli.py", "pyproject.toml"):
        assert not ignored(path), path


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    final = dockerfile().final
    users = final.values("USER")
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: needs a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {users[-1]}: gid 0 or a name"
    created = " ".join(final.values("RUN"))
    assert f"--uid {uid}" in created, f"no user with uid {uid} is created"
    assert "HOME" in stage_env(final)


def test_final_stage_copies_only_from_the_builder_and_installs_nothing() -> None:
    df = dockerfile()
    final = df.final
    builder = df.stage("builder")
    for value in final.values("COPY") + final.values("ADD"):
        flags, _, _ = copy_parts(value)
        assert flags.get("from") == builder.name, f"final stage: COPY {value}"
    copied = {copy_parts(v)[1][0] for v in final.values("COPY")}
    assert "/opt/venv" in copied
    for run in final.values("RUN"):
        assert not re.search(r"\bpip\b|\bapt(-get)?\b", run), f"final stage installs: {run}"
    words = set(re.findall(r"[\w+.-]+", " ".join(final.values("RUN"))))
    assert not words & COMPILERS, f"final stage: {words & COMPILERS}"


def test_no_dev_extra_or_test_tools_are_installed() -> None:
    installs = [step for run in dockerfile().all_values("RUN")
                for step in re.split(r"&&|\|\||;", run) if "pip install" in step]
    assert len(installs) >= 3, installs  # torch, the project (twice), recbole
    for step in installs:
        assert "[" not in step, f"an extra is installed: {step}"
        assert not re.search(r"\s(-e|--editable)\s", step), f"editable install: {step}"
        assert not set(re.findall(r"[\w-]+", step)) & DEV_TOOLS, f"a test tool: {step}"
    checks = " ".join(dockerfile().stage("builder").values("RUN"))
    assert "! pip show pytest" in checks, "the builder does not check that pytest is absent"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert not DEV_TOOLS & set(re.findall(r"[\w-]+", runtime)), "a test tool is a runtime dep"


def test_entrypoint_is_the_funnel_console_script() -> None:
    final = dockerfile().final
    assert json.loads(final.values("ENTRYPOINT")[-1]) == ["funnel"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    target = scripts["funnel"]
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    installed = importlib.metadata.entry_points(group="console_scripts", name="funnel")
    assert [ep.value for ep in installed] == [target]


def _readme_commands() -> list[list[str]]:
    """The funnel arguments of every `docker run ... funnel:<variant> ...` in the README's
    "Container image" section (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Container image", 1)[1].split("\n## ", 1)[0]
    joined = section.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if not line.startswith("docker run "):
            continue
        words = shlex.split(line, comments=True)
        image = next(i for i, w in enumerate(words) if IMAGE.match(w))
        commands.append(words[image + 1:])
    return commands


def image_commands() -> list[list[str]]:
    cmd = json.loads(dockerfile().final.values("CMD")[-1])
    return [cmd, *(c or cmd for c in _readme_commands())]


def test_the_readme_runs_every_role() -> None:
    roles = {" ".join(c[:2]) if c[0] == "drift" else c[0] for c in image_commands()}
    assert {"serve", "triton", "drift watch", "train"} <= roles, roles


@pytest.mark.parametrize("args", image_commands(), ids=" ".join)
def test_every_command_the_image_runs_parses_with_the_cli(args: list[str]) -> None:
    # click parses every option before the eager --help acts: an unknown subcommand or
    # option still fails here
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"funnel {' '.join(args)}: {result.output}"


def test_commands_use_the_configs_the_builder_writes() -> None:
    written = {f"/etc/funnel/{name}.yaml" for name in _container_config_names()}
    for args in image_commands():
        if "--config" in args:
            assert args[args.index("--config") + 1] in written, args
    assert json.loads(dockerfile().final.values("CMD")[-1])[:3] == [
        "serve", "--config", "/etc/funnel/serve.yaml"]
    assert any(copy_parts(v)[1] == ["/etc/funnel"] for v in dockerfile().final.values("COPY"))


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def test_torch_pin_matches_make_install_and_numpy_stays_below_2() -> None:
    pin = re.search(r'"torch==([^"]+)"', _makefile())
    assert pin, "no torch pin in the Makefile"
    args = stage_args(dockerfile().stage("builder"))
    assert args["TORCH_VERSION"] == pin.group(1)
    torch_run = next(r for r in dockerfile().stage("builder").values("RUN")
                     if '"torch==${TORCH_VERSION}"' in r)
    assert "--index-url" in torch_run
    assert args["TORCH_INDEX_URL_CPU"] == "https://download.pytorch.org/whl/cpu"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    torch_range = SpecifierSet(specs["torch"][len("torch"):])
    assert Version(pin.group(1)) in torch_range, "the pinned torch is outside the project's range"
    numpy_range = SpecifierSet(specs["numpy"][len("numpy"):])
    assert Version("1.26.4") in numpy_range and Version("2.0.0") not in numpy_range
    runs = " ".join(dockerfile().all_values("RUN"))
    assert "numpy" not in runs, "the Dockerfile installs numpy outside the project's pin"
    recbole = re.search(r'"recbole==([^"]+)"', _makefile())
    assert recbole and args["RECBOLE_VERSION"] == recbole.group(1)


def test_variant_build_arg_selects_cpu_or_cuda() -> None:
    df = dockerfile()
    assert df.global_args.get("VARIANT") == "cpu"
    assert df.final.base == "runtime-${VARIANT}"
    names = {s.name for s in df.stages}
    assert {"runtime-cpu", "runtime-cuda", "builder"} <= names
    torch_run = next(r for r in df.stage("builder").values("RUN") if "TORCH_VERSION" in r)
    for variant in ("cpu", "cuda"):
        assert f"{variant}) index=\"$TORCH_INDEX_URL_{variant.upper()}\"" in torch_run
    assert "NVIDIA_DRIVER_CAPABILITIES" in stage_env(df.stage("runtime-cuda"))


def test_runtime_env_matches_make_run() -> None:
    env = stage_env(dockerfile().final)
    exported = dict(re.findall(r"^export (\w+) := (.*)$", _makefile(), re.M))
    assert exported, "no exports found in the Makefile"
    for key, value in exported.items():
        assert env.get(key) == value.strip(), f"ENV {key}: {env.get(key)!r}, make: {value!r}"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_ld_library_path_is_the_interpreters_libdir_checked_at_build() -> None:
    libdir = stage_env(dockerfile().final)["LD_LIBRARY_PATH"]
    check = next(r for r in dockerfile().stage("builder").values("RUN") if "LIBDIR" in r)
    # the check runs with the final stage's LD_LIBRARY_PATH and compares the libpython it
    # loads with the interpreter's LIBDIR
    assert f"LD_LIBRARY_PATH={libdir} python" in check, check
    assert "INSTSONAME" in check and "/proc/self/maps" in check, check


def test_oci_labels() -> None:
    final = dockerfile().final
    labels = {k: v for label in final.values("LABEL") for k, v in _pairs(label).items()}
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, key
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert stage_args(final)["VERSION"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]


# The container Serve configs are written by a `python -c` snippet in the builder; run it here
# on the repository's local.yaml.
def _config_snippet() -> tuple[str, list[str]]:
    run = next(r for r in dockerfile().stage("builder").values("RUN")
               if "/etc/funnel" in r and "python -c" in r)
    words = shlex.split(run)
    i = words.index("-c")
    return words[i + 1], words[i + 2:]


@cache
def _container_config_names() -> tuple[str, ...]:
    return tuple(sorted(set(re.findall(r"/(\w+)\.yaml'", _config_snippet()[0]))))


def test_container_configs_are_valid_and_match_the_exposed_ports(tmp_path: Path) -> None:
    code, argv = _config_snippet()
    assert argv == ["serve/configs/local.yaml", "/etc/funnel"]
    subprocess.run([sys.executable, "-c", code, str(LOCAL_CONFIG), str(tmp_path)], check=True,
                   timeout=60)
    local_doc, local_args = load_serve_config(LOCAL_CONFIG)
    serve_doc, serve_args = load_serve_config(tmp_path / "serve.yaml")
    triton_doc, triton_args = load_serve_config(tmp_path / "triton.yaml")
    assert _container_config_names() == ("serve", "triton")
    assert serve_doc["http_options"]["host"] == "0.0.0.0"
    assert serve_args.triton.host == "127.0.0.1"  # serve's own Triton stays on loopback
    assert triton_args.triton.host == "0.0.0.0"
    assert serve_args.model_dump() == local_args.model_dump()  # nothing else changed
    assert {**serve_doc, "http_options": local_doc["http_options"]} == local_doc
    triton_doc["applications"][0]["args"]["triton"]["host"] = "127.0.0.1"
    assert triton_doc == serve_doc

    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    drift = root.commands["drift"]
    assert isinstance(drift, typer.core.TyperGroup)
    drift_port = next(p.default for p in drift.commands["watch"].params if p.name == "port")
    t = triton_args.triton
    expected = {serve_doc["http_options"]["port"], serve_doc["grpc_options"]["port"],
                t.http_port, t.grpc_port, t.metrics_port, drift_port}
    exposed = {int(p.split("/")[0]) for e in dockerfile().final.values("EXPOSE")
               for p in e.split()}
    assert exposed == expected
