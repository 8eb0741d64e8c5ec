"""Latency lookup table: each conv/linear layer's latency at candidate input/output widths, measured on
the runtime (ONNX Runtime or OpenVINO, one layer per session), so channel allocation can predict what a
pruned model costs on this target instead of assuming MACs or a fixed rounding multiple.

A layer is timed alone (conv + ReLU; BN folds into the conv at export) at a grid of widths; widths in between
are interpolated bilinearly. Entries are cached on disk under the cache dir by (target fingerprint, runtime,
precision, layer signature), so building the table again for the same or a similar model measures nothing.

A layer timed alone costs more than inside its model: each session pays a fixed call cost, and a whole model
fuses ops and runs pooling, adds and BN the layers' sum leaves out. So the sum is not used as a latency but as
a shape: predicted(widths) = c0 + (measured whole model - c0) x S(widths) / S(original), S being the sum of
the layers' entries less the call cost c0 each (c0 measured on an empty graph). Allocation only compares
predictions, so this calibration changes the reported milliseconds, not the widths chosen.

INT8 (`precision="int8"`): a layer's INT8 latency is its fp32 grid times the int8/fp32 ratio measured at a
few widths on the layer's diagonal (INT8_FRACTIONS): quantizing one layer through NNCF takes about a second,
too slow to do at every grid point (resnet18 at 224 would need minutes). The ratio is interpolated over the
width fraction sqrt(cin/cin0 x cout/cout0).

Batch (`batch`, the table's batch column): every layer, the whole model and the calibration are timed at this
batch, the served batch under goal throughput (decide/serving.py). At batch 1 a layer's time is largely what
each call and layer costs whatever its width; at a large batch the multiply-adds dominate, so a table measured
at batch 1 would send a throughput model's pruning to the wrong layers. The batch is in each entry's cache key
(a conv's signature holds its input's batch, a linear's its rows); fewer runs are taken at a large batch,
whose calls are long and steadier."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgeopt.errors import TimeBudgetError
from edgeopt.formats import layer_timing_runtimes
from edgeopt.inputs.model_io import Inputs
from edgeopt.measure.layer_sessions import PRECISIONS, call_overhead_ms, layer_inputs, make_layer, runner, time_ms
from edgeopt.timeout import deadline_passed

FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # width grid, as fractions of the original width
INT8_FRACTIONS = (1.0, 0.5)  # where the int8/fp32 ratio is measured (diagonal of the grid): ~1 s per point
RUNTIMES = layer_timing_runtimes()


def cache_root() -> Path:
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeopt")
    return Path(base) / "lut"


def fingerprint(runtime: str, threads: int) -> str:
    """What a latency depends on besides the layer: CPU model, threads, runtime version."""
    from edgeopt.targets import cpu_model

    try:
        import importlib.metadata as md

        version = md.version("onnxruntime" if runtime == "onnxruntime" else "openvino")
    except Exception:  # a runtime without metadata still gets a (less specific) key
        version = "?"
    text = json.dumps([cpu_model(), platform.machine(), threads, runtime, version])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def signature(layer: nn.Module, in_shape: tuple[int, ...]) -> dict:
    """The layer's shape-defining attributes without its widths (the table's axes)."""
    if isinstance(layer, nn.Linear):
        return {"kind": "linear", "rows": int(torch.Size(in_shape[:-1]).numel())}
    return {"kind": "dwconv" if layer.groups > 1 and layer.groups == layer.in_channels else "conv",
            "k": list(layer.kernel_size), "s": list(layer.stride), "p": list(layer.padding),
            "d": list(layer.dilation), "hw": list(in_shape[-2:]), "n": in_shape[0]}


@dataclass
class LatencyTable:
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    threads: int = 1
    runs: int = 20
    cache_dir: Path | None = None
    measured: int = 0  # layer configurations and whole models timed by this table (cache misses)
    hits: int = 0
    layers: dict[str, dict] = field(default_factory=dict)  # name -> {"sig", "cin", "cout", "grid"[, "ratio"]}
    call_ms: float = 0.0  # c0: one inference call's fixed cost on this runtime
    whole_ms: float | None = None  # the whole original model measured at the table's precision
    fit: tuple[float, float] | None = None  # (a, b): whole-model latency = a + b x S, from `calibrate`
    points: list[tuple[float, float]] = field(default_factory=list)  # (S, measured ms) the fit was made on
    batch: int = 1  # every time in the table is of one call at this batch (the served batch: the batch column)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"latency table runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"latency table precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch < 1:
            raise ValueError(f"latency table batch must be at least 1, got {self.batch}")
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else cache_root()
        self._fp = fingerprint(self.runtime, self.threads)
        # (layer, cin, cout) -> layer_ms: an allocation predicts the whole model thousands of times over the
        # same widths (SSDlite: 450,000 interpolations, 10 s); emptied where a row changes
        self._ms: dict[tuple[str, int, int], float] = {}

    @property
    def runs_per_entry(self) -> int:
        """Runs per median: fewer at a large batch, whose long calls vary less relative to their length."""
        return self.runs if self.batch == 1 else max(5, round(self.runs / math.sqrt(self.batch)))

    # ------------------------------------------------------------------ measurement and cache
    def _path(self, sig: dict, precision: str | None = None) -> Path:
        key = hashlib.sha256(json.dumps([self._fp, self.runtime, precision or self.precision, sig], sort_keys=True)
                             .encode()).hexdigest()[:24]
        return self.cache_dir / f"{key}.json"

    def entry(self, sig: dict, cin: int, cout: int, precision: str = "fp32") -> float:
        """Latency (ms) of the layer at exactly (cin, cout) and `precision`: from the cache, else measured
        and stored."""
        path = self._path(sig, precision)
        try:
            store = json.loads(path.read_text())
        except (OSError, ValueError):
            store = {}
        k = f"{cin}x{cout}"
        if k in store:
            self.hits += 1
            return float(store[k])
        if deadline_passed():  # the entries measured so far stay on disk: the next run starts from them
            raise TimeBudgetError(f"the time ran out while measuring the {self.runtime} latency table: "
                                  f"{self.measured} entries measured, kept on disk for the next run")
        with tempfile.TemporaryDirectory() as tmp:
            if sig["kind"] == "null":
                ms = call_overhead_ms(self.runtime, self.threads, self.runs, Path(tmp))
            else:
                model, x = make_layer(sig, cin, cout)
                ms = time_ms(runner(model, x, self.runtime, self.threads, Path(tmp), precision),
                             runs=self.runs_per_entry)
        self.measured += 1
        store[k] = ms
        _write_atomic(path, store)
        return ms

    def build(self, model: nn.Module, example: torch.Tensor, fractions=FRACTIONS, whole: bool = True
              ) -> LatencyTable:
        """Measure every conv/linear of `model` on the width grid (fp32; INT8 as fp32 x measured ratio), the
        call cost, and (`whole`) the whole model at the table's precision for calibration; all at the table's
        batch (`example` is repeated along its first axis to it)."""
        example = at_batch(example, self.batch)
        for name, (layer, shape) in layer_inputs(model, example).items():
            sig = signature(layer, shape)
            cin = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            cout = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            ins = _grid(cin, fractions)
            outs = ins if sig["kind"] == "dwconv" else _grid(cout, fractions)
            grid = {(ci, co): self.entry(sig, ci, co) for ci in ins for co in outs
                    if sig["kind"] != "dwconv" or co == ci}
            row = {"sig": sig, "cin": cin, "cout": cout, "batch": self.batch}
            if self.precision == "int8":
                row["ratio"] = self._int8_ratios(sig, cin, cout, fractions)
                grid = {(ci, co): v * _ratio_at(row, ci, co) for (ci, co), v in grid.items()}
            row["grid"] = _monotone(grid)
            self.layers[name] = row
            self._ms.clear()
        self.call_ms = self.entry({"kind": "null"}, 0, 0)
        self.whole_ms = self._whole(model, example) if whole else None
        return self

    def _int8_ratios(self, sig: dict, cin: int, cout: int, fractions) -> list[tuple[float, float]]:
        """[(width fraction, int8/fp32 latency)] measured on the diagonal of the grid."""
        out = []
        for f in INT8_FRACTIONS:
            ci, co = _grid(cin, (f,))[0], _grid(cout, (f,))[0]
            co = ci if sig["kind"] == "dwconv" else co
            fp = self.entry(sig, ci, co)
            q = self.entry(sig, ci, co, "int8")
            out.append((math.sqrt(ci / cin * co / cout), max(q, 1e-6) / max(fp, 1e-6)))
        return sorted(set(out))

    def _whole(self, model: nn.Module, example: torch.Tensor) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            fn = runner(model, at_batch(example, self.batch), self.runtime, self.threads, Path(tmp), self.precision)
            # the least of three medians: other load on the machine only ever adds time
            return min(time_ms(fn, runs=self.runs_per_entry) for _ in range(3))

    def rows(self) -> list[dict]:
        """The table as rows: each layer at its original widths, with the batch its time is for (ms of one
        call of the layer alone, less nothing: what `layer_ms` returns)."""
        return [{"layer": name, "batch": row["batch"], "kind": row["sig"]["kind"], "cin": row["cin"],
                 "cout": row["cout"], "ms": round(self.layer_ms(name, row["cin"], row["cout"]), 5)}
                for name, row in self.layers.items()]

    # ------------------------------------------------------------------ prediction
    def layer_ms(self, name: str, cin: int, cout: int) -> float:
        got = self._ms.get((name, cin, cout))
        if got is None:
            got = self._ms[(name, cin, cout)] = self._layer_ms(name, cin, cout)
        return got

    def _layer_ms(self, name: str, cin: int, cout: int) -> float:
        row = self.layers[name]
        if (cin, cout) in row.get("exact", {}):
            return row["exact"][(cin, cout)]
        if row["sig"]["kind"] == "dwconv":
            xs = sorted({c for c, _ in row["grid"]})
            return _interp1(xs, [row["grid"][(c, c)] for c in xs], cin)
        return _bilinear(row["grid"], cin, cout)

    def predict_layers(self, widths: dict[str, tuple[int, int]]) -> float:
        """S: sum of the layers' latencies less the call cost each, at {name: (cin, cout)} (missing names:
        original widths)."""
        total = 0.0
        for name, row in self.layers.items():
            cin, cout = widths.get(name, (row["cin"], row["cout"]))
            total += max(0.0, self.layer_ms(name, cin, cout) - self.call_ms)
        return total

    def predict(self, widths: dict[str, tuple[int, int]]) -> float:
        """Predicted latency (ms) at {name: (cin, cout)}: `from_sum` of the layers' sum."""
        return self.from_sum(self.predict_layers(widths))

    def from_sum(self, s: float) -> float:
        """Latency (ms) of a model whose layers' sum is `s`: a + b x s once `calibrate` measured whole models;
        else the measured whole model scaled by the sum (module docstring); else the call cost plus the sum.
        Increasing in `s` in every case."""
        if self.fit is not None:
            return self.fit[0] + self.fit[1] * s
        if self.whole_ms is None:
            return self.call_ms + s
        full = self.predict_layers({})
        return self.call_ms + max(0.0, self.whole_ms - self.call_ms) * (s / full if full > 0 else 1.0)

    def calibrate(self, models: list[nn.Module], example: torch.Tensor, seconds: float = 2.0) -> LatencyTable:
        """Fit whole-model latency = a + b x S on the original and pruned copies of it, measured interleaved
        (so the machine's load is the same for all). The offset a is what no layer's width changes: the
        call, pooling, the runtime's per-node dispatch; a one-point scaling leaves it proportional and
        mispredicts pruned models by as much as it weighs. The whole models' times are kept on disk beside the
        entries, so a later run on the same model measures nothing again."""
        xs = [self.predict_layers(widths_of_model(self, m)) for m in models]
        example = at_batch(example, self.batch)
        path = self._whole_path(models, example)
        try:  # the same models measured on this machine before: each conversion is an NNCF quantization at INT8
            ys = [float(v) for v in json.loads(path.read_text())["ms"]][:len(models)]
            if len(ys) != len(models):
                raise ValueError("a truncated file")
            self.hits += len(models)
        except (OSError, ValueError, KeyError, TypeError):
            ys = self._measure_whole(models, example, seconds)
            _write_atomic(path, {"ms": ys})
        self.whole_ms, self.points = ys[0], list(zip(xs, ys, strict=True))
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var > 0 else 0.0
        if b <= 0:  # one point, or noise larger than the effect: keep the one-point scaling
            self.fit = None
            return self
        self.fit = (max(0.0, my - b * mx), b)
        if self.fit[0] == 0.0:
            self.fit = (0.0, my / mx)
        return self

    def _measure_whole(self, models: list[nn.Module], example, seconds: float) -> list[float]:
        """p50 (ms) of each whole model converted at the table's precision, measured interleaved."""
        from edgeopt.measure.timing import BenchConfig, measure

        with tempfile.TemporaryDirectory() as tmp:
            fns = {}
            for i, m in enumerate(models):
                if deadline_passed():  # each whole model is converted (at INT8: quantized, 15 s for SSDlite)
                    raise TimeBudgetError(f"the time ran out while calibrating the {self.runtime} latency table "
                                          f"on whole models ({i} of {len(models)} converted)")
                (Path(tmp) / str(i)).mkdir()
                fns[str(i)] = runner(m, example, self.runtime, self.threads, Path(tmp) / str(i), self.precision)
            stats = measure(fns, BenchConfig(max_time_s=seconds, warmup_runs=3, min_runs=10))
        self.measured += len(models)
        return [stats[str(i)].p50 for i in range(len(models))]

    def _whole_path(self, models: list[nn.Module], example) -> Path:
        """Where the calibration's whole-model times are kept: by this table's key and each model's
        architecture (its modules and parameter shapes; the values do not change a time) and input shapes."""
        archs = [hashlib.sha256((repr(m) + repr([(n, tuple(p.shape)) for n, p in m.state_dict().items()]))
                                .encode()).hexdigest() for m in models]
        key = hashlib.sha256(json.dumps([self._fp, self.runtime, self.precision, self.batch, archs,
                                         Inputs.of(example).describe()]).encode()).hexdigest()[:24]
        return self.cache_dir / f"whole-{key}.json"

    def predict_model(self, pruned: nn.Module) -> float:
        """Predicted latency of a pruned copy of the model the table was built for (same layer names)."""
        return self.predict(widths_of_model(self, pruned))

    def measure_widths(self, widths: dict[str, tuple[int, int]]) -> None:
        """Measure the entries at exactly these widths (fp32; INT8 tables keep their ratio) and add them to
        the grid: a runtime runs some widths much slower than their neighbours (blocked kernels), which no
        interpolation between grid points sees."""
        for name, (ci, co) in widths.items():
            row = self.layers[name]
            if (ci, co) in row["grid"] or (ci, co) in row.get("exact", {}) or (
                    row["sig"]["kind"] == "dwconv" and ci != co):
                continue
            ms = self.entry(row["sig"], ci, co)
            if self.precision == "int8":
                ms *= _ratio_at(row, ci, co)
            row.setdefault("exact", {})[(ci, co)] = ms
            self._ms.pop((name, ci, co), None)


