"""Which member serves a request: constraints first (hard), then the table's weights (soft).

Pure. A request pinned to a region (path ``/<region>/v1``, ``metadata.fabric_region`` or the
``x-fabric-region`` header) only ever goes to the member that holds that region; when that
member is out the request gets a 503 that says so, never another region. ``fabric_privacy:
edge`` only goes to members with an edge region. Among the members left, the global routing
table's weights of each member's sites (for the requested model) choose, interleaved by smooth
weighted round robin; the others follow as fallbacks, most weighted first.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabric.federation.members import Member
from fabric.federation.spec import FederationSpec
from fabric.routing.pick import HINT_HEADERS, PRIVACY
from fabric.scheduling.table import SmoothWeightedRoundRobin


class Refused(Exception):
    """The federation answers the request itself: an OpenAI-style error."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass(frozen=True)
class Ask:
    """What a request asks of the federation."""

    model: str | None = None
    region: str | None = None
    privacy: str = "none"
    tier: str | None = None


def ask_of(body: object, headers, path_region: str | None = None) -> Ask:
    """The request's model and hints (header hints count as in a gateway; the body's win)."""
    body = body if isinstance(body, dict) else {}
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    hints = {key: headers.get(header) for header, key in HINT_HEADERS.items()
             if headers.get(header) is not None}
    hints.update({k: v for k, v in metadata.items() if k in HINT_HEADERS.values()})
    region = hints.get("fabric_region")
    if path_region and region not in (None, path_region):
        raise Refused(400, f"this endpoint serves region {path_region!r}; fabric_region="
                      f"{region} asks for another", "invalid_hint", "metadata")
    region = path_region or region
    if region is not None and not isinstance(region, str):
        raise Refused(400, "fabric_region must be a region's name", "invalid_hint", "metadata")
    privacy = hints.get("fabric_privacy", "none")
    if privacy not in PRIVACY:
        raise Refused(400, f"fabric_privacy must be one of {', '.join(PRIVACY)}", "invalid_hint",
                      "metadata")
    if privacy == "region" and region is None:
        raise Refused(400, "fabric_privacy=region needs fabric_region", "invalid_hint", "metadata")
    model, tier = body.get("model"), hints.get("fabric_tier")
    return Ask(model=model if isinstance(model, str) and model else None, region=region or None,
               privacy=privacy, tier=tier if isinstance(tier, str) and tier else None)


class MemberChooser:
    """Orders the members allowed to serve each request (keeps one interleaving per model)."""

    def __init__(self, spec: FederationSpec):
        self.spec = spec
        self._wrr: dict[str, SmoothWeightedRoundRobin] = {}

    def candidates(self, members: list[Member], weights: dict[str, float], ask: Ask) -> list[Member]:
        """The members to try, in order; Refused when none may serve."""
        edge = ask.privacy == "edge"
        if ask.region is not None:
            holder = self.spec.holder(ask.region)
            if holder is None:
                raise Refused(404, f"no member of the federation holds region {ask.region!r} "
                              f"(regions: {', '.join(self._regions())})", "unknown_region",
                              "metadata")
            member = next(m for m in members if m.name == holder.name)
            if not member.usable:
                raise Refused(503, f"region {ask.region!r} is held by member {member.name!r}, "
                              f"which is out of the federation ({member.state}: "
                              f"{member.reason or 'no snapshot yet'}); pinned requests are not "
                              "served elsewhere", "region_unavailable")
            if edge and ask.region not in member.view.edge_regions:
                raise Refused(503, f"fabric_privacy=edge: region {ask.region!r} is not an edge "
                              "region", "no_allowed_site", "metadata")
            return [member]
        fits = [m for m in members if m.view is not None and m.view.serves(ask.model, ask.tier, edge)]
        if edge:
            fits = [m for m in fits if m.view.edge_regions]
        usable = [m for m in fits if m.usable]
        if not usable:
            what = self._what(ask)
            out = [m for m in members if not m.usable]
            if fits or (out and not any(m.view for m in members)):
                reasons = "; ".join(f"{m.name}: {m.state}, {m.reason or 'no snapshot yet'}"
                                    for m in (fits or out))
                raise Refused(503, f"no member can serve {what} now ({reasons})",
                              "no_member_available")
            raise Refused(404, f"no member of the federation serves {what}", "model_not_found",
                          "model")
        share = {m.name: sum(weights.get(s, 0.0) for s in m.view.sites_for(ask.model))
                 for m in usable}
        if not any(share.values()):
            share = {m.name: 1.0 for m in usable}
        key = f"{ask.model}|{ask.tier}|{edge}"
        first = self._wrr.setdefault(key, SmoothWeightedRoundRobin()).pick(
            {k: w for k, w in share.items() if w > 0})
        order = sorted(usable, key=lambda m: (m.name != first, -share[m.name], m.name))
        return order

    def _regions(self) -> list[str]:
        return sorted(r for m in self.spec.members for r in m.regions)

    @staticmethod
    def _what(ask: Ask) -> str:
        parts = [f"model {ask.model!r}" if ask.model and ask.model != "auto" else "the request"]
        if ask.tier and ask.model in (None, "auto"):
            parts.append(f"tier {ask.tier!r}")
        if ask.privacy == "edge":
            parts.append("at the edge")
        return " ".join(parts)
