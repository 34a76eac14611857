"""Every shell block of README.md and docs/**/*.md, run as a user pastes it, in order,
against a live stack (tests/docs_blocks.py says how a block is marked as not runnable here).

The blocks run in one shell session (exported variables and the directory carry over) in a
fresh directory that looks like a checkout after `make install`: the repository's files
linked in, `.venv` included, and `artifacts/` holding the session's tiny bundle. `funnel` is
not on PATH until a block activates `.venv`, as for a new user. The one difference from a
user's machine is `PROFILE=tiny` (the Makefile's documented variable), so that `make run`
serves and `make train` trains the tiny profile in minutes. The server block (`make run`)
runs in the background and is waited for; every other block must exit 0 and print no
API error body.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from funnel.contracts.bundle import point_latest, resolve_bundle
from tests.docs_blocks import ROOT, Block, all_blocks

pytestmark = pytest.mark.integration

LINKED = (".venv", "Makefile", "pyproject.toml", "README.md", "BENCHMARKS.md", "funnel", "serve",
          "training", "monitoring", "benchmarks", "charts", "docs", "tests")
BASE_URL = "http://127.0.0.1:8000"


class Session:
    """One shell session: each block runs in bash with the variables the blocks before it
    set (every assignment exported: `set -a`)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.state = work / ".docs-test-state.sh"
        venv_bin = str(Path(sys.executable).parent)
        path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p != venv_bin)
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "FUNNEL_ADMIN_TOKEN", "RAY_ADDRESS")}
        env.update(PATH=path, PROFILE="tiny", HOME=os.environ.get("HOME", str(work)))
        self.env = env
        self.state.write_text(f"cd {shlex.quote(str(work))}\n")

    def script(self, block: Block, *, save_state: bool) -> str:
        save = f'\nexport -p > {shlex.quote(str(self.state))}\necho "cd $(printf %q "$PWD")" ' \
               f'>> {shlex.quote(str(self.state))}\n' if save_state else "\n"
        return (f"set -a\nsource {shlex.quote(str(self.state))}\nset -eo pipefail\n"
                f"{block.text}{save}")

    def run(self, block: Block, timeout_s: float = 900) -> str:
        r = subprocess.run(["bash", "-c", self.script(block, save_state=True)], cwd=self.work,
                           env=self.env, capture_output=True, text=True, timeout=timeout_s,
                           check=False)
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{block.where} exited {r.returncode}:\n{block.text}\n" \
                                  f"---\n{out[-4000:]}"
        assert '"error":' not in out.replace('"error": null', ""), \
            f"{block.where} got an error answer:\n{block.text}\n---\n{out[-4000:]}"
        return out

    def start_server(self, block: Block, log: Path) -> subprocess.Popen[bytes]:
        """Run the server block in the background; its first lines (the token file) are
        replayed into the session's state so the blocks after it see them."""
        setup = Block(doc=block.doc, line=block.line, kind="run",
                      text="".join(line + "\n" for line in block.text.splitlines()
                                   if not line.strip().startswith("make run")))
        self.run(setup, timeout_s=60)
        with log.open("wb") as f:
            return subprocess.Popen(["bash", "-c", self.script(block, save_state=False)],
                                    cwd=self.work, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def work(tmp_path: Path, tiny_bundle: Path) -> Path:
    w = tmp_path / "checkout"
    w.mkdir()
    for name in LINKED:
        (w / name).symlink_to(ROOT / name)
    bundle = resolve_bundle(tiny_bundle)
    shutil.copytree(bundle, w / "artifacts" / bundle.name, symlinks=True)
    point_latest(w / "artifacts", w / "artifacts" / bundle.name)
    return w


@contextlib.contextmanager
def server(session: Session, block: Block, log: Path) -> Iterator[None]:
    with httpx.Client(timeout=5) as c, contextlib.suppress(httpx.HTTPError):
        c.get(f"{BASE_URL}/healthz")
        pytest.fail(f"something already serves {BASE_URL}: the docs test needs the docs' "
                    "own ports (stop a running `make run`)")
    proc = session.start_server(block, log)
    try:
        deadline = time.monotonic() + 420
        while True:
            assert proc.poll() is None, f"{block.where}: the server exited " \
                                        f"{proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-4000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{BASE_URL}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_every_runnable_shell_block_of_the_docs_works_as_written(work: Path,
                                                                 tmp_path: Path) -> None:
    blocks = all_blocks()
    server_block = next(b for b in blocks if b.kind == "server")
    session = Session(work)
    ran: list[str] = []
    log = tmp_path / "server.log"
    before = [b for b in blocks[:blocks.index(server_block)] if b.kind == "run"]
    assert not before, f"blocks before the server starts: {[b.where for b in before]}"
    with server(session, server_block, log):
        for b in blocks[blocks.index(server_block) + 1:]:
            if b.kind == "run":
                session.run(b)
                ran.append(b.where)
    logged = log.read_text(errors="replace")
    assert "admin routes (/v1/review, /v1/admin/rollout): on" in logged, logged[-3000:]
    assert len(ran) >= 15, ran
    # the walkthrough made its own review item and its own second bundle, and canaried it
    assert (work / "artifacts" / "review-labels.parquet").exists()
    versions = [p.name for p in (work / "artifacts").iterdir()
                if p.is_dir() and not p.is_symlink() and p.name.startswith("v")]
    assert len(versions) >= 2, versions
