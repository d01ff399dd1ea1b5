"""FabricSpec: the typed description of a fabric (regions → sites, models, scheduler, endpoint).

Operators write it as YAML under ``deployments/``. Everything downstream (the local
cluster's node labels, replica placement, the scheduler's regions) is derived from it, so
a bad spec must fail here, at load, with a message naming the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Names become Ray node label values and Serve/actor names: keep them to a safe alphabet.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
REGION_LABEL = "fabric/region"
SITE_LABEL = "fabric/site"
ROLE_LABEL = "fabric/role"
LLM_SLOT_RESOURCE = "fabric_llm_slot"


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} must be lower-case letters, digits and '-' (at most 63)")
    return value


class SiteSpec(_Strict):
    """An AI factory (AIDC). On the local cluster each site is one raylet."""

    name: str
    num_cpus: float = Field(4, gt=0, description="logical CPUs of the site's local raylet")
    llm_slots: int = Field(1, ge=0, description="vLLM replicas this site can host")

    _name = field_validator("name")(_check_name)


class RegionSpec(_Strict):
    name: str
    sites: list[SiteSpec] = Field(min_length=1)

    _name = field_validator("name")(_check_name)


class ModelSpec(_Strict):
    """A served model. ``source`` None means the offline tiny model built on first use."""

    id: str = Field("tiny-llama", min_length=1, description="the name clients put in `model`")
    source: str | None = Field(None, description="Hugging Face id or local path")
    tier: Literal["small", "large"] = "small"
    replicas_per_site: int = Field(1, ge=1)
    max_model_len: int = Field(2048, ge=64)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class SchedulerSpec(_Strict):
    policy: Literal["round_robin"] = "round_robin"
    tick_s: float = Field(0.5, gt=0, le=60)


class EndpointSpec(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class FabricSpec(_Strict):
    name: str = "fabric"
    regions: list[RegionSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec()], min_length=1, max_length=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    endpoint: EndpointSpec = Field(default_factory=EndpointSpec)

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _unique_names(self) -> "FabricSpec":
        regions = [r.name for r in self.regions]
        sites = [s.name for r in self.regions for s in r.sites]
        for kind, names in (("region", regions), ("site", sites)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(dupes)}")
        return self

    @property
    def sites(self) -> list[tuple[str, SiteSpec]]:
        """(region, site) pairs in spec order."""
        return [(r.name, s) for r in self.regions for s in r.sites]

    @property
    def model(self) -> ModelSpec:
        return self.models[0]


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_spec(data: Any, source: str = "<spec>") -> FabricSpec:
    try:
        return FabricSpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid fabric spec"]
        for err in exc.errors():
            lines.append(f"  {_field_path(err['loc'])}: {err['msg']}")
        raise SpecError("\n".join(lines)) from None


def load_spec(path: str | Path) -> FabricSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a fabric spec must be a YAML mapping at the top level")
    return parse_spec(data, str(path))


def default_spec_path() -> Path:
    return Path(__file__).resolve().parent.parent / "deployments" / "local.yaml"
