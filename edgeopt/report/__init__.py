"""Report objects (report.json schema_version 1) and their writers. Data only: no backends here."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from edgeopt.config import RunContext

SCHEMA_VERSION = 1


class _Section(BaseModel):
    """A typed report section that still answers `section["key"]` / `.get("key")`, so code and notebooks
    written against report.json's dict form keep working on the objects."""

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return key in (self.model_extra or {}) or (key in type(self).model_fields and getattr(self, key) is not None)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default


class ReportContext(_Section, RunContext):
    """report.json "context": the deploy intent and the run settings the decisions read."""


class ReportTarget(_Section):
    """report.json "target": the target profile the run planned for (every profile field is kept)."""

    model_config = ConfigDict(extra="allow")

    name: str = "?"
    kind: str = "?"
    runtimes: list[str] = Field(default_factory=list)
    precisions: list[str] = Field(default_factory=list)
    detected: bool = False


class Headline(_Section):
    """report.json "model.headline": the chosen model's speedup over the best plain conversion of the original
    (the fastest runtime/precision of the unmodified model within the accuracy budget: what converting alone
    gives) and over the original at fp32 (the baseline), both measured on the same target."""

    chosen: str
    best_plain: str | None = None  # None: no plain conversion of the original was measured within budget
    speedup_vs_best_plain: float | None = None
    fp32: str | None = None  # the baseline: the unmodified model at fp32 on the first runtime
    speedup_vs_fp32: float | None = None
    chosen_is_best_plain: bool = False
    latency_source: str | None = None
    # goal throughput: the plain conversion serving the most images/s under the same load, and the chosen
    # model's images/s over it (the speedups above are of batch-1 latency, goal latency's figure)
    best_plain_throughput: str | None = None
    images_s_vs_best_plain: float | None = None


class TestSplit(_Section):
    """report.json "model.test_split": what the test figures rest on. The search decided on the selection part
    only; the test part was touched once, at the end. `split` "none": the data was too small to split, and
    every accuracy in the report is the one the search optimized on."""

    model_config = ConfigDict(extra="allow")
    __test__ = False  # a report section, not a pytest class

    split: Literal["stratified", "random", "fresh", "none"]
    images: int = 0  # test images
    selection_images: int = 0
    fraction: float | None = None
    seed: int | None = None
    note: str = ""
    chosen: str | None = None
    accuracy_test: float | None = None
    accuracy_drop_test: float | None = None
    ci95: list[float] | None = None  # Wilson 95 % interval of the chosen candidate's test figure, in %
    interval: str = ""  # how the interval was computed, or why there is none


class LatencyCheck(_Section):
    """report.json "model.latency_check": the chosen model measured again after the search, fresh and interleaved
    beside the plain conversions of the original within the budget and the fp32 baseline. Their latency in the
    report is this measurement's; `search_p50` keeps what the search measured (among all candidates), on which
    the choice was made."""

    measured: list[str]
    search_p50: dict[str, float]
    p50: dict[str, float]
    note: str = ""


class ReportModel(_Section):
    """report.json "model": the model's summary (analyze's fields, `info_*` from the loader) and what the run
    learnt about it. Unset fields are left out of the JSON, as before."""

    model_config = ConfigDict(extra="allow")

    source: str | None = None
    input_shape: list[int] | None = None
    params: int | None = None
    macs: int | None = None
    plan: list[dict[str, Any]] | None = None
    plan_notes: list[str] | None = None
    sensitivity: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    cache_hits: int | None = None
    chosen_artifact: str | None = None
    # how an application loads the published model so that it runs as it was measured (e.g. OpenVINO's
    # precision hint): a sentence, then code lines
    load_note: list[str] | None = None
    plot: str | None = None
    bundle: str | None = None
    headline: Headline | None = None
    test_split: TestSplit | None = None
    latency_check: LatencyCheck | None = None
    # where the run's wall time went: seconds per phase (load, analyze, data, reference predictions, plan,
    # build, screen, export per format, verify, evaluate, measure, test split...), "other" for the rest
    profile: dict[str, float] | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class LatencyStats(BaseModel):
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int
    samples_ms: list[float] = Field(default_factory=list, description="per-run latencies, for gates")
    raw_p50: float | None = Field(default=None, description=(
        "median as timed, where the figures above are divided by each round's shared slowdown (models measured "
        "interleaved); None where they are as timed"))


class ThroughputStats(BaseModel):
    """Images per second as a server runs the artifact (a batch per request, several requests in flight), and
    the latency of one request under that load; what the throughput goal ranks by and the gate holds."""

    images_s: float
    p50_ms: float  # one request (one batch) under the load
    p99_ms: float
    batch: int
    streams: int  # requests in flight
    requests: int  # completed in the measurement windows
    window_s: float  # seconds measured in all
    samples_images_s: list[float] = Field(default_factory=list, description="images/s of each window, for gates")
    runtime_settings: dict[str, Any] = Field(default_factory=dict)  # hint, streams, threads per request
    goal: str = "throughput"  # the goal this figure is for (latency_ms is batch 1, one request: goal latency)


