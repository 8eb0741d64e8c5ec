"""Efficient architecture: instead of compressing the user's model, switch to a family designed to be fast
(MobileNetV3, EfficientNet, RegNet from torchvision; GhostNet, MobileOne, RepVGG, ConvNeXt-atto from timm).

Each family is built with random weights (nothing is downloaded) at the user's input channels and number of
outputs, put in its deploy form (structural re-parameterization: RepVGG/MobileOne multi-branch blocks fused
into one conv, timm's `reparameterize_model`), and timed at batch 1 next to the user's model, interleaved, on
this machine. Switching needs training from scratch: with training data, the most promising families are
trained by distillation from the user's model and their measured accuracy is put beside their latency."""

from __future__ import annotations

import copy

import torch
from torch import nn

import edgeopt.decide.policy as policy
from edgeopt.errors import BackendMissingError, ConfigError, first_line, missing_backend
from edgeopt.techniques import ARCH_TIMM, ARCH_TORCHVISION

TORCHVISION, TIMM = ARCH_TORCHVISION, ARCH_TIMM
FAMILIES = TORCHVISION + TIMM


def _first_conv_to(model: nn.Module, channels: int) -> nn.Module:
    """torchvision models take 3 channels: rebuild their first conv for the user's input channels."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels != channels:
                conv = nn.Conv2d(channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                 m.groups if m.groups == 1 else channels, m.bias is not None)
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, conv)
            return model
    return model


def build(family: str, num_classes: int, in_chans: int, seed: int = 0) -> nn.Module:
    """A randomly initialised model of `family` (its training form, multi-branch where it has one)."""
    torch.manual_seed(seed)
    if family in TORCHVISION:
        import torchvision

        return _first_conv_to(getattr(torchvision.models, family)(num_classes=num_classes), in_chans).eval()
    if family in TIMM:
        try:
            import timm
        except ImportError:
            raise missing_backend("timm", "timm") from None

        return timm.create_model(family, pretrained=False, num_classes=num_classes, in_chans=in_chans).eval()
    raise ConfigError(f"unknown architecture family {family!r}: use one of {', '.join(FAMILIES)}")


def reparameterize(model: nn.Module) -> tuple[nn.Module, bool]:
    """(deploy form, whether anything was fused): timm's structural re-parameterization on a copy."""
    if not any(hasattr(m, "reparameterize") for m in model.modules()):
        return model, False
    from timm.utils.model import reparameterize_model

    return reparameterize_model(copy.deepcopy(model).eval()), True


def latency_table(model: nn.Module, example: torch.Tensor, families: list[str] | None = None,
                  max_time_s: float = 6.0, skipped: list[str] | None = None) -> list[dict]:
    """Rows (the user's model first) with params, MACs and measured median latency (ms) at batch 1 in
    PyTorch on this machine, interleaved so that all rows see the same machine state. A family that cannot
    run at this input size is left out (with the reason appended to `skipped`)."""
    from edgeopt.inputs.analyze import count_macs, count_params
    from edgeopt.measure.timing import BenchConfig, measure

    families = list(families or FAMILIES)
    for f in families:
        if f not in FAMILIES:
            raise ConfigError(f"unknown architecture family {f!r}: use one of {', '.join(FAMILIES)}")
    x = example[:1]
    with torch.no_grad():
        num_classes = model.eval()(x).shape[1]
    rows, nets = [], {"yours": model}
    rows.append({"name": "yours", "params": count_params(model), "macs": count_macs(model, x),
                 "reparameterized": False})
    for f in families:
        try:
            net, fused = reparameterize(build(f, num_classes, x.shape[1]))
        except BackendMissingError as e:  # the families of an optional extra are left out, saying which
            if skipped is not None:
                skipped.append(f"{f}: not measured, {e}")
            continue
        try:
            with torch.no_grad():
                net(x)
        except RuntimeError as e:  # e.g. a 32x-downsampling family on a 16x16 input
            if skipped is not None:
                skipped.append(f"{f}: does not run at input {tuple(x.shape)} ({first_line(e, 80, with_type=False)})")
            continue
        nets[f] = net
        rows.append({"name": f, "params": count_params(net), "macs": count_macs(net, x), "reparameterized": fused})

    def runner(net):
        def run():
            with torch.inference_mode():
                net(x)
        return run

    stats = measure({n: runner(net) for n, net in nets.items()},
                    BenchConfig(warmup_runs=3, warmup_s=0.0, min_runs=10, max_time_s=max_time_s))
    base = stats["yours"].p50
    for r in rows:
        r["p50_ms"] = round(stats[r["name"]].p50, 4)
        r["speedup"] = round(base / stats[r["name"]].p50, 3)
        r["measured"] = "pytorch eager, batch 1, this machine"
    return rows


