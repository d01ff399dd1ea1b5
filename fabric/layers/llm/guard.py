"""The engine's own guard on fabric hints: a request this replica may not serve is refused
here (400 for a hint that is wrong anywhere, 503 + Retry-After where another site may serve
it once it is up). Pure: no Ray or Serve import."""

from __future__ import annotations

from types import SimpleNamespace

from fabric.routing.pick import (HINT_HEADERS, NoAllowedReplica, Placement, allowed, check_hints,
                                 request_hints)

HINT_HEADER_KEYS = frozenset(h.encode() for h in HINT_HEADERS)  # one pass per request


def hint_headers_in(scope) -> tuple[str, ...]:
    """The X-Fabric-* hint headers an ASGI request carries."""
    return tuple(k.decode() for k, _ in scope.get("headers", ()) if k.lower() in HINT_HEADER_KEYS)


RETRY_NO_CAPACITY_S = 30  # an engine's cold start here: a parked or drained site's way back


def refusal(request: dict, here: Placement, tier: str = "",
            hint_headers: tuple[str, ...] = (), table: dict | None = None
            ) -> tuple | None:
    """The engine's own guard on fabric hints: (status, reason[, retry-after s]) if this replica must not
    serve the request (already parsed; {} for malformed JSON, which the engine answers).
    ``hint_headers``: the X-Fabric-* hint headers the request carries — on a model's own
    endpoint the router never sees headers, so a hint there would be ignored: refused instead.
    ``table``: the routing table last seen (its sites and parked ones), to tell a transient 503
    (a site that may serve it is starting, parked or short of power: Retry-After) from one
    no site of the fabric can ever lift."""
    if hint_headers:
        return 400, (f"{', '.join(hint_headers)}: a model's own endpoint routes on "
                     f"metadata.fabric_* hints only; send them there, or use a gateway "
                     f"(/<region>/v1, or /v1 when the fabric serves several models)")
    hints = request_hints(SimpleNamespace(metadata=request.get("metadata")))
    try:
        check_hints(hints)
    except NoAllowedReplica as exc:
        return 400, str(exc)
    metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
    wanted_tier = metadata.get("fabric_tier", "auto")
    if wanted_tier not in ("auto", "small", "large"):
        return 400, "fabric_tier must be one of auto, small, large"
    if tier and wanted_tier not in ("auto", tier):
        return 400, (f"model {request.get('model')!r} is {tier}-tier but fabric_tier="
                     f"{wanted_tier}: name the model or the tier (model: auto, on a gateway)")
    if allowed(here, hints):
        return None
    wanted = ", ".join(f"{k}={v}" for k, v in (("privacy", hints.privacy), ("region", hints.region))
                       if v not in (None, "none"))
    table = table or {}
    edge = set(table.get("edge_sites", ()))
    sites = [name for name, region in table.get("site_region", {}).items()
             if allowed(Placement(name, region, name in edge), hints)]
    if table and not sites:
        return 503, (f"no capacity allowed for this request ({wanted}): no site of this "
                     f"fabric is there"), None
    parked = [name for name in sites if name in table.get("parked", ())]
    why = f"{', '.join(parked)} parked at low load, starting now" if parked else \
        "starting or short of power"
    return 503, (f"no capacity allowed for this request ({wanted}) is serving now ({why}); "
                 f"retry after {RETRY_NO_CAPACITY_S} s"), RETRY_NO_CAPACITY_S
