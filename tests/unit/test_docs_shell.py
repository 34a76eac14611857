"""Shell blocks in the docs are copied and run as they stand: a line that pipes one `funnel`
command into another runs both (`promote | rollback` promotes, then rolls back). Where the
docs mean "one or the other", they must say so on separate lines."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
_PIPE = re.compile(r"(?<!\|)\|(?!\|)")  # a pipe, not `||`


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a ```bash/sh/shell/console/zsh block."""
    out, lang = [], None
    for n, line in enumerate(text.splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            lang = None if lang is not None else (fence[3:].split() or [""])[0].lower()
            continue
        if lang in SHELL:
            out.append((n, line))
    return out


def _is_funnel(segment: str) -> bool:
    words = segment.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=x funnel ...
        words.pop(0)
    return bool(words) and (words[0] == "funnel" or words[0].endswith("/funnel"))


def pipes_funnel_into_funnel(line: str) -> bool:
    code = re.split(r"(?:^|\s)#", line.strip().removeprefix("$ "), maxsplit=1)[0]
    parts = _PIPE.split(code)
    return any(_is_funnel(a) and _is_funnel(b) for a, b in itertools.pairwise(parts))


@pytest.mark.parametrize(("line", "bad"), [
    ("funnel rollout promote ranker | funnel rollout rollback ranker", True),
    ("$ .venv/bin/funnel rollout status --json | FOO=1 funnel rollout apply -", True),
    ("funnel rollout status --json | jq .stages", False),
    ("curl -s 127.0.0.1:8000/metrics | grep funnel_rollout_", False),
    ("funnel rollout promote ranker   # or: | funnel rollout rollback ranker", False),
    ("funnel a || funnel b", False),
])
def test_the_check_tells_a_pipe_between_funnel_commands(line: str, bad: bool) -> None:
    assert pipes_funnel_into_funnel(line) is bad


def test_shell_lines_are_only_those_of_shell_blocks() -> None:
    text = "```bash\nfunnel a\n```\n\nfunnel b\n```yaml\nk: v\n```\n```console\n$ funnel c\n```"
    assert shell_lines(text) == [(2, "funnel a"), (10, "$ funnel c")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_shell_block_pipes_a_funnel_command_into_another(doc: Path) -> None:
    bad = [f"{doc.name}:{n}: {line.strip()}" for n, line in shell_lines(doc.read_text())
           if pipes_funnel_into_funnel(line)]
    assert not bad, "a pipe runs both commands; put alternatives on separate lines:\n" + \
        "\n".join(bad)


def test_the_docs_test_sees_every_shell_block_and_each_skip_says_why(tmp_path: Path) -> None:
    from tests.docs_blocks import all_blocks, shell_blocks

    doc = tmp_path / "x.md"
    doc.write_text("```bash\nfunnel a\n```\n\n<!-- docs-test: skip: cluster only -->\n"
                   "```sh\nhelm install\n```\n<!-- docs-test: server -->\n\n```bash\nmake run\n"
                   "```\n```yaml\nk: v\n```\n")
    got = [(b.line, b.kind, b.why, b.text) for b in shell_blocks(doc)]
    assert got == [(1, "run", "", "funnel a\n"), (6, "skip", "cluster only", "helm install\n"),
                   (11, "server", "", "make run\n")]
    blocks = all_blocks()
    assert any(b.doc.name == "README.md" for b in blocks)
    no_reason = [b.where for b in blocks if b.kind == "skip" and len(b.why) < 10]
    assert not no_reason, f"a skipped block must say why it cannot run here: {no_reason}"
    servers = [b.where for b in blocks if b.kind == "server"]
    assert len(servers) == 1, f"exactly one block starts the server: {servers}"
