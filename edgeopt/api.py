"""The public verb and what it returns: `apply(model, example_inputs, config, data=None) -> Applied(model,
record)` applies one registered technique (its config object, or a dict naming it), and the named functions
(`prune`, `factorize`, `sparsify`, ...) are thin wrappers over the techniques that all return `Applied`.

One vocabulary across them (the old names still work for one release, with a DeprecationWarning):
- `ratio`: the fraction removed (channels for prune/slim, weights for sparsify/imp/prune_at_init/supermask);
  was `sparsity=` for the weight-level ones.
- `method`: the criterion or algorithm (prune's importance criterion, factorize's decomposition,
  prune_at_init's saliency, supermask's search); was `importance=` for prune and prune_sensitivity.
- `data`: batches a technique only reads, to measure or calibrate (prune's calibration inputs, depth_prune's
  held-out scoring batches, prune_at_init's labelled saliency batch); `train_data`: batches it trains on
  (was `data=` for supermask); `eval_data`: held-out batches measured for the record only.

The old return shapes (a model carrying `.edgeopt_record`, a `(model, record)` tuple, a bare record, a dict)
are served by `Applied` and the result types here for one release, with a DeprecationWarning on use."""

from __future__ import annotations

import functools
import warnings
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any


def _deprecated(message: str) -> None:
    warnings.warn(message + " (deprecated; removed in the next release)", DeprecationWarning, stacklevel=3)


@dataclass
class Applied:
    """A technique's result (read-only): `model` (a new model, or the one given where the technique works in place) and
    `record`, what it did (per layer, what was skipped and why). Old code that used the result as the model
    (`result(x)`, `result.edgeopt_record`), unpacked it (`model, record = result`) or read a record from it
    (`result["sparsity"]`) still works for one release, with a DeprecationWarning."""

    model: Any
    record: dict
    _old: Any = field(default=None, repr=False, compare=False)  # what the function returned before Applied

    def _legacy(self):
        return self._old if self._old is not None and not isinstance(self._old, tuple) else self.model

    def __getattr__(self, name: str):
        if name in ("model", "record", "_old"):  # not set yet (a copy being rebuilt): no model to ask
            raise AttributeError(name)
        target = self._legacy()
        if name == "edgeopt_record" and target is self.model:
            _deprecated("result.edgeopt_record: use result.record")
            return self.record
        _deprecated(f"result.{name}: the result is an edgeopt.Applied, use result.model.{name} / result.record")
        return getattr(target, name)

    def __setattr__(self, name: str, value) -> None:
        # read-only once built (frozen by hand: a frozen dataclass could not forward attributes that old code,
        # e.g. a MAC counter, sets on what it took for the model)
        if name in ("model", "record", "_old"):
            if name in self.__dict__:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            object.__setattr__(self, name, value)
            return
        _deprecated(f"setting result.{name}: use result.model.{name}")
        setattr(self._legacy(), name, value)

    def __delattr__(self, name: str) -> None:
        if name in ("model", "record", "_old"):
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        _deprecated(f"deleting result.{name}: use result.model")
        delattr(self._legacy(), name)

    def __call__(self, *args, **kwargs):
        _deprecated("calling the result: use result.model(...)")
        return self.model(*args, **kwargs)

    def __iter__(self):
        _deprecated("unpacking the result: use result.model and result.record")
        return iter(self._old if isinstance(self._old, tuple) else (self.model, self.record))

    def __getitem__(self, key):
        _deprecated("indexing the result: use result.record[...] or result.model[...]")
        return (self._old if self._old is not None else self.model)[key]

    def __contains__(self, key) -> bool:
        _deprecated("`in` on the result: use result.record")
        return key in self._legacy()


class _DictAccess:
    """Results that were dicts before: `result["key"]` still reads them for one release, with a warning."""

    def as_dict(self) -> dict:
        raise NotImplementedError

    def __getitem__(self, key):
        _deprecated(f"result[{key!r}]: the result is an edgeopt.{type(self).__name__}, use its attributes")
        return self.as_dict()[key]

    def __contains__(self, key) -> bool:
        _deprecated(f"`in` on an edgeopt.{type(self).__name__}: use its attributes")
        return key in self.as_dict()

    def get(self, key, default=None):
        _deprecated(f"result.get({key!r}): the result is an edgeopt.{type(self).__name__}, use its attributes")
        return self.as_dict().get(key, default)


