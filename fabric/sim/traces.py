"""Request arrivals: recorded traces (CSV, Mooncake JSONL) and seeded synthetic generators.

Every source yields ``RequestBatch`` chunks in time order, so a simulation of ten million
requests never holds more than a chunk of them. Tenant and class names become small integer
codes; the source keeps the names (``tenants``, ``classes``).

CSV schema (header row, one request per row, sorted by time):

- ``timestamp_s`` — arrival, seconds from the start of the trace (>= 0, non-decreasing)
- ``prompt_tokens``, ``output_tokens`` — integers >= 0
- optional ``tenant`` and ``class`` (or ``tier``) — free text, e.g. ``acme``, ``interactive``
- optional ``cached_tokens`` — prompt tokens a prefix cache already holds

Public CSV traces are read as they are published, recognised by their header:

- Azure LLM inference traces (Azure/AzurePublicDataset, 2023 and 2024): ``TIMESTAMP`` (a
  datetime; times become seconds from the first row), ``ContextTokens``, ``GeneratedTokens``
- BurstGPT (HPMLL/BurstGPT): ``Timestamp`` (seconds), ``Request tokens``, ``Response tokens``,
  ``Model`` (the class); rows that failed (``Response tokens`` 0) are requests too

Mooncake JSONL (kvcache-ai/Mooncake traces): ``timestamp`` (ms), ``input_length``,
``output_length``, ``hash_ids`` (ids of 512-token prompt blocks; equal ids are a shared
prefix). ``cached_tokens`` is the leading run of blocks seen earlier in the trace × 512, the
most a fabric-wide prefix cache could reuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pydantic import BaseModel, Field

CHUNK = 65_536
MOONCAKE_BLOCK_TOKENS = 512
CSV_REQUIRED = ("timestamp_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class CsvFormat:
    """Where a CSV trace keeps each field (``datetime``: the time column is a datetime)."""

    name: str
    time: str
    prompt: str
    output: str
    klass: str | None = None
    tenant: str | None = None
    cached: str | None = None
    datetime: bool = False


CSV_FORMATS = (
    CsvFormat("fabric", "timestamp_s", "prompt_tokens", "output_tokens", klass="class",
              tenant="tenant", cached="cached_tokens"),
    CsvFormat("azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens", datetime=True),
    CsvFormat("burstgpt", "Timestamp", "Request tokens", "Response tokens", klass="Model"),
)


@dataclass
class RequestBatch:
    """Requests in arrival order, column-wise."""

    t: np.ndarray        # float64 arrival time, s
    prompt: np.ndarray   # int64 prompt tokens
    output: np.ndarray   # int64 output tokens
    cached: np.ndarray   # int64 prompt tokens already in a prefix cache
    tenant: np.ndarray   # int32 code into the source's ``tenants``
    klass: np.ndarray    # int32 code into the source's ``classes``

    def __len__(self) -> int:
        return len(self.t)

    def slice(self, lo: int, hi: int) -> RequestBatch:
        return RequestBatch(*(getattr(self, f)[lo:hi] for f in _FIELDS))

    @staticmethod
    def concat(batches: list[RequestBatch]) -> RequestBatch:
        if len(batches) == 1:
            return batches[0]
        return RequestBatch(*(np.concatenate([getattr(b, f) for b in batches]) for f in _FIELDS))

    @staticmethod
    def empty() -> RequestBatch:
        f8, i8, i4 = np.empty(0), np.empty(0, np.int64), np.empty(0, np.int32)
        return RequestBatch(f8, i8, i8, i8, i4, i4)


_FIELDS = ("t", "prompt", "output", "cached", "tenant", "klass")


class _Codes:
    """Strings → stable small integers, in order of first appearance."""

    def __init__(self, names: list[str]):
        self.names = names
        self._index = {n: i for i, n in enumerate(names)}

    def encode(self, values: list) -> np.ndarray:
        out = np.empty(len(values), np.int32)
        for i, v in enumerate(values):
            key = "" if v is None else str(v)
            code = self._index.get(key)
            if code is None:
                code = self._index[key] = len(self.names)
                self.names.append(key)
            out[i] = code
        return out


class _Checked:
    """Validates order and ranges across chunks, naming the row that breaks them."""

    def __init__(self, source: str):
        self.source, self.last_t, self.rows = source, 0.0, 0

    def __call__(self, batch: RequestBatch) -> RequestBatch:
        for name, col in (("timestamp", batch.t), ("prompt tokens", batch.prompt),
                          ("output tokens", batch.output), ("cached tokens", batch.cached)):
            bad = np.flatnonzero(~(col >= 0))
            if len(bad):
                raise ValueError(f"{self.source}: row {self.rows + bad[0] + 1}: {name} must be >= 0")
        steps = np.diff(batch.t, prepend=self.last_t)
        bad = np.flatnonzero(steps < 0)
        if len(bad):
            raise ValueError(f"{self.source}: row {self.rows + bad[0] + 1}: timestamps must not "
                             "decrease (sort the trace by time)")
        self.rows += len(batch)
        if len(batch):
            self.last_t = float(batch.t[-1])
        return batch


class CsvTrace:
    """A CSV request trace (schema in the module docstring), read in blocks with pyarrow."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: trace file not found")
        self.tenants: list[str] = []
        self.classes: list[str] = []
        self.describe = f"csv:{self.path.name}"

    def batches(self) -> Iterator[RequestBatch]:
        tenants, classes = _Codes(self.tenants), _Codes(self.classes)
        check = _Checked(str(self.path))
        try:
            reader = pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=4 << 20))
        except pa.ArrowException as exc:
            raise ValueError(f"{self.path}: cannot read CSV trace: {exc}") from None
        names = reader.schema.names
        fmt = next((f for f in CSV_FORMATS if {f.time, f.prompt, f.output} <= set(names)), None)
        if fmt is None:
            missing = [c for c in CSV_REQUIRED if c not in names]
            raise ValueError(f"{self.path}: trace is missing column(s) {', '.join(missing)}; "
                             f"columns are {', '.join(names)} (need {', '.join(CSV_REQUIRED)}; "
                             "optional tenant, class or tier, cached_tokens; or an Azure LLM "
                             "inference trace: TIMESTAMP, ContextTokens, GeneratedTokens; or "
                             "BurstGPT: Timestamp, Request tokens, Response tokens)")
        self.describe = f"csv:{self.path.name}" + ("" if fmt.name == "fabric" else f" ({fmt.name})")
        class_col = fmt.klass if fmt.klass in names else ("tier" if "tier" in names else None)
        t0 = None
        for block in reader:
            if fmt.datetime:
                t = self._datetime(block, fmt.time)
                t0 = t[0] if t0 is None and len(t) else t0
                t = t - (t0 if t0 is not None else 0.0)
            else:
                t = self._numeric(block, fmt.time, np.float64)
            yield check(RequestBatch(
                t, self._numeric(block, fmt.prompt, np.int64), self._numeric(block, fmt.output, np.int64),
                self._numeric(block, fmt.cached, np.int64),
                _labels(block, fmt.tenant, tenants), _labels(block, class_col, classes)))

    def _datetime(self, block: pa.RecordBatch, name: str) -> np.ndarray:
        """Seconds since the epoch of a datetime column (ISO 8601, fractions of seconds too)."""
        column = block.column(name)
        if column.null_count:
            raise ValueError(f"{self.path}: column {name!r} has empty values")
        try:
            if not pa.types.is_timestamp(column.type):
                column = pc.cast(column.cast(pa.string()), pa.timestamp("ns"))
            ns = pc.cast(column, pa.timestamp("ns")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowException, ValueError) as exc:
            raise ValueError(f"{self.path}: column {name!r} must hold datetimes: {exc}") from None
        return ns.astype(np.float64) / 1e9

    def _numeric(self, block: pa.RecordBatch, name: str | None, dtype) -> np.ndarray:
        if name is None or name not in block.schema.names:  # an optional column: zeros
            return np.zeros(block.num_rows, dtype)
        column = block.column(name)
        if column.null_count:
            raise ValueError(f"{self.path}: column {name!r} has empty values")
        try:
            return column.to_numpy(zero_copy_only=False).astype(dtype)
        except (ValueError, TypeError, pa.ArrowException):
            raise ValueError(f"{self.path}: column {name!r} must be numeric") from None


