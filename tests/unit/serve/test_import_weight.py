"""The feed's logic, the services and the HTTP edge load without the model runtimes: torch
and faiss come with a bundle (serve.loader), Ray with the Serve deployment. Checked in a
fresh interpreter, since this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = ("serve.pipeline", "serve.services.feed", "serve.services.moderation",
           "serve.services.review", "serve.services.health", "serve.http.asgi",
           "funnel.contracts.bundle", "funnel.contracts.errors", "funnel.contracts.model_io")
HEAVY = ("torch", "faiss", "ray", "tritonclient")


def test_the_feed_logic_services_and_http_edge_import_no_model_runtime_or_ray() -> None:
    code = ("import importlib, json, sys\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            f"print(json.dumps([h for h in {HEAVY!r} if h in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