def promising(rows: list[dict], top: int = policy.ARCH_TOP) -> list[str]:
    """The faster families at comparable capacity, the fastest first (the rule is the decision policy's)."""
    return policy.faster_families(rows, top)


def decision(rows: list[dict], from_scratch: bool, trained: dict | None = None) -> dict:
    """The report's decision ("architecture"), with the measured numbers behind it."""
    best = promising(rows)
    table = "; ".join(f"{r['name']} {r['p50_ms']:.2f} ms" for r in rows)
    if not best:
        return {"technique": "architecture", "decision": "skipped",
                "reason": f"no efficient family is faster than your model here ({table})"}
    if not from_scratch:
        return {"technique": "architecture", "decision": "skipped",
                "reason": f"needs training from scratch (--from-scratch): {', '.join(best)} would be faster "
                          f"({table})"}
    if trained:
        done = "; ".join(f"{n}: top-1 {t.get('top1')}% at {t['p50_ms']:.2f} ms" for n, t in trained.items())
        return {"technique": "architecture", "decision": "applied",
                "reason": f"trained by distillation from your model: {done} ({table})"}
    return {"technique": "architecture", "decision": "skipped",
            "reason": f"{', '.join(best)} faster than your model; training data needed to train them ({table})"}


def train_candidates(teacher: nn.Module, example: torch.Tensor, rows: list[dict], train_data, eval_data=None,
                     epochs: int = 3, top: int = 2, lr: float = 0.05) -> dict[str, dict]:
    """Train the `top` most promising families by response distillation from `teacher`; returns per family
    its measured top-1 (labelled `eval_data`), the teacher's, and the model in deploy form (`model`)."""
    from edgeopt.training import distill, top1

    with torch.no_grad():
        num_classes = teacher.eval()(example[:1]).shape[1]
    latency = {r["name"]: r["p50_ms"] for r in rows}
    out: dict[str, dict] = {}
    for name in promising(rows, top):
        student = build(name, num_classes, example.shape[1])
        distill(student, teacher, train_data, kind="response", epochs=epochs, lr=lr)
        deploy, fused = reparameterize(student.eval())
        out[name] = {"top1": top1(deploy, eval_data) if eval_data is not None else None,
                     "teacher_top1": top1(teacher, eval_data) if eval_data is not None else None,
                     "p50_ms": latency[name], "epochs": epochs, "reparameterized": fused, "model": deploy}
    return out


def apply_architecture(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None, train_data=None,
                       progress=None) -> tuple[nn.Module, dict]:
    """Registry entry: the family `config.family`, built at the model's input channels and classes, trained
    from scratch by response distillation from `teacher` (the user's model) on the training data, returned
    in deploy form."""
    from edgeopt.training import distill

    if train_data is None:
        raise ConfigError("an efficient architecture is trained from scratch: it needs training data")
    teacher = model if teacher is None else teacher
    x = example[:1]
    with torch.no_grad():
        out = teacher.eval()(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ConfigError("efficient architectures replace classifiers (one (N, classes) output); this model "
                          "returns another structure")
    student = build(config.family, out.shape[1], x.shape[1], seed=config.seed)
    _, result = distill(student, teacher, train_data, kind="response", epochs=config.epochs, lr=config.lr)
    deploy, fused = reparameterize(student.eval())
    return deploy, {"technique": "architecture", "family": config.family, "epochs": config.epochs,
                    "reparameterized": fused, "train_seconds": round(result.seconds, 1)}