def at_batch(x, batch: int):
    """`x` (a tensor, or a tuple/list/dict of them) at `batch` along the first axis: as is when it already has
    that batch, else its first item repeated (a time does not depend on the values)."""
    if isinstance(x, torch.Tensor):
        if x.dim() == 0 or x.shape[0] == batch:
            return x
        return x[:1].repeat(batch, *([1] * (x.dim() - 1)))
    if isinstance(x, dict):
        return {k: at_batch(v, batch) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(at_batch(v, batch) for v in x)
    return x


def _write_atomic(path: Path, obj) -> None:
    """Write JSON so that a concurrent build reads the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp_name, path)


def widths_of_model(table: LatencyTable, model: nn.Module) -> dict[str, tuple[int, int]]:
    widths = {}
    for name, m in model.named_modules():
        if name in table.layers:
            widths[name] = ((m.in_features, m.out_features) if isinstance(m, nn.Linear)
                            else (m.in_channels, m.out_channels))
    return widths


def _ratio_at(row: dict, ci: int, co: int) -> float:
    pts = row["ratio"]
    return _interp1([f for f, _ in pts], [r for _, r in pts], math.sqrt(ci / row["cin"] * co / row["cout"]))


def _monotone(grid: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """A narrower layer is never predicted slower than a wider one: each entry is capped by the entries at
    larger widths (timing noise otherwise makes pruning look like a slowdown)."""
    return {(ci, co): min(v for (a, b), v in grid.items() if a >= ci and b >= co) for ci, co in grid}


def _grid(width: int, fractions) -> list[int]:
    return sorted({max(1, int(round(width * f))) for f in fractions})


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    x = min(max(x, xs[0]), xs[-1])
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            t = (x - xs[i]) / max(1e-9, xs[i + 1] - xs[i])
            return ys[i] + t * (ys[i + 1] - ys[i])
    return ys[-1]


def _bilinear(grid: dict[tuple[int, int], float], cin: int, cout: int) -> float:
    ins = sorted({c for c, _ in grid})
    outs = sorted({o for _, o in grid})
    per_in = [_interp1(outs, [grid[(ci, co)] for co in outs], cout) for ci in ins]
    return _interp1(ins, per_in, cin)
