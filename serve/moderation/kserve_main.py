"""Serve the moderation models under KServe's own `ModelServer` (no Ray).

    python -m serve.moderation.kserve_main --bundle artifacts/latest \\
        [--http-port 8080] [--grpc-port 8081]

The same `TextModerationModel` / `ImageModerationModel` classes the Serve graph batches,
here behind KServe's REST V1 (`/v1/models/<name>:predict`), REST V2 / Open Inference
Protocol (`/v2/models/<name>/infer`) and gRPC V2 endpoints, as in an InferenceService with
a custom predictor image. Models: `moderation_text`, `moderation_image`.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m serve.moderation.kserve_main",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--bundle", default="artifacts/latest", help="bundle with the text head")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--intra-op-threads", type=int, default=1)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # kserve parses sys.argv when imported (module-level argparse); hand it none of ours
    sys.argv = sys.argv[:1]
    import kserve

    from funnel.contracts.errors import FunnelError
    from serve.moderation.models import ImageModerationModel, TextModerationModel

    text = TextModerationModel(bundle=a.bundle, intra_op_threads=a.intra_op_threads)
    image = ImageModerationModel(intra_op_threads=a.intra_op_threads)
    try:
        text.load()
        image.load()
    except FunnelError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    kserve.ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=1,
                       enable_grpc=True).start([text, image])


if __name__ == "__main__":
    main()
