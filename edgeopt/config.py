"""What a run is asked to do, typed: the deploy intent (`DeployContext`: where, what hurts, how much accuracy
may go, may we retrain), and the whole run (`RunConfig`: intent + inputs + search + measurement + output),
which is what `--config run.yaml` loads and what every run saves as `out/run.yaml`."""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeopt.errors import ConfigError, one_line
from edgeopt.yamlfile import load_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Bounds on values that would otherwise fail deep inside a run (or hang it). One check per kind, used by the
# run config's validators and by the CLI options outside it, so every entry point refuses with one message.
MAX_THREADS = 1024  # a runtime asked for 100000 threads spends minutes creating them; no CPU has this many cores
MAX_SEED = 2**32 - 1  # numpy's seed range (torch takes more): a larger seed fails when the run starts
# the example input is allocated (random values) to trace the model: 2**28 float32 elements are 1 GiB
MAX_INPUT_ELEMENTS = 2**28


def threads_problem(v: int | None) -> str | None:
    if v is None or 1 <= v <= MAX_THREADS:
        return None
    return (f"must be from 1 to {MAX_THREADS} (this machine has {os.cpu_count()} cores; more threads only "
            f"oversubscribe them), got {v}")


def seed_problem(v: int) -> str | None:
    return None if 0 <= v <= MAX_SEED else f"must be an integer from 0 to {MAX_SEED} (numpy's seed range), got {v}"


CLUSTER_FORMS = "local:N (N local Ray workers) or ray://HOST:PORT (a running Ray cluster)"


def parse_cluster(value: str) -> tuple[str, int | str]:
    """`--cluster`: ("local", N) or ("ray", "ray://HOST:PORT"); a ConfigError naming the forms otherwise."""
    text = str(value).strip()
    if text.startswith("local:") and text[6:].isdigit() and 1 <= int(text[6:]) <= MAX_THREADS:
        return "local", int(text[6:])
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if text.startswith("ray://") and host and "/" not in host and port.isdigit() and 0 < int(port) < 65536:
        return "ray", text
    raise ConfigError(f"--cluster must be {CLUSTER_FORMS}, got {text!r}")


def cluster_problem(v: str | None) -> str | None:
    if v is None:
        return None
    try:
        parse_cluster(v)
    except ConfigError as e:
        return str(e).removeprefix("--cluster ")
    return None


def shape_problem(shape) -> str | None:
    """Why an input shape cannot be used (non-positive dims, or too many elements to allocate), or None."""
    dims = [int(d) for d in shape]
    if not dims or any(d <= 0 for d in dims):
        return f"{','.join(map(str, dims)) or '(empty)'} needs positive dims, batch first, e.g. 1,3,224,224"
    n = math.prod(dims)
    if n > MAX_INPUT_ELEMENTS:
        return (f"{','.join(map(str, dims))} has {n:.3g} elements ({n * 4 / 2**30:.3g} GiB as float32); at most "
                f"{MAX_INPUT_ELEMENTS} (1 GiB) per input, because a random example of it is allocated to trace "
                "the model")
    return None


