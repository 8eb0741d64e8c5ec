"""The precision a fine-tuning trains at, chosen by measurement: bfloat16 autocast (weights, gradients' sums and the
optimizer's state stay fp32) where the processor has bfloat16 arithmetic (AMX or AVX-512 BF16 on x86, BF16 on Arm,
a GPU) and a step of this model on this data runs measurably faster with it. The gain follows the model, not the
machine alone: measured on a Xeon with AMX (2 cores, batches of 32), a resnet18 Unet's step ran 2.5x faster (1.07 s
vs 2.62 s), YOLOv8n's 1.7x, DeiT-tiny's and ConvNeXt-atto's at 96 px 1.0x (small matrices, many small operations),
a tiny CNN's slower; and the recovery it trains to stayed the same (the Unet half pruned: 95.36 % mIoU after 300
steps either way, 50 s against 87 s)."""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")
# the least measured gain that turns bfloat16 on: a step timed a few times on a shared machine varies by ~10 %,
# and a model whose step gains less (DeiT-tiny, 1.0x) keeps the fp32 it was trained in
BF16_GAIN = 1.25
TIMED_ROUNDS = 3  # interleaved fp32/bf16 steps timed after one warm-up step of each


def autocast(device: torch.device, precision: str):
    """The context a training step's forward passes run in at `precision`."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def bf16_unsupported(device: torch.device) -> str | None:
    """Why `device` cannot train in bfloat16 faster than in fp32, or None when it has bfloat16 arithmetic."""
    if device.type == "cuda":
        # emulated bfloat16 (before Ampere) runs slower than fp32: only the GPU's own arithmetic counts
        return (None if torch.cuda.is_bf16_supported(including_emulation=False)
                else "this GPU has no bfloat16 arithmetic")
    from edgeopt.targets import cpu_flags

    if {"amx_bf16", "avx512_bf16", "bf16"} & cpu_flags():
        return None
    return "this processor has no bfloat16 arithmetic (AMX, AVX-512 BF16 or Arm BF16)"


def choose_precision(student: nn.Module, teacher: nn.Module | None, x: torch.Tensor,
                     device: torch.device) -> dict:
    """{"precision", "fp32_step_s", "bf16_step_s", "why"}: a copy of `student` takes forward and backward steps
    on the batch `x` (the teacher's forward beside it), fp32 and bfloat16 interleaved, and bfloat16 is chosen
    when its median step is at least BF16_GAIN times faster."""
    from edgeopt.inputs.feeding import run_model
    from edgeopt.inputs.model_io import flatten_outputs
    from edgeopt.training.modes import training_mode

    why = bf16_unsupported(device)
    if why is not None:
        return {"precision": "fp32", "why": why}
    model = copy.deepcopy(student).to(device)
    model.train(training_mode(model, x).mode == "train")
    teacher = copy.deepcopy(teacher).to(device).eval() if teacher is not None else None
    x = x.to(device)

    def step(precision: str) -> float:
        t0 = time.perf_counter()
        with autocast(device, precision):
            out = flatten_outputs(run_model(model, x))
            if teacher is not None:
                with torch.no_grad():
                    run_model(teacher, x)
        loss = sum(v.float().mean() for v in out.values() if v.is_floating_point() and v.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    try:
        for r in range(TIMED_ROUNDS + 1):
            for p in PRECISIONS:
                took = step(p)
                if r:  # the first step of each allocates and picks its kernels
                    times[p].append(took)
    except RuntimeError as e:  # an operation without a bfloat16 kernel; one fp32 cannot run fit reports itself
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"precision": "fp32", "why": f"a step could not run in bfloat16 autocast: {first}"}
    fp32, bf16 = (statistics.median(times[p]) for p in PRECISIONS)
    gain = fp32 / max(bf16, 1e-9)
    chosen = "bf16" if gain >= BF16_GAIN else "fp32"
    return {"precision": chosen, "fp32_step_s": round(fp32, 4), "bf16_step_s": round(bf16, 4),
            "why": (f"a step took {bf16:.3f} s in bfloat16 autocast, {fp32:.3f} s in fp32 ({gain:.2f}x)"
                    + ("" if chosen == "bf16" else f": under the {BF16_GAIN}x that turns it on"))}
