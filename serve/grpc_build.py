"""Generate the Python gRPC stubs from `serve/protos/` (run by `make install`; also on first
use when they are missing or older than their .proto, e.g. after a plain `pip install`).

Protos are compiled from the repository root, so each generated module records its full
import path (`serve.protos.funnel.v1.feed_pb2`): Ray Serve's gRPC proxy pickles request
messages, and a flat module name would not import in the replica. Generated files are not
committed (.gitignore).

    python -m serve.grpc_build
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = Path(__file__).resolve().parent / "protos"
_lock = threading.Lock()


def _outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2_grpc.py")]


def stale() -> list[Path]:
    """Protos whose stubs are missing or older than the .proto."""
    out = []
    for proto in sorted(PROTOS.rglob("*.proto")):
        gen = _outputs(proto)
        if not all(g.exists() and g.stat().st_mtime >= proto.stat().st_mtime for g in gen):
            out.append(proto)
    return out


def build(*, force: bool = False) -> list[Path]:
    """Compile stale protos (all with `force`); returns the protos compiled."""
    import grpc_tools
    from grpc_tools import protoc

    with _lock:
        todo = sorted(PROTOS.rglob("*.proto")) if force else stale()
        if not todo:
            return []
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={ROOT}",
                f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}",
                *(str(p.relative_to(ROOT)) for p in todo)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[str(p) for p in todo]}")
        for d in {p.parent for p in todo}:  # make every level an importable package
            while d != PROTOS.parent:
                (d / "__init__.py").touch()
                d = d.parent
        return todo


def ensure_stubs() -> None:
    if stale():
        build()


if __name__ == "__main__":
    done = build(force="--force" in sys.argv)
    print(f"generated stubs for {len(done)} proto file(s) under {PROTOS.relative_to(ROOT)}")