def positive_finite_problem(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else f"must be a positive finite number, got {v}"


class DeployContext(_Strict):
    """What the user wants of the deployment (the intent). Unknown keys are errors."""

    target: str = "local"
    # latency: batch 1, one request; throughput: images/s under the load of serve_batch and/or streams
    goal: Literal["latency", "size", "throughput"] = "latency"
    max_accuracy_drop: float = Field(1.0, ge=0.0, le=100.0, description="percentage points")
    retrain: bool = False
    # the model may be trained from scratch (implies retrain): pruning at initialisation becomes possible
    from_scratch: bool = False
    latency_budget_ms: float | None = Field(None, gt=0)
    size_budget_mb: float | None = Field(None, gt=0)
    time_budget_s: float | None = Field(None, gt=0)
    # goal throughput: the batch of one request (artifacts then have a dynamic batch axis) and the requests in
    # flight (None: the runtime's choice); latency_budget_ms is then the p99 of one request under that load
    serve_batch: int | None = Field(None, ge=1)
    streams: int | None = Field(None, ge=1, le=1024)
    techniques: list[str] | None = None  # restrict the planner to these techniques
    runtimes: list[str] | None = None  # restrict measurement to these runtimes

    @model_validator(mode="after")
    def _scratch_implies_retrain(self) -> DeployContext:
        if self.from_scratch:
            self.retrain = True
        return self

    @model_validator(mode="after")
    def _throughput_needs_a_load(self) -> DeployContext:
        if self.goal == "throughput" and self.serve_batch is None and self.streams is None:
            raise ValueError("goal throughput needs the load it serves: --batch-size N and/or --streams N "
                             "(serve_batch / streams)")
        return self

    @property
    def serves_batches(self) -> bool:
        """Whether the artifacts need a dynamic batch axis: a throughput goal at a batch above 1."""
        return self.goal == "throughput" and (self.serve_batch or 1) > 1

    @field_validator("max_accuracy_drop")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v:  # NaN
            raise ValueError("must be a number")
        return v


class RunContext(DeployContext):
    """The intent plus the run settings the decisions read (epochs, seed, calibration source, threads,
    sensitivity): what the planner, the search and the selection receive, and what report.json records
    under "context". Built from a RunConfig (`RunConfig.context()`), never written by hand."""

    seed: int = 0
    calib_random: bool = False  # INT8 scales from random inputs (meaningless; marked in the report)
    epochs: int | None = Field(None, ge=1, description="fine-tuning epochs per candidate when retraining is allowed "
                                                     "(None: 2, more on a small training split: about 300 steps)")
    threads: int | None = Field(None, ge=1)
    sensitivity: bool = False
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"

    _seed = field_validator("seed")(classmethod(lambda cls, v: _checked(v, seed_problem)))
    _threads = field_validator("threads")(classmethod(lambda cls, v: _checked(v, threads_problem)))


class DataOptions(_Strict):
    """How a data spec (image folder, module:function) is read and split. Unknown keys are errors."""

    image_size: int | tuple[int, int] | None = None  # default: the model's input size
    # resize the shorter side to `resize`, then center-crop `crop` (default: plain resize to image_size)
    resize: int | None = Field(None, gt=0)
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_split: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    augment: bool = True  # fine-tuning only: random resized crop, + a flip where it keeps the label
    calib_size: int = Field(300, ge=1, description="stratified calibration sample of the training split")
    batch_size: int = Field(32, ge=1)
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes (default 0: main process)")
    masks: str | None = None  # segmentation: a folder of masks with the same file stems as the images

    @field_validator("image_size", "crop")
    @classmethod
    def _positive_size(cls, v):
        if v is not None and any(int(d) <= 0 for d in ((v,) if isinstance(v, int) else v)):
            raise ValueError(f"must be positive sizes (S or H,W), got {v}")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v, info):
        if v is not None and (not v or not all(math.isfinite(x) for x in v)
                              or (info.field_name == "std" and any(x <= 0 for x in v))):
            raise ValueError(f"must be finite numbers{' > 0' if info.field_name == 'std' else ''}, got {v}")
        return v


class InputsConfig(_Strict):
    """The model and the data. `model` None: the model object is passed in memory (Python API)."""

    model: str | None = "demo"
    weights: str | None = None
    trust_pickle: bool = False
    # one input (batch first), or name -> shape for several named inputs
    input_shape: list[int] | dict[str, list[int]] | None = None
    data: str | None = None  # digits | image folder | module:function (None: the demo's digits, or none)
    data_options: DataOptions = Field(default_factory=DataOptions)
    metric: str | None = None  # file.py:fn | module:fn, higher is better in % (None: top1 / miou / fidelity)

    @field_validator("input_shape")
    @classmethod
    def _shape_fits(cls, v):
        for name, shape in (v.items() if isinstance(v, dict) else [("", v)] if v is not None else []):
            problem = shape_problem(shape)
            if problem:
                raise ValueError(f"input shape {name + ':' if name else ''}{problem}")
        return v


class SearchConfig(_Strict):
    epochs: int | None = Field(None, ge=1, description="fine-tuning epochs per candidate when retraining is allowed "
                                                     "(None: 2, more on a small training split: about 300 steps)")
    sensitivity: bool = False  # per-layer pruning sensitivity measured first; sensitive layers pruned less
    # what fine-tuning trains at: "auto" measures it (bfloat16 autocast where a step of the model runs at least
    # 1.25x faster with it, on a processor with bfloat16 arithmetic), "fp32" / "bf16" as given
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # candidates built and screened in parallel on Ray: local:N or ray://HOST:PORT (None: one after another)
    cluster: str | None = None

    _cluster = field_validator("cluster")(classmethod(lambda cls, v: _checked(v, cluster_problem)))


class MeasureConfig(_Strict):
    threads: int | None = Field(None, ge=1)
    bench_time_s: float = Field(10.0, gt=0, allow_inf_nan=False,
                                description="seconds at most for the interleaved measurement")
    seed: int = 0
    calib_random: bool = False
    # URLs of `edgeopt agent`s (one string is one device); their token is never saved in the config
    device: list[str] | None = None
    token_file: str | None = None

    _seed = field_validator("seed")(classmethod(lambda cls, v: _checked(v, seed_problem)))
    _threads = field_validator("threads")(classmethod(lambda cls, v: _checked(v, threads_problem)))

    @field_validator("device", mode="before")
    @classmethod
    def _devices(cls, v):  # one URL (a config saved before fleets) is a fleet of one; none is None
        if isinstance(v, str):
            return [v]
        return v or None


def _checked(v, problem):
    message = problem(v)
    if message:
        raise ValueError(message)
    return v


class OutputConfig(_Strict):
    out_dir: str = "out"
    cache: bool = True  # reuse finished candidates from OUT/cache
    as_json: bool = False  # CLI: print report.json instead of the table
    verbose: bool = False  # CLI: one line per phase of the run (where its wall time went)
    # ONNX/OpenVINO artifacts with a dynamic batch axis; latency is still measured at the example's batch size
    dynamic_batch: bool = False


