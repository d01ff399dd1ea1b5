"""The OpenAI error shape, defined once: a refusal looks the same to a client whichever edge
of the fabric (gateway, engine middleware, Batch API, tenants' API) sends it, and the official
clients raise the matching typed error."""

from __future__ import annotations

TYPES = {400: "BadRequestError", 401: "AuthenticationError", 402: "PaymentRequiredError",
         403: "PermissionDeniedError", 404: "NotFoundError", 405: "MethodNotAllowedError",
         409: "ConflictError", 413: "RequestTooLargeError", 429: "RateLimitError",
         503: "ServiceUnavailableError"}


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or TYPES.get(status, "APIError"),
                      "param": param, "code": code or status}}


def openai_error(status: int, message: str, type_: str | None = None, param: str | None = None,
                 code: str | int | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(status, message, type_, param, code), status_code=status)
