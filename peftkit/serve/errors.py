"""Every error the server answers with: a status and one JSON shape (OpenAI's), never a traceback.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "texts", "code": 400}}

400 bad JSON or fields · 403 a switched-off feature · 404 unknown adapter or route · 409 name in
use · 413 over a limit · 500 a failure inside the model (that request only; the server goes on).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
         409: "conflict_error", 413: "request_too_large", 500: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
        "code": status}})


def describe(exc: ValidationError, limit: int = 5) -> tuple[str, str | None]:
    """pydantic's errors as one line each: `texts.2: Input should be a valid string`."""
    lines, first = [], None
    for err in exc.errors()[:limit]:
        if err["type"] == "json_invalid":
            return f"the body is not JSON ({err.get('ctx', {}).get('error', err['msg'])})", None
        where = ".".join(str(p) for p in err["loc"]) or "body"
        first = first or where
        lines.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else ""), first


def install(app: FastAPI) -> None:
    from peftkit.errors import PeftkitError

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(PeftkitError)
    async def peftkit_error(request: Request, exc: PeftkitError):
        return error_response(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        hint = "; see GET /v1/models and the README's serve section" if exc.status_code == 404 else ""
        return error_response(exc.status_code, f"{request.method} {request.url.path}: "
                                               f"{exc.detail}{hint}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return error_response(500, f"the model failed on this request ({type(exc).__name__}: "
                                   f"{exc}); other requests are not affected")
