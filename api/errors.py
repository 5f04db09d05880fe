"""Every error leaves the API as {"error": {"code", "message", "param"}}, whatever raised it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from pruning.spec import SpecError, describe_error
from store.datasets import DatasetError, DatasetInUse
from store.jobs import IdempotencyConflict, NotCancellable, NotDeletable
from store.specs import JobCreate
from store.webhooks import TooManyWebhooks

log = logging.getLogger("peftsearch.api")

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "payload_too_large", 422: "invalid_request", 503: "not_ready"}


DESCRIPTIONS = {400: "A body that cannot be parsed (e.g. malformed multipart).",
                401: "Missing, unknown or revoked API key.", 404: "No such resource for this key.",
                409: "Conflicts with the resource's state.", 410: "`expired`: deleted after the retention period.",
                413: "Upload too large.",
                422: "Invalid request: `param` names the field.",
                503: "`unavailable` (the database is down), `overloaded`, or not ready: retry after the "
                     "Retry-After header's seconds."}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
UNAVAILABLE_RETRY_S = 5  # a database restart takes seconds; sooner retries would find it still down


def documented(*statuses: int) -> dict:
    """OpenAPI `responses` for routes that can answer these errors, all with the envelope."""
    from .schemas import ErrorOut

    return {status: {"model": ErrorOut, "description": DESCRIPTIONS[status],
                     **({"headers": RETRY_AFTER} if status == 503 else {})} for status in statuses}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code or CODES[status], param
        self.headers = headers


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "param": param}}, status, headers=headers)


def overloaded() -> JSONResponse:
    """No capacity for this request now (the admission queue, or the database pool): fail fast, say when to retry."""
    return error_response(503, "overloaded", "the server is busy; retry after the Retry-After header's seconds",
                          headers={"Retry-After": "1"})


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method the API serves on this path, from its OpenAPI document (built once, then cached)."""
    from starlette.routing import compile_path

    methods = set()
    for path, operations in app.openapi()["paths"].items():
        if compile_path(path)[0].match(request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def body_model(request: Request) -> type:
    """The model of the request's JSON body (what an unknown field's message lists the known fields of)."""
    body = getattr(request.scope.get("route"), "body_field", None)
    return body.field_info.annotation if body is not None else JobCreate


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return error_response(e.status, e.code, e.message, e.param, e.headers)

    @app.exception_handler(SpecError)
    async def spec_error(_: Request, e: SpecError):
        return error_response(422, "invalid_request", e.message, e.field)

    @app.exception_handler(DatasetError)
    async def dataset_error(_: Request, e: DatasetError):
        return error_response(e.status, CODES[e.status], e.message, e.param)

    @app.exception_handler(IdempotencyConflict)
    async def idempotency_conflict(_: Request, e: IdempotencyConflict):
        return error_response(409, "idempotency_conflict", str(e), "Idempotency-Key")

    @app.exception_handler(NotCancellable)
    async def not_cancellable(_: Request, e: NotCancellable):
        return error_response(409, "not_cancellable", str(e))

    @app.exception_handler(NotDeletable)
    async def not_deletable(_: Request, e: NotDeletable):
        return error_response(409, "not_deletable", str(e))

    @app.exception_handler(DatasetInUse)
    async def dataset_in_use(_: Request, e: DatasetInUse):
        return error_response(409, "dataset_in_use", str(e))

    @app.exception_handler(TooManyWebhooks)
    async def too_many_webhooks(_: Request, e: TooManyWebhooks):
        return error_response(409, "too_many_webhooks", str(e))

    @app.exception_handler(PoolTimeout)
    async def pool_timeout(_: Request, e: PoolTimeout):
        log.warning("no database connection in time: %s", e)
        return overloaded()

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(_: Request, e: Exception):
        log.warning("database unavailable: %s", e)
        return error_response(503, "unavailable", "the database is unavailable; retry after the Retry-After "
                              "header's seconds", headers={"Retry-After": str(UNAVAILABLE_RETRY_S)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            return error_response(422, "invalid_request", f"the body is not valid JSON: {first['ctx']['error']}")
        where = [part for part in first["loc"] if part not in ("body", "query", "path", "header")]
        if first["type"] == "extra_forbidden" and first["loc"][0] == "query":
            return error_response(422, "invalid_request", "unknown query parameter", str(where[-1]))
        param, message = describe_error({**first, "loc": where}, body_model(request))
        return error_response(422, "invalid_request", message, param or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        headers = e.headers
        if e.status_code == 405:  # Starlette's Allow names the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return error_response(e.status_code, CODES.get(e.status_code, "error"), str(e.detail), headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the server log has the details")