@dataclass(frozen=True)
class Sensitivity(_DictAccess):
    """Per-layer pruning sensitivity: the accuracy with nothing pruned, the drop when each layer's group alone
    is pruned at the probe ratio, the per-layer ratios derived from the drops (pass them to
    `prune(..., layer_ratios=...)`), and the full record (probe ratio, criterion, skipped layers)."""

    baseline: float
    layers: dict[str, float]
    layer_ratios: dict[str, float]
    record: dict

    def as_dict(self) -> dict:
        return self.record


@dataclass(frozen=True)
class Architectures(_DictAccess):
    """Efficient families measured next to the model: `table` (rows with p50_ms, params, MACs, the model's
    first), `decision` (the report's architecture decision) and `trained` ({family: {top1, p50_ms, model}}
    when training data was given)."""

    table: list[dict]
    decision: dict
    trained: dict

    def as_dict(self) -> dict:
        return {"table": self.table, "trained": self.trained, "decision": self.decision}


def _renamed(**old_to_new: str):
    """Keywords renamed to the shared vocabulary: the old name still works for one release, with a warning."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            from edgeopt.errors import ConfigError

            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigError(f"{fn.__name__}: give {new}= only ({old}= is its old name)")
                    _deprecated(f"{fn.__name__}({old}=...): use {new}=...")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return inner

    return wrap


def _batches(data, example_inputs=None):
    """The caller's batches as the techniques read them: Batches / StreamBatches as they are; any other iterable
    of batches, inputs or (inputs, target) (a list, a DataLoader), gathered into Batches."""
    if data is None or (hasattr(data, "items") and hasattr(data, "labelled")):
        return data
    from edgeopt.inputs.data import Batches
    from edgeopt.inputs.feeding import split_inputs_target
    from edgeopt.inputs.model_io import Inputs

    n_inputs = 1 if example_inputs is None else len(Inputs.of(example_inputs).names)
    return Batches([split_inputs_target(item, n_inputs) for item in data])


def apply(model, example_inputs, config, data=None, *, train_data=None, teacher=None, progress=None) -> Applied:
    """Apply one model-stage technique. `config`: its config object (e.g. `edgeopt.techniques.PruneConfig(
    ratio=0.3)`) or a dict naming it (`{"technique": "prune", "ratio": 0.3}`; validated, an unknown technique
    is an UnknownNameError with did-you-mean). `data`: batches the technique reads (calibration, scoring);
    `train_data`: batches a retraining technique trains on, distilled from `teacher` (default: `model`).
    Batches: a list of tensors or (inputs, target) pairs, a DataLoader, or edgeopt Batches."""
    from edgeopt.techniques import apply_step

    small, record = apply_step(model, example_inputs, config, _batches(data, example_inputs), teacher=teacher,
                               train_data=_batches(train_data, example_inputs), progress=progress)
    return Applied(small, record)


def _config(name: str, validate: bool = True, **fields):
    """A technique's config from keyword arguments. Unvalidated where the wrapper always left the checks to the
    technique's own function (its errors, e.g. PruningError for a ratio out of range, stay what they were)."""
    from edgeopt.techniques import TECHNIQUES

    tech = TECHNIQUES.get(name)
    return tech.make_config(fields) if validate else tech.config.model_construct(**fields)


@_renamed(importance="method")
def prune(model, example_inputs, ratio: float = 0.3, method: str = "l2", scope: str = "local",
          round_to: int | None = None, iterative_steps: int = 1, data=None, max_layer_ratio: float = 0.9,
          layer_ratios: dict[str, float] | None = None, timeout_s: float = 120, reconstruct: bool = False
          ) -> Applied:
    """Structured channel pruning: a physically smaller copy (every output keeps its shape; `example_inputs`
    is a tensor, a tuple or a dict of tensors). `method` (the importance criterion): l2 | l1 | bn_scale |
    taylor (needs labelled `data=[(x, y), ...]`) | hrank, energy, recon (need `data` inputs) | fpgm | random.
    `reconstruct=True` re-solves the layers fed by pruned channels on `data` (no retraining). The record: what
    changed per layer, what was skipped and why."""
    config = _config("prune", False, ratio=ratio, importance=method, scope=scope, round_to=round_to,
                     iterative_steps=iterative_steps, max_layer_ratio=max_layer_ratio, layer_ratios=layer_ratios,
                     timeout_s=timeout_s, reconstruct=reconstruct)
    return apply(model, example_inputs, config, data)


def factorize(model, example_inputs, method: str = "tucker", energy: float | None = 0.9,
              macs_reduction: float | None = None, layers: list[str] | None = None, rank_method: str = "energy"
              ) -> Applied:
    """A low-rank factorized copy: `method` tucker | cp (k x k convs) | svd (Linears); ranks by `energy` kept,
    by `rank_method="vbmf"`, or by a target `macs_reduction` per layer. The record per layer: ranks, MACs
    before/after, skipped with the reason."""
    config = _config("factorize", False, method=method, energy=energy, macs_reduction=macs_reduction,
                     layers=layers, rank_method=rank_method)
    return apply(model, example_inputs, config)


