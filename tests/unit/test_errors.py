"""One OpenAI error shape for every edge of the fabric."""

import json

from fabric.layers.errors import error_body, openai_error


def test_every_refusal_has_the_openai_shape_and_type():
    for status, type_ in ((400, "BadRequestError"), (402, "PaymentRequiredError"),
                          (403, "PermissionDeniedError"), (429, "RateLimitError"),
                          (405, "MethodNotAllowedError"), (418, "APIError")):
        assert error_body(status, "why") == {"error": {"message": "why", "type": type_,
                                                       "param": None, "code": status}}
    r = openai_error(404, "no such file", None, "file_id", "not_found")
    assert r.status_code == 404
    assert json.loads(r.body)["error"] == {"message": "no such file", "type": "NotFoundError",
                                           "param": "file_id", "code": "not_found"}
    assert error_body(401, "bad key", "AuthenticationError")["error"]["type"] == "AuthenticationError"