def _labels(block: pa.RecordBatch, name: str | None, codes: _Codes) -> np.ndarray:
    if name is None or name not in block.schema.names:
        return codes.encode(["default"] * block.num_rows)
    encoded = pc.dictionary_encode(block.column(name).cast(pa.string()).fill_null(""))
    lookup = codes.encode(encoded.dictionary.to_pylist())
    return lookup[encoded.indices.to_numpy(zero_copy_only=False)]


class MooncakeTrace:
    """A Mooncake JSONL trace (timestamp in ms, input/output lengths, prompt block hashes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: trace file not found")
        self.tenants: list[str] = ["default"]
        self.classes: list[str] = ["default"]
        self.describe = f"mooncake:{self.path.name}"

    def batches(self) -> Iterator[RequestBatch]:
        check = _Checked(str(self.path))
        seen: set[int] = set()
        rows: list[tuple[float, int, int, int]] = []
        with self.path.open() as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    blocks = rec.get("hash_ids") or []
                    run = 0
                    while run < len(blocks) and blocks[run] in seen:
                        run += 1
                    seen.update(blocks)
                    prompt = int(rec["input_length"])
                    rows.append((float(rec["timestamp"]) / 1000.0, prompt, int(rec["output_length"]),
                                 min(prompt, run * MOONCAKE_BLOCK_TOKENS)))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{self.path}: line {number}: not a Mooncake record "
                                     f"(timestamp, input_length, output_length): {exc}") from None
                if len(rows) == CHUNK:
                    yield check(_rows_batch(rows))
                    rows = []
        if rows:
            yield check(_rows_batch(rows))


def _rows_batch(rows) -> RequestBatch:
    t, prompt, output, cached = (np.array(c) for c in zip(*rows))
    zeros = np.zeros(len(rows), np.int32)
    return RequestBatch(t.astype(np.float64), prompt.astype(np.int64), output.astype(np.int64),
                        cached.astype(np.int64), zeros, zeros.copy())


def open_trace(path: str | Path) -> CsvTrace | MooncakeTrace:
    """By extension: ``.jsonl`` / ``.json`` is Mooncake, ``.csv`` is the CSV schema."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return MooncakeTrace(path)
    if suffix == ".csv":
        return CsvTrace(path)
    raise ValueError(f"{path}: unknown trace format {suffix!r} (use .csv or Mooncake .jsonl)")


