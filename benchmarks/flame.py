"""Summaries of py-spy's collapsed stacks (`py-spy record --format raw`): the top frames by
own and by inclusive samples, as a table for BENCHMARKS.md.

Pure text processing: a line is `frame;frame;...;frame COUNT`, outermost frame first, each
frame `function (path:line)`. Frames are merged per function (the line dropped) and paths
are shortened to the project's or a package's relative path, so two runs compare.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
_ROOTS = ("site-packages/", "lib/python3.11/", "/serve/", "/training/", "/benchmarks/",
          "/funnel/", "/monitoring/")


def short_path(path: str) -> str:
    """`serve/pipeline.py`, `numpy/core/fromnumeric.py`, `asyncio/events.py`: the part a
    reader recognises, with no machine's directories."""
    path = "/" + path.lstrip("/")
    for root in _ROOTS:
        k = path.rfind(root)
        if k >= 0:
            tail = path[k + len(root):]
            return tail if root.endswith("/") and not root.startswith("/") else \
                root.strip("/") + "/" + tail
    return path.rsplit("/", 1)[-1]


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group('func')} ({short_path(m.group('path'))})"


@dataclass(frozen=True)
class Summary:
    samples: int  # samples that passed the filter
    own: list[tuple[str, int]]  # frames by samples where they were the innermost, most first
    inclusive: list[tuple[str, int]]  # frames by samples they appear in, most first


def summarise(lines: Iterable[str], *, within: tuple[str, ...] | None = None,
              top: int = 15) -> Summary:
    """Top frames of the stacks that contain a frame whose name includes one of `within`
    (all stacks when None), counted from the outermost such frame inwards."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for raw in lines:
        raw = raw.rstrip("\n")
        if not raw.strip():
            continue
        stack, _, count = raw.rpartition(" ")
        if not count.isdigit():
            raise ValueError(f"not a collapsed-stack line (no trailing count): {raw[:80]!r}")
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if within is not None:
            hit = next((k for k, f in enumerate(frames) if any(w in f for w in within)),
                       None)
            if hit is None:
                continue
            frames = frames[hit:]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return Summary(total, own.most_common(top), incl.most_common(top))


def markdown(s: Summary, *, per_request: float | None = None) -> str:
    """Two tables: own and inclusive share of the samples (and ms per request when
    `per_request` gives the CPU ms per request the samples stand for)."""
    def rows(pairs: list[tuple[str, int]]) -> list[str]:
        out = []
        for name, n in pairs:
            share = n / s.samples if s.samples else 0.0
            ms = f" | {share * per_request:.2f}" if per_request is not None else ""
            out.append(f"| `{name}` | {share:.1%}{ms} |")
        return out

    unit = " | ms/feed" if per_request is not None else ""
    sep = "|---|---|---|" if per_request is not None else "|---|---|"
    return "\n".join([f"| frame (own time) | share{unit} |", sep, *rows(s.own), "",
                      f"| frame (inclusive) | share{unit} |", sep, *rows(s.inclusive)])