@_renamed(sparsity="ratio")
def sparsify(model, ratio: float = 0.5, pattern: str = "global") -> Applied:
    """Unstructured pruning of a copy: global magnitude (`pattern="global"`, `ratio` of the weights zeroed) or
    2:4 semi-structured. The record has the compressed size on disk. No speedup on dense CPU kernels."""
    applied = apply(model, None, _config("unstructured", sparsity=ratio, pattern=pattern))
    return Applied(applied.model, applied.record, (applied.model, applied.record))


def slim(model, example_inputs, train_data, ratio: float = 0.3, epochs: int = 2, strength: float = 0.1,
         lr: float = 0.01, scope: str = "global") -> Applied:
    """Network Slimming: a copy of `model` fine-tuned `epochs` with `strength * sum|BN gamma|` added to the loss
    (distilled from `model`, so labels are optional), then pruned by BN scale at `ratio`. Fine-tune the result
    with `distill`. A model without BatchNorm is a ConfigError. The record: mean |gamma| before/after."""
    config = _config("slimming", ratio=ratio, epochs=epochs, strength=strength, lr=lr, scope=scope)
    return apply(model, example_inputs, config, train_data=train_data)


def depth_prune(model, example_inputs, data, blocks: int = 1, train_data=None, epochs: int = 0,
                lr: float = 0.01, resolve: bool = True) -> Applied:
    """Layer-level pruning: a copy without the `blocks` residual blocks whose removal costs least, measured on
    held-out `data` (accuracy drop when labelled, output KL otherwise), BatchNorm re-estimated, the dense layers
    after the removed blocks re-solved to the original's outputs when `resolve` and that brings the outputs
    measurably closer on batches of `data` it was not fitted on (`record["resolved"]` says which), fine-tuned
    from `model` for `epochs` on `train_data` when given (a re-solved start wants a smaller `lr` than a plain
    removal: a small ResNet on digits, 87.5 % re-solved, fell to 48.3 in one epoch at 0.01 and rose to 88.3 at
    0.001). A model without residual blocks comes back unchanged with the reason in `record["skipped"]`."""
    from edgeopt.techniques import TECHNIQUES

    # the handler itself: its optional fine-tuning reads `train_data`, which apply_step gives retraining
    # techniques only (the planner fine-tunes depth-pruned models in a separate step)
    tech = TECHNIQUES.get("depth_prune")
    small, record = tech.apply_fn()(model, example_inputs, _config("depth_prune", False, blocks=blocks,
                                                                   epochs=epochs, lr=lr, bn_batches=20,
                                                                   resolve=resolve),
                                    data=data, train_data=train_data)
    return Applied(small, record)


def qat(model, train_data, epochs: int = 2, lr: float = 0.005, distill: bool = True, **kwargs) -> Applied:
    """Quantization-aware training of a copy (labelled `train_data`); export the model with
    `export(..., format="onnx")` to get an INT8 Q/DQ model. With `distill`, the float model teaches the
    quantized one."""
    if kwargs:  # training options of the old signature: the technique's function as before
        from edgeopt.techniques.retraining.qat import qat as _qat
        from edgeopt.training import fit

        _deprecated("qat(**training options): use qat(model, train_data, epochs, lr, distill)")
        if distill:
            kwargs.setdefault("teacher", model)
        qmodel = _qat(model, train_data, fit, epochs=epochs, lr=lr, **kwargs)
        return Applied(qmodel, {"epochs": epochs, "distill": distill}, qmodel)
    return apply(model, None, _config("qat", epochs=epochs, lr=lr, distill=distill), train_data=train_data)


@_renamed(sparsity="ratio")
def imp(model, train_data, ratio: float = 0.8, rounds: int = 3, epochs: int = 3, rewind: str = "lr",
        rewind_epoch: int = 1, eval_data=None, **fit_kwargs) -> Applied:
    """Iterative magnitude pruning with rewinding ("init" = lottery ticket, "epoch" = weights of epoch
    `rewind_epoch`, "lr" = learning-rate rewinding) to `ratio` of the weights. The model: a pruned copy with
    its masks attached; the record: rewind, rewind_epoch, rounds (sparsity, top-1 on `eval_data`),
    final_sparsity, lmc."""
    from dataclasses import asdict

    from edgeopt.techniques.sparsity.lottery import imp as _imp
    from edgeopt.training import fit, top1

    eval_fn = (lambda m: top1(m, eval_data)) if eval_data is not None else None
    pruned, res = _imp(model, train_data, fit, target_sparsity=ratio, rounds=rounds, epochs=epochs, rewind=rewind,
                       rewind_epoch=rewind_epoch, eval_fn=eval_fn, **fit_kwargs)
    return Applied(pruned, {**asdict(res), "final_sparsity": res.final_sparsity}, (pruned, res))


