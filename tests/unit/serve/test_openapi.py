"""The OpenAPI document: every route the ingress serves is described (body, parameters,
responses), and every `$ref` resolves."""

from __future__ import annotations

import json
from typing import Any

from fastapi.openapi.utils import get_openapi

from serve.http.asgi import build_http_app
from serve.openapi import ROUTES, build

fastapi_app = build_http_app()  # the routes and docs; no services behind them


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_served_route_is_documented_in_full() -> None:
    # FastAPI's own document lists every route the app serves (whatever it can infer)
    auto = get_openapi(title="t", version="1", routes=fastapi_app.routes)["paths"]
    served = {(path, method) for path, ops in auto.items() for method in ops}
    assert len(served) >= 17
    assert served == set(ROUTES), served ^ set(ROUTES)
    doc = build(fastapi_app)
    for (path, method), op in ROUTES.items():
        entry = doc["paths"][path][method]
        assert entry["responses"], (path, method)
        assert ("requestBody" in entry) == (op.body is not None)
        for p in entry.get("parameters", ()):
            if p["in"] == "path":
                assert "{" + p["name"] + "}" in path
    admin = [k for k, op in ROUTES.items() if op.admin]
    assert ("/v1/admin/rollout", "put") in admin and ("/v1/review", "get") in admin
    for k in admin:
        assert doc["paths"][k[0]][k[1]]["security"] == [{"bearer": []}, {"basic": []}]


def test_every_reference_resolves() -> None:
    doc = build(fastapi_app)
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[-1] in schemas, ref
    json.dumps(doc)  # serialisable as served
    body = doc["paths"]["/v1/feed"]["post"]["requestBody"]["content"]["application/json"]
    feed = schemas[body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert feed["properties"]["limit"]["maximum"] == 200
    assert "user_id" in feed["required"]
