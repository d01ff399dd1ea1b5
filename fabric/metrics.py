"""The fabric's metrics, through ``ray.util.metrics``: each node's metrics agent exports them
on its Prometheus endpoint as ``ray_fabric_*`` (Ray adds the prefix, and ``_total`` to
counters), next to Ray's own and vLLM's ``ray_vllm_*``. deployments/grafana/ draws them.

Two recorders, created once per process where the numbers are born: ``EngineMetrics`` in each
engine replica (every request's usage record) and each gateway (the requests it refuses itself,
as site ``-`` and model ``-``: a requested model name is client input, not a label),
``SiteMetrics`` in the scheduler (each tick's signals and routing table). Tag values are strings; every tag is set at record time.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
REFUSAL_REASONS = {400: "bad_request", 401: "unauthenticated", 402: "budget", 403: "forbidden",
                   404: "unknown_model", 413: "too_large", 422: "bad_request", 429: "rate_limit",
                   503: "no_allowed_site"}
ENGINE_TAGS = ("region", "site", "model")


def refusal_reason(status: int) -> str:
    return REFUSAL_REASONS.get(status, f"http_{status}")


class EngineMetrics:
    """Per engine replica: tokens, requests, refusals, TTFT/latency, queue depth, energy.

    A request only adds to in-process sums (a dict update, no call into Ray's metrics
    recorder); ``flush`` hands them over once per report tick: one ``inc`` per counter and tag
    set, the last value per gauge, the tick's TTFT and latency observations. Prometheus
    scrapes every few seconds, so nothing a scrape can see is lost or late by more than a tick."""

    def __init__(self, region: str, site: str, model: str):
        self.tags = {"region": region, "site": site, "model": model}
        tenant_tags = (*ENGINE_TAGS, "tenant")
        self.tokens = Counter("fabric_tokens_generated", "completion tokens generated", tenant_tags)
        self.prompt_tokens = Counter("fabric_prompt_tokens", "prompt tokens processed", tenant_tags)
        self.requests = Counter("fabric_requests", "generation requests answered, by status",
                                (*tenant_tags, "status"))
        self.refused = Counter("fabric_requests_refused", "requests refused, by reason",
                               (*ENGINE_TAGS, "reason"))
        self.ttft = Histogram("fabric_ttft_seconds", "time to first token", LATENCY_BUCKETS_S, ENGINE_TAGS)
        self.latency = Histogram("fabric_latency_seconds", "request latency", LATENCY_BUCKETS_S, ENGINE_TAGS)
        self.queue = Gauge("fabric_queue_depth", "requests running or waiting on the replica", ENGINE_TAGS)
        self.energy = Counter("fabric_energy_joules", "attributed facility energy", ENGINE_TAGS)
        self.energy_per_token = Gauge("fabric_energy_per_token_joules",
                                      "attributed energy per token of the last request", ENGINE_TAGS)
        self.carbon = Counter("fabric_carbon_grams", "attributed CO2", ENGINE_TAGS)
        self._sums: dict[tuple, list] = {}      # (counter, tag values) -> [counter, tags, sum]
        self._gauges: dict[int, tuple] = {}     # id(gauge) -> (gauge, value): the last one
        self._observed: list[tuple] = []        # (histogram, value) since the last flush

    def _add(self, counter, tags: dict, value: float) -> None:
        key = (id(counter), *tags.values())
        entry = self._sums.get(key)
        if entry is None:
            self._sums[key] = [counter, tags, value]
        else:
            entry[2] += value

    def queue_depth(self, inflight: int) -> None:
        self._gauges[id(self.queue)] = (self.queue, inflight)

    def observe(self, record: dict, inflight: int | None) -> None:
        """One usage record (fabric.metering.records): served or refused. ``inflight``: the
        replica's queue depth now (None where there is no queue: a gateway's refusals)."""
        tags, status = self.tags, int(record["status"])
        tenant = {**tags, "tenant": record.get("tenant") or "-"}
        self._add(self.requests, {**tenant, "status": str(status)}, 1)
        if inflight is not None:
            self.queue_depth(inflight)
        if status != 200:
            self._add(self.refused, {**tags, "reason": refusal_reason(status)}, 1)
            return
        if record["completion_tokens"]:
            self._add(self.tokens, tenant, record["completion_tokens"])
        if record["prompt_tokens"]:
            self._add(self.prompt_tokens, tenant, record["prompt_tokens"])
        self._observed += [(self.ttft, max(0.0, record["ttft_s"])),
                           (self.latency, max(0.0, record["latency_s"]))]
        if record["energy_j"] > 0:
            self._add(self.energy, tags, record["energy_j"])
            tokens = record["prompt_tokens"] + record["completion_tokens"]
            if tokens:
                self._gauges[id(self.energy_per_token)] = (self.energy_per_token,
                                                           record["energy_j"] / tokens)
        if record["carbon_g"] > 0:
            self._add(self.carbon, tags, record["carbon_g"])

    def flush(self) -> int:
        """Hand what requests added since the last flush to Ray's recorder; returns how many
        recorder calls that took."""
        sums, gauges, observed = self._sums, self._gauges, self._observed
        self._sums, self._gauges, self._observed = {}, {}, []
        for counter, tags, total in sums.values():
            counter.inc(total, tags=tags)
        for gauge, value in gauges.values():
            gauge.set(value, tags=self.tags)
        for histogram, value in observed:
            histogram.observe(value, tags=self.tags)
        return len(sums) + len(gauges) + len(observed)


class SiteMetrics:
    """In the scheduler, each tick: layers 1-3 signals per site, and the routing table."""

    def __init__(self) -> None:
        site = ("region", "site")
        self.power = Gauge("fabric_site_power_watts", "facility power draw (IT x PUE)", (*site, "source"))
        self.budget = Gauge("fabric_site_power_budget_watts", "grid power budget now", site)
        self.headroom = Gauge("fabric_site_headroom_watts", "budget - draw (negative: shed)", site)
        self.price = Gauge("fabric_site_price_usd_per_mwh", "energy price now", site)
        self.carbon = Gauge("fabric_site_carbon_g_per_kwh", "grid carbon intensity now", site)
        self.curtailed = Gauge("fabric_site_curtailed", "1 while a curtailment event runs", site)
        self.weight = Gauge("fabric_routing_weight", "share of new traffic the table gives the site", site)
        self.version = Gauge("fabric_routing_table_version", "version of the current routing table", ())
        self.shifted = Counter("fabric_traffic_shifted", "traffic share moved between sites by "
                               "table changes (1 = all traffic once)", ())
        self.shifted_tick = Gauge("fabric_traffic_shifted_last_tick", "traffic share the last "
                                  "table change moved", ())
        self._shares: dict[str, float] = {}

    def observe(self, states: list[dict], weights: dict[str, float], version: int,
                groups: dict[str, str] | None = None) -> float:
        """Record one tick; returns the traffic share shifted since the last tick. Shares are
        within each site's group (``groups``: site -> the model it serves): a model's sites
        share that model's traffic."""
        for st in states:
            tags = {"region": st["region"], "site": st["site"]}
            self.power.set(st["facility_power_w"], tags={**tags, "source": str(st.get("power_source", "model"))})
            self.budget.set(st["budget_w"], tags=tags)
            self.headroom.set(st["headroom_w"], tags=tags)
            self.price.set(st["price_usd_per_mwh"], tags=tags)
            self.carbon.set(st["carbon_g_per_kwh"], tags=tags)
            self.curtailed.set(1.0 if st["curtailed"] else 0.0, tags=tags)
        groups = groups or {}
        totals: dict[str, float] = {}
        for site, w in weights.items():
            totals[groups.get(site, "")] = totals.get(groups.get(site, ""), 0.0) + w
        shares = {s: (w / totals[groups.get(s, "")] if totals[groups.get(s, "")] else 0.0)
                  for s, w in weights.items()}
        n_groups = max(1, len(totals))
        regions = {st["site"]: st["region"] for st in states}
        for site, share in shares.items():
            self.weight.set(share, tags={"region": regions.get(site, "-"), "site": site})
        shifted = 0.0
        if self._shares:
            shifted = sum(max(0.0, shares.get(s, 0.0) - self._shares.get(s, 0.0))
                          for s in set(shares) | set(self._shares)) / n_groups
            if shifted > 0:
                self.shifted.inc(shifted)
        self.shifted_tick.set(shifted)
        self._shares = shares
        self.version.set(float(version))
        return shifted
