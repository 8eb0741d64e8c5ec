"""Quantization-aware training through PyTorch's FX graph-mode flow (torch.ao): BatchNorm is fused into
the convolutions, fake-quantizers (uint8 activations, int8 weights) are inserted and calibrated, then the
model is fine-tuned with the quantization error in the loop. The result keeps its fake-quantizers, so
`edgeopt.export(model, x, format="onnx")` writes QuantizeLinear/DequantizeLinear pairs that ONNX Runtime
and OpenVINO execute as INT8.

The same prepared model, calibrated but not trained, is post-training quantization (PTQ): QAT is worth its
training cost when PTQ loses more accuracy than the budget allows."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from edgeopt.errors import ConfigError


def _qconfig_mapping(weight_bits: int, per_channel: bool):
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.fake_quantize import FakeQuantize  # plain (not fused): exports to Q/DQ
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    if not 2 <= weight_bits <= 8:
        raise ConfigError(f"weight_bits must be in 2..8, got {weight_bits}")
    qmax = 2 ** (weight_bits - 1) - 1
    # activations: full uint8 range (no reduce_range), which ONNX QuantizeLinear represents exactly
    act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                                  quant_max=255, dtype=torch.quint8)
    wobs = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
    scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    weight = FakeQuantize.with_args(observer=wobs, quant_min=-qmax - 1 if weight_bits == 8
                                                     else -qmax, quant_max=qmax, dtype=torch.qint8,
                                                     qscheme=scheme)
    return QConfigMapping().set_global(QConfig(activation=act, weight=weight))


def prepare(model: nn.Module, example: torch.Tensor, weight_bits: int = 8, per_channel: bool = True) -> nn.Module:
    """A fake-quantized copy (FX graph), in training mode, observers on."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao announces its move to torchao; the flow still works
        return prepare_qat_fx(copy.deepcopy(model).train(), _qconfig_mapping(weight_bits, per_channel),
                              (example,))


def calibrate(qmodel: nn.Module, batches: list[torch.Tensor], max_batches: int = 16) -> nn.Module:
    """PTQ: observe activation/weight ranges on calibration data, BN statistics frozen (eval mode)."""
    qmodel.eval()
    with torch.no_grad():
        for x in batches[:max_batches]:
            qmodel(x)
    return qmodel


def freeze(qmodel: nn.Module) -> nn.Module:
    """Stop observing ranges and updating BN statistics: the model now computes as it will in INT8."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    qmodel.apply(disable_observer)
    qmodel.apply(freeze_bn_stats)
    return qmodel.eval()


class FoldedQConv(nn.Module):
    """A frozen QAT Conv+BatchNorm(+ReLU) with the BatchNorm folded into the weights and bias: the same numbers
    in eval mode, but exported as DQ(weight) -> Conv (+Relu), the pattern ONNX Runtime fuses into QLinearConv
    and OpenVINO runs as an INT8 convolution. Unfolded, the export is Conv -> Div -> Add -> BatchNormalization,
    which no runtime fuses: the convolutions would run in fp32 between the Q/DQ pairs."""

    def __init__(self, qconv: nn.Module):
        super().__init__()
        bn = qconv.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        scale = (gamma / std).detach()
        bias = qconv.bias if qconv.bias is not None else torch.zeros_like(std)
        shape = [-1] + [1] * (qconv.weight.dim() - 1)
        # what the QAT module fake-quantizes in eval mode is weight * gamma/std: exactly the folded weight
        self.weight = nn.Parameter((qconv.weight * scale.reshape(shape)).detach().clone())
        self.bias = nn.Parameter((beta + (bias - bn.running_mean) * scale).detach().clone())
        self.weight_fake_quant = qconv.weight_fake_quant
        self.stride, self.padding, self.dilation, self.groups = (qconv.stride, qconv.padding, qconv.dilation,
                                                                 qconv.groups)
        self.relu = type(qconv).__name__.endswith("ReLU2d")

    def forward(self, x):
        y = nn.functional.conv2d(x, self.weight_fake_quant(self.weight), self.bias, self.stride, self.padding,
                                 self.dilation, self.groups)
        return nn.functional.relu(y) if self.relu else y


def fold_batchnorm(qmodel: nn.Module) -> nn.Module:
    """Replace every frozen QAT ConvBn2d/ConvBnReLU2d by its BatchNorm-folded equivalent (in place)."""
    from torch.ao.nn.intrinsic.qat import ConvBn2d, ConvBnReLU2d

    for name, mod in list(qmodel.named_modules()):
        if isinstance(mod, (ConvBn2d, ConvBnReLU2d)):
            parent_name, _, leaf = name.rpartition(".")
            parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
            setattr(parent, leaf, FoldedQConv(mod))
    return qmodel.eval()


def ptq(model: nn.Module, calib: list[torch.Tensor], weight_bits: int = 8, per_channel: bool = True) -> nn.Module:
    return fold_batchnorm(freeze(calibrate(prepare(model, calib[0][:1], weight_bits, per_channel), calib)))


def qat(model: nn.Module, train_data, train_fn: Callable, epochs: int = 2, lr: float = 0.005,
        weight_bits: int = 8, per_channel: bool = True, freeze_after: float = 0.5, **train_kwargs) -> nn.Module:
    """Calibrate (PTQ starting point), then fine-tune with fake quantization; observers and BN statistics
    are frozen for the last part of training (`freeze_after` of the epochs), the standard QAT recipe.
    `train_fn` is edgeopt.training.fit (passed in: techniques do not import the training loop)."""
    items = train_data.items if hasattr(train_data, "items") else list(train_data)
    xs = [b[0] if isinstance(b, (tuple, list)) else b for b in items]
    qmodel = calibrate(prepare(model, xs[0][:1], weight_bits, per_channel), xs)
    first = max(1, int(round(epochs * freeze_after))) if epochs > 1 else epochs
    train_fn(qmodel, train_data, epochs=first, lr=lr, **train_kwargs)
    if epochs > first:
        freeze(qmodel)
        train_fn(qmodel, train_data, epochs=epochs - first, lr=lr / 10, **train_kwargs)
    return fold_batchnorm(freeze(qmodel))


def apply_qat(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None, train_data=None,
              progress=None) -> tuple[nn.Module, dict]:
    """Registry entry: QAT fine-tuning (distilled from `teacher`, default the float model itself, when
    `distill`), ready for an INT8 Q/DQ ONNX export. The pipeline passes its training split as `train_data`."""
    from edgeopt.errors import DataError
    from edgeopt.training import fit

    data = train_data if train_data is not None else data
    if data is None or not getattr(data, "labelled", False):
        raise DataError("quantization-aware training needs labelled training data")
    kwargs = {"teacher": teacher if teacher is not None else model} if config.distill else {}
    qmodel = qat(model, data, fit, epochs=config.epochs, lr=config.lr, weight_bits=8,
                 per_channel=config.per_channel, **kwargs)
    return qmodel, {"epochs": config.epochs, "per_channel": config.per_channel, "distill": config.distill,
                    "format": "fake-quant (QDQ on ONNX export)"}
