"""The shell blocks of README.md and docs/**/*.md, as the docs test runs them.

Every ```bash / ```sh / ```shell / ```console block is run, in document order, against a
live stack (tests/integration/test_docs_walkthrough.py), unless the line just before its
fence says otherwise:

    <!-- docs-test: skip: <why it cannot run here> -->   e.g. cluster only, needs a GPU
    <!-- docs-test: server -->   the block starts the server (`make run`); the test starts
                                 the same `funnel serve` in its place and waits for it
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>skip|server)\s*(?::\s*(?P<why>.*?))?\s*-->$")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int            # of the opening fence, 1-based
    text: str
    kind: str            # run | skip | server
    why: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT).as_posix()}:{self.line}"


def docs() -> list[Path]:
    """README first, then docs/ (top level, then runbooks), each in name order."""
    d = ROOT / "docs"
    return [ROOT / "README.md", *sorted(d.glob("*.md")), *sorted((d / "runbooks").glob("*.md"))]


def shell_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        lang = (fence[3:].split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        if lang in SHELL:
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            m = MARKER.match(lines[k].strip()) if k >= 0 else None
            out.append(Block(doc=doc, line=i + 1, text="\n".join(lines[i + 1:j]) + "\n",
                             kind=m.group("kind") if m else "run",
                             why=(m.group("why") or "") if m else ""))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for d in docs() for b in shell_blocks(d)]
