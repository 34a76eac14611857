"""/docs works offline: Swagger UI's script, style and icon come from the installed
`swagger-ui-bundle-v2` at /docs/static/..., not from a CDN (a new user's /docs was blank
without internet)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from serve.http.asgi import build_http_app

fastapi_app = build_http_app()  # the routes and docs; no services behind them

ASSETS = "/docs/static"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(fastapi_app)


def _loaded_urls(html: str) -> list[str]:
    return re.findall(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["']([^"']+)["']""", html)


def test_the_docs_page_loads_nothing_from_another_host(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = _loaded_urls(r.text)
    assert not [u for u in urls if re.match(r"(?i)^(https?:)?//", u)], urls
    assert f"{ASSETS}/swagger-ui-bundle.js" in urls and f"{ASSETS}/swagger-ui.css" in urls
    assert "url: '/openapi.json'" in r.text


def test_the_page_follows_the_prefix_the_app_is_mounted_at() -> None:
    from serve.openapi import docs_html

    html = bytes(docs_html(title="Funnel", openapi_url="/openapi.json",
                           root_path="/api/").body).decode()
    assert "/api/docs/static/swagger-ui-bundle.js" in _loaded_urls(html)
    assert "url: '/api/openapi.json'" in html


def test_the_assets_are_served_from_the_installed_package(client: TestClient) -> None:
    from serve.openapi import SWAGGER_ASSETS, swagger_asset

    js = client.get(f"{ASSETS}/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in js.content
    css = client.get(f"{ASSETS}/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for name in SWAGGER_ASSETS:
        path = swagger_asset(name)
        assert path is not None and path.is_file(), name


def test_only_the_listed_assets_are_reachable(client: TestClient) -> None:
    from serve.openapi import swagger_asset

    for name in ("index.html", "..", "__init__.py", "swagger-ui-bundle.js.map"):
        assert swagger_asset(name) is None, name
    r = client.get(f"{ASSETS}/index.html")
    assert r.status_code == 404 and "swagger-ui-bundle.js" in r.json()["detail"]
    assert client.get(f"{ASSETS}/..%2F__init__.py").status_code == 404