class Step(BaseModel):
    technique: str
    params: dict[str, Any] = Field(default_factory=dict)


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    # the model-stage steps' key (candidates sharing it share one model) and the export format; None in a
    # report written before they were recorded
    structure: str | None = None
    format: str | None = None
    steps: list[Step] = Field(default_factory=list)
    status: Literal["ok", "rejected", "failed", "pending"] = "pending"
    reason: str = ""
    # what failed, for a failed candidate: its build, its export, the check of the exported outputs against
    # PyTorch's ("verification": the artifact ran but computed something else), its evaluation, or its artifact's
    # transfer from a cluster node. Rules that act on a kind of failure read this, not the reason's wording
    failure: Literal["build", "export", "verification", "evaluation", "transfer"] | None = None
    params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    size_compressed_bytes: int | None = None  # deflate-compressed artifact (sparse weights compress)
    artifact: str | None = None
    runtime: str | None = None
    precision: str | None = None
    precision_executed: str | None = None
    int8_mac_fraction: float | None = None  # share of MACs the runtime's executed graph runs in int8
    latency_ms: LatencyStats | None = None
    latency_source: Literal["measured", "estimated"] | None = None
    throughput: ThroughputStats | None = None  # goal throughput only: measured under the served load
    accuracy: float | None = None
    accuracy_drop: float | None = None
    # "top1", "miou", "fidelity" or the name of the user's metric: any name a run can score with
    metric: str | None = None
    # every figure measured beside `metric` on the same outputs, e.g. {"map50": .., "map50_95": ..} for boxes
    metrics: dict[str, float] | None = None
    proposed_because: str = ""
    exporter: str | None = None
    verification: dict[str, Any] | None = None
    from_cache: bool = False  # restored from OUT/cache (accuracy/size); latency is always re-measured
    # accuracy/accuracy_drop above are on the selection part of the held-out data (what the search optimized
    # on); these on the test part, which the search never saw (set on the candidates judged at the end)
    accuracy_test: float | None = None
    accuracy_drop_test: float | None = None
    metrics_test: dict[str, float] | None = None
    seconds: dict[str, float] | None = None  # where this candidate's time went: build, export, verify, evaluate...
    # where its structure was built with --cluster: a Ray node and worker process, or "local" (this process)
    built_on: str | None = None
    # measured by agents (--device): the one whose figure is latency_ms (agent, device, runtime, its version),
    # and with devices of several kinds, each kind's figures
    measured_on: dict[str, Any] | None = None
    latency_by_device: dict[str, Any] | None = None
    # where it was exported, verified and evaluated with --cluster: a Ray node and worker process
    exported_on: str | None = None

    @property
    def shipped_bytes(self) -> int | None:
        """The size budgets and the size goal count: compressed when known (what is shipped), else raw."""
        return self.size_compressed_bytes if self.size_compressed_bytes is not None else self.size_bytes


class Decision(BaseModel):
    technique: str
    decision: Literal["applied", "skipped", "rejected", "failed"]
    reason: str


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    edgeopt_version: str
    context: ReportContext
    target: ReportTarget
    environment: dict[str, Any]
    model: ReportModel = Field(default_factory=ReportModel)
    baseline: Candidate | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    chosen: str | None = None
    decisions: list[Decision] = Field(default_factory=list)
    wall_time_s: float | None = None

    def candidate(self, cid: str | None) -> Candidate | None:
        for c in [self.baseline, *self.candidates]:
            if c is not None and c.id == cid:
                return c
        return None

    @property
    def chosen_candidate(self) -> Candidate | None:
        return self.candidate(self.chosen)


def _umask() -> int:
    try:  # Linux exposes it read-only; os.umask can only read it by setting it (racy with threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path | str) -> None:
    """mkstemp creates files 0600 whatever the umask; give a temp file the mode open() would have given it."""
    os.chmod(path, 0o666 & ~_umask())


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (artifacts and images alike); OSError goes to the caller."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file in the same folder and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        honour_umask(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, out_dir: Path) -> Path:
    from edgeopt.report.markdown import to_markdown

    out_dir = Path(out_dir)
    write_atomic(out_dir / "report.md", to_markdown(report))
    path = out_dir / "report.json"
    write_atomic(path, json.dumps(report.model_dump(mode="json"), indent=2))
    return path


def load_report(path: Path) -> Report:
    return Report.model_validate_json(Path(path).read_text())


class BenchmarkResult(BaseModel):
    """What `edgeopt.benchmark` returns: latency plus what it was measured on."""

    artifact: str
    runtime: str
    runtime_version: str
    precision: str
    precision_executed: str
    device: str
    threads: int | None
    input_shape: list[int]
    latency: LatencyStats
    latency_source: Literal["measured", "estimated"] = "measured"
    inputs: dict[str, list[int]] = {}  # every input fed, by name (input_shape is the first one's)
    outputs: list[str] = []
    throughput: ThroughputStats | None = None  # `benchmark --streams`: images/s under that load

    @property
    def p50_ms(self) -> float:
        return self.latency.p50

    @property
    def p90_ms(self) -> float:
        return self.latency.p90

    @property
    def p99_ms(self) -> float:
        return self.latency.p99

    @property
    def mean_ms(self) -> float:
        return self.latency.mean

    @property
    def std_ms(self) -> float:
        return self.latency.std

    @property
    def n(self) -> int:
        return self.latency.n

