"""The web dashboard at `/` and the OpenAPI page at `/docs`, both served from files inside the installed packages:
nothing is fetched from a CDN, so both work on a machine without internet.

The dashboard is static (static/index.html, app.js, app.css: vanilla JS, no build step) and talks to the public
/v1 API only, with the key the user pastes. Swagger UI 5 and ReDoc come from the `fastapi-offline` wheel's assets;
FastAPI's own /docs and /redoc pages (which load them from a CDN) are replaced by pages pointing at local copies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
STATIC_URL, DOCS_STATIC_URL = "/static/dashboard", "/static/docs"
NO_CACHE = {"Cache-Control": "no-cache"}  # the page is tiny; a new release must not run an old app.js
REDOC_IMAGES = "img-src 'self' data:"


def docs_assets() -> Path:
    """swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png (PyPI: fastapi-offline)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the API needs the fastapi-offline package for its /docs assets (pip install fastapi-offline)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install(app: FastAPI) -> None:
    """Serve the dashboard at `/` and offline /docs and /redoc on `app`."""
    local = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in local]
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="dashboard-static")
    app.mount(DOCS_STATIC_URL, StaticFiles(directory=docs_assets()), name="docs-static")
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=FileResponse)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)

    if app.docs_url:
        @router.get(app.docs_url, response_class=HTMLResponse)
        def swagger_ui() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url=app.openapi_url, title=f"{app.title} - API",
                oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
                swagger_js_url=f"{DOCS_STATIC_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{DOCS_STATIC_URL}/swagger-ui.css",
                swagger_favicon_url=f"{DOCS_STATIC_URL}/favicon.png",
                swagger_ui_parameters=app.swagger_ui_parameters)

        if app.swagger_ui_oauth2_redirect_url:
            @router.get(app.swagger_ui_oauth2_redirect_url, response_class=HTMLResponse)
            def swagger_ui_redirect() -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

    if app.redoc_url:
        @router.get(app.redoc_url, response_class=HTMLResponse)
        def redoc() -> HTMLResponse:
            page = get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                                  redoc_js_url=f"{DOCS_STATIC_URL}/redoc.standalone.js",
                                  redoc_favicon_url=f"{DOCS_STATIC_URL}/favicon.png", with_google_fonts=False)
            # ReDoc's bundle shows its maker's logo from a CDN: the browser is told to load images from here only
            page.headers["Content-Security-Policy"] = REDOC_IMAGES
            return page

    app.include_router(router)