SECTIONS: dict[str, type[BaseModel]] = {"deploy": DeployContext, "inputs": InputsConfig, "search": SearchConfig,
                                        "measure": MeasureConfig, "output": OutputConfig}
# the flat keyword names of edgeopt.optimize(...) that are not a field name of their section
ALIASES = {"resume": ("output", "cache"), "bench_time": ("measure", "bench_time_s"),
           "time_budget": ("deploy", "time_budget_s"), "json": ("output", "as_json")}


class RunConfig(_Strict):
    """One run, typed. `edgeopt optimize --config run.yaml` loads it; every run saves the one it used."""

    deploy: DeployContext = Field(default_factory=DeployContext)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def context(self) -> RunContext:
        m, s = self.measure, self.search
        return RunContext(**self.deploy.model_dump(), seed=m.seed, calib_random=m.calib_random, epochs=s.epochs,
                          threads=m.threads, sensitivity=s.sensitivity,
                          train_precision=s.train_precision)

    def with_flat(self, **flat: Any) -> RunConfig:
        """A copy with flat keys (`target=`, `epochs=`, `data_options={...}`) set in their sections.
        Unknown keys are errors with did-you-mean; values are validated."""
        doc = self.model_dump()
        for key, value in flat.items():
            section, field = _locate(key)
            if field == "data_options" and isinstance(value, dict):
                value = {**doc["inputs"]["data_options"], **value}
            doc[section][field] = value
        given = flat.get("data_options") if isinstance(flat.get("data_options"), dict) else {}
        if flat.get("serve_batch") and "batch_size" not in given:
            # the served batch is the data batch, as on the CLI: INT8 calibrated at the shape it serves
            doc["inputs"]["data_options"]["batch_size"] = flat["serve_batch"]
        return parse_config(doc)

    def to_yaml(self) -> str:
        note = ("# the model was passed in memory (Python API): set inputs.model to replay this from the CLI\n"
                if self.inputs.model is None else "")
        doc = self.model_dump(mode="json")
        if doc["inputs"]["trust_pickle"]:  # a file never grants trust: replaying needs the flag again
            doc["inputs"]["trust_pickle"] = False
            note += "# this run was trusted to load code (--trust-pickle): pass --trust-pickle again to replay it\n"
        return ("# edgeopt run config; replay: edgeopt optimize --config run.yaml\n" + note
                + yaml.safe_dump(doc, sort_keys=False))


def _locate(key: str) -> tuple[str, str]:
    if key in ALIASES:
        return ALIASES[key]
    for name, section in SECTIONS.items():
        if key in section.model_fields:
            return name, key
    known = sorted([*ALIASES, *(f for s in SECTIONS.values() for f in s.model_fields)])
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown option {key!r}{hint}")


def parse_config(doc: Any, source: str = "") -> RunConfig:
    """Validate a config document (a dict, e.g. read from YAML) into a RunConfig; one-line errors."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of sections "
                          f"({', '.join(SECTIONS)}), got {type(doc).__name__}")
    try:
        return RunConfig(**doc)
    except ValidationError as e:
        raise one_line(e, source or "invalid config", RunConfig) from None


def load_config(path: str | Path) -> RunConfig:
    doc = load_mapping(path, "--config", ConfigError, f"a mapping of sections ({', '.join(SECTIONS)})")
    inputs = doc.get("inputs")
    if isinstance(inputs, dict) and inputs.get("trust_pickle") not in (None, False):
        # a shared run.yaml must not be able to make edgeopt run the code in a pickle or archive
        raise ConfigError(f"--config {path} sets inputs.trust_pickle: trust is never read from a file; remove "
                          "it and pass --trust-pickle on the command line (trust_pickle=True in the Python API)")
    try:
        return parse_config(doc, str(path))
    except RecursionError:  # validation recurses once per level of nesting
        raise ConfigError(f"--config {path} is nested too deeply to read (a run config has two levels)") from None


def make_context(**kwargs) -> RunContext:
    """A RunContext from flat keyword arguments (the decision layer's tests build theirs this way)."""
    try:
        return RunContext(**kwargs)
    except ValidationError as e:
        raise one_line(e, "invalid context", RunContext) from None


class ModelSummary(BaseModel):
    """What the planner may know about a model (filled by analyze)."""

    params: int
    macs: int
    input_shape: list[int]
    num_outputs: int | None = None
    layers: dict[str, int] = Field(default_factory=dict)  # conv, depthwise_conv, linear, attention, norm ...
    linear_macs: int | None = None  # per sample, in Linear layers (None: not counted)
    linear_params: int | None = None
    prunable_groups: int = 0
    min_channels: int | None = None  # narrowest prunable layer
    residual_blocks: int | None = None  # blocks depth pruning can replace by their skip (None: not counted)
    unprunable: list[str] = Field(default_factory=list)  # "layer: reason"
    size_bytes: int = 0
