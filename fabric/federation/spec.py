"""FederationSpec: the members of a federation (URL, operator key, regions) and its own
endpoint, policy and failure handling; a bad file fails at load naming the field."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from fabric.spec import SchedulerSpec, SpecError, _check_name, _field_path, _Strict, read_yaml


class MemberSpec(_Strict):
    """A member fabric: its endpoint's root URL and the operator key its snapshot needs."""

    name: str
    url: str = Field(description="the member's endpoint root, e.g. http://10.0.1.5:8000")
    regions: list[str] = Field(min_length=1, description="the regions this member holds")
    operator_key: str | None = Field(None, description="the member's operator key (prefer "
                                     "operator_key_env: a key in a file is a key in git)")
    operator_key_env: str | None = Field(None, description="environment variable holding it")

    _name = field_validator("name")(_check_name)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url.rstrip("/")

    @field_validator("regions")
    @classmethod
    def _region_names(cls, regions: list[str]) -> list[str]:
        for r in regions:
            _check_name(r)
        return regions

    def key(self) -> str:
        """The operator key (empty: the member serves its snapshot to loopback callers only)."""
        if self.operator_key_env:
            return os.environ.get(self.operator_key_env, "")
        return self.operator_key or ""


class HealthSpec(_Strict):
    timeout_s: float = Field(2.0, gt=0, le=60, description="a snapshot slower than this failed")
    readmit_after: int = Field(3, ge=1, le=100, description="good snapshots in a row before a "
                               "member that was out takes traffic again")


class ListenSpec(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)


class FederationSpec(_Strict):
    name: str = "federation"
    members: list[MemberSpec] = Field(min_length=1)
    listen: ListenSpec = Field(default_factory=ListenSpec)
    tick_s: float = Field(1.0, gt=0, le=60, description="how often every member's snapshot is read")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="the policy run "
                                     "over all members' sites (its tick_s is not used: tick_s is)")
    health: HealthSpec = Field(default_factory=HealthSpec)
    retries: int = Field(2, ge=0, le=10, description="other members tried when one fails "
                         "before answering")
    max_body_mb: float = Field(8.0, gt=0, le=1024)

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _disjoint(self) -> "FederationSpec":
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        held: dict[str, str] = {}
        for m in self.members:
            for r in m.regions:
                if r in held:
                    raise ValueError(f"region {r!r} is held by both {held[r]!r} and {m.name!r}")
                held[r] = m.name
        return self

    def holder(self, region: str) -> MemberSpec | None:
        return next((m for m in self.members if region in m.regions), None)


def parse_federation(data: object, source: str = "<federation>") -> FederationSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a federation spec must be a YAML mapping at the top level")
    try:
        return FederationSpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid federation spec"]
        lines += [f"  {_field_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SpecError("\n".join(lines)) from None


def load_federation(path: str | Path) -> FederationSpec:
    path = Path(path)
    return parse_federation(read_yaml(path, "federation spec"), str(path))