class SyntheticTrace(BaseModel):
    """Seeded arrivals with lognormal prompt and output lengths.

    ``poisson``: constant rate. ``bursty``: calm and burst periods (exponential lengths),
    ``burst_factor`` × the calm rate during bursts, ``burst_share`` of the time. ``diurnal``:
    rate × (1 + amplitude × sin), peaking at ``peak_s`` of each ``period_s``. Both
    non-constant kinds are drawn by thinning a Poisson process at the peak rate; all have
    mean rate ``rate_per_s``.
    """

    kind: Literal["poisson", "bursty", "diurnal"] = "diurnal"
    requests: int = Field(gt=0)
    rate_per_s: float = Field(gt=0)
    seed: int = 0
    prompt_median: float = Field(1024, gt=0)
    prompt_sigma: float = Field(1.0, ge=0)
    output_median: float = Field(256, gt=0)
    output_sigma: float = Field(0.8, ge=0)
    max_tokens: int = Field(32_768, ge=1)
    period_s: float = Field(86_400, gt=0)
    amplitude: float = Field(0.5, ge=0, lt=1)
    peak_s: float = Field(14 * 3600, ge=0)
    burst_factor: float = Field(4.0, ge=1)
    burst_share: float = Field(0.1, gt=0, lt=1)
    burst_s: float = Field(60.0, gt=0)

    @property
    def tenants(self) -> list[str]:
        return ["default"]

    @property
    def classes(self) -> list[str]:
        return ["default"]

    @property
    def describe(self) -> str:
        return f"{self.kind}: {self.requests:,} requests at {self.rate_per_s:,.1f}/s, seed {self.seed}"

    def mean_tokens(self) -> tuple[float, float]:
        """Mean prompt and output lengths (of the lognormals, before clipping)."""
        return (self.prompt_median * math.exp(self.prompt_sigma ** 2 / 2),
                self.output_median * math.exp(self.output_sigma ** 2 / 2))

    def batches(self) -> Iterator[RequestBatch]:
        rng = np.random.default_rng(self.seed)
        rate = self._rate_fn(rng)
        peak = self._peak_rate()
        t_last, left = 0.0, self.requests
        while left > 0:
            n = min(CHUNK, max(64, int(left * peak / self.rate_per_s * 1.05)))
            t = t_last + np.cumsum(rng.exponential(1.0 / peak, n))
            t_last = float(t[-1])
            if self.kind != "poisson":
                t = t[rng.random(n) * peak < rate(t)]
            t = t[:left]
            left -= len(t)
            k = len(t)
            prompt = self._lengths(rng, self.prompt_median, self.prompt_sigma, k)
            output = self._lengths(rng, self.output_median, self.output_sigma, k)
            zeros = np.zeros(k, np.int32)
            yield RequestBatch(t, prompt, output, np.zeros(k, np.int64), zeros, zeros.copy())

    def _lengths(self, rng, median, sigma, k) -> np.ndarray:
        x = rng.lognormal(math.log(median), sigma, k)
        return np.clip(np.rint(x), 1, self.max_tokens).astype(np.int64)

    def _peak_rate(self) -> float:
        if self.kind == "diurnal":
            return self.rate_per_s * (1 + self.amplitude)
        if self.kind == "bursty":
            return self._calm_rate() * self.burst_factor
        return self.rate_per_s

    def _calm_rate(self) -> float:
        return self.rate_per_s / (1 - self.burst_share + self.burst_share * self.burst_factor)

    def _rate_fn(self, rng):
        if self.kind == "diurnal":
            w = 2 * math.pi / self.period_s
            return lambda t: self.rate_per_s * (1 + self.amplitude * np.cos(w * (t - self.peak_s)))
        if self.kind == "bursty":
            return _Bursts(rng, self._calm_rate(), self.burst_factor, self.burst_s,
                           self.burst_s * (1 - self.burst_share) / self.burst_share)
        return lambda t: np.full(len(t), self.rate_per_s)


class _Bursts:
    """The bursty rate over time: alternating calm and burst periods, drawn as needed."""

    def __init__(self, rng, calm_rate, factor, burst_s, calm_s):
        self.rng, self.calm_rate, self.factor = rng, calm_rate, factor
        self.burst_s, self.calm_s = burst_s, calm_s
        self.edges = [0.0]   # period i spans edges[i]..edges[i+1]; even i calm, odd i burst

    def __call__(self, t: np.ndarray) -> np.ndarray:
        while self.edges[-1] <= t[-1]:
            mean = self.calm_s if len(self.edges) % 2 else self.burst_s
            self.edges.append(self.edges[-1] + self.rng.exponential(mean))
        period = np.searchsorted(np.asarray(self.edges), t, side="right") - 1
        return np.where(period % 2 == 1, self.calm_rate * self.factor, self.calm_rate)