@_renamed(sparsity="ratio")
def prune_at_init(model, data, method: str = "snip", ratio: float = 0.8) -> Applied:
    """Attach SNIP / GraSP / SynFlow masks of `ratio` to a freshly initialised `model` (in place: the model
    returned is the one given), scored on labelled `data`, to be trained from scratch (edgeopt.training.fit
    keeps masked weights at zero)."""
    from edgeopt.techniques.sparsity.prune_at_init import prune_at_init as _pai

    masked, record = _pai(model, data, method=method, sparsity=ratio)
    return Applied(masked, record, record)


@_renamed(sparsity="ratio", data="train_data")
def supermask(model, train_data, ratio: float = 0.5, epochs: int = 3, method: str = "edge_popup",
              eval_data=None, lr: float | None = None, seed: int = 0, return_record: bool = False) -> Applied:
    """A supermask for `model`'s (random) weights, searched on labelled `train_data`: method "edge_popup"
    (weights frozen, scores trained), "large_final" or "magnitude_increase" (weights trained, mask applied to
    the initial ones). The model: a masked copy (its own initial weights, zeros where masked); the record:
    measured sparsity and top-1 on `eval_data`."""
    from edgeopt.techniques.sparsity.supermask import supermask as _supermask

    masked, record = _supermask(model, train_data, sparsity=ratio, epochs=epochs, method=method, lr=lr,
                                eval_data=eval_data, seed=seed)
    if return_record:
        _deprecated("supermask(return_record=True): the result always carries .model and .record")
    return Applied(masked, record, (masked, record) if return_record else None)


def distill(student, teacher, train_data, kind: str = "response", epochs: int = 3, eval_data=None,
            **fit_kwargs) -> Applied:
    """Fine-tune `student` (in place: the model returned is `student`) from `teacher`: kind "response" |
    "feature" | "relation" or a combination like "response+feature". The record: kind used, teacher and
    student top-1 before/after on labelled `eval_data`, share of the gap recovered."""
    from edgeopt.training import distill as _distill

    model, res = _distill(student, teacher, train_data, kind=kind, epochs=epochs, eval_data=eval_data,
                          **fit_kwargs)
    return Applied(model, res.to_dict(), res)


@_renamed(importance="method")
def prune_sensitivity(model, example_inputs, evaluate, ratio: float = 0.5, method: str = "l2",
                      max_groups: int | None = None, data=None) -> Sensitivity:
    """Per-layer sensitivity: the accuracy drop when each prunable layer's group is pruned alone at `ratio`
    (`evaluate(model) -> accuracy`, `method` the importance criterion). Pass `.layer_ratios` on to
    `prune(...)` so that sensitive layers are pruned less."""
    from edgeopt.techniques.pruning.sensitivity import sensitivity

    rec = sensitivity(model, example_inputs, evaluate, ratio=ratio, importance=method, max_groups=max_groups,
                      data=data)
    return Sensitivity(rec["baseline"], rec["layers"], rec["layer_ratios"], rec)


def efficient_architectures(model, example_inputs, families: list[str] | None = None, train_data=None,
                            eval_data=None, epochs: int = 3, top: int = 2, max_time_s: float = 6.0
                            ) -> Architectures:
    """Measure efficient families (MobileNetV3, EfficientNet, RegNet, GhostNet, MobileOne, RepVGG,
    ConvNeXt-atto; random init, deploy form) next to `model` at its input size and number of outputs. With
    `train_data`, the `top` most promising are trained by distillation from `model` (from scratch)."""
    from edgeopt.techniques.retraining.architecture import decision, latency_table, train_candidates

    rows = latency_table(model, example_inputs, families=families, max_time_s=max_time_s)
    trained = (train_candidates(model, example_inputs, rows, train_data, eval_data, epochs=epochs, top=top)
               if train_data is not None else {})
    return Architectures(rows, decision(rows, train_data is not None, trained), trained)


def model_of(model):
    """The model to export or measure: an `Applied` passed where a model is expected gives its model (old
    code passed the model-shaped result of `prune` & co. straight on)."""
    if isinstance(model, Applied):
        _deprecated("passing an edgeopt.Applied as the model: pass result.model")
        return model.model
    return model
