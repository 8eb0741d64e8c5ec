"""Retraining-free structures: pruning with least-squares reconstruction, uniform or with per-layer widths
allocated over a latency table measured on the runtime. Proposed only without retraining (fine-tuning recovers
accuracy better when it is allowed) and only with calibration data (reconstruction needs real inputs)."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.decide.structures import channel_rounding
from edgeopt.formats import format_of_runtime, layer_timing_runtimes, precisions_of_format
from edgeopt.report import Decision
from edgeopt.techniques import PruneConfig, allowed


def recon_structures(context, target, summary, has_calib_data, finetune, decisions) -> list[tuple]:
    """Channels chosen by reconstruction error, then the layers they fed re-solved by least squares on the
    calibration inputs. BN is not re-estimated after it: the re-solved layers already match the original
    pre-BN outputs, which the original statistics describe better than a few batches."""
    if finetune or not allowed(context.techniques, "prune") or summary.prunable_groups == 0:
        return []
    if not has_calib_data:
        decisions.append(Decision(technique="prune_reconstruct", decision="skipped",
                                  reason="no calibration data: reconstruction needs unlabeled real inputs"))
        return []
    round_to = channel_rounding(target, summary, [])
    out = []
    for r in policy.RECON_RATIOS[policy.budget_kind(context.max_accuracy_drop)]:
        step = PruneConfig(ratio=r, importance="recon", round_to=round_to, reconstruct=True)
        out.append((f"prune-recon{int(round(r * 100))}", [step],
                    f"structured pruning at {r:.0%} with least-squares reconstruction", "prune-recon", r))
    decisions.append(Decision(
        technique="prune_reconstruct", decision="applied",
        reason="no retraining: channels ranked by the output error their removal leaves, and the layers they "
               "fed re-solved by least squares on unlabeled calibration inputs, so pruning goes further"))
    return out


def table_precision(context, rt: str, decisions, pairs=None) -> str:
    """The latency table's precision for `rt`: INT8 when the plan measures INT8 on it. The structure is
    shared by every (format, precision) pair, and without retraining the INT8 candidate is the one that
    wins whenever the hardware runs INT8, so its kernels' widths decide (fp32 twins are still measured).
    `pairs`: the plan's (format, precision, why) pairs; None: read from the skip decisions made so far."""
    fmt = format_of_runtime().get(rt)
    if pairs is not None:
        return "int8" if any(f == fmt and p == "int8" for f, p, *_ in pairs) else "fp32"
    if "int8" not in precisions_of_format().get(fmt, ()) or not allowed(context.techniques, "quantize"):
        return "fp32"
    skipped = any(d.decision == "skipped" and d.technique in ("quantize:int8", f"quantize:int8@{rt}")
                  for d in decisions)
    return "fp32" if skipped else "int8"


def latency_structures(context, summary, has_calib_data, finetune, decisions, runtimes, here,
                       pairs=None) -> list[tuple]:
    if finetune or not has_calib_data or not allowed(context.techniques, "prune") or summary.prunable_groups == 0:
        return []
    rt = next((r for r in runtimes if r in layer_timing_runtimes()), None)
    if not here or rt is None:
        decisions.append(Decision(technique="prune_latency_allocation", decision="skipped",
                                  reason="the latency table is measured on this machine's runtimes: "
                                         "not available for this target"))
        return []
    prec = table_precision(context, rt, decisions, pairs)
    out = []
    for t in policy.LATENCY_TARGETS:
        # the uniform ratio is unused: widths come from the allocation
        step = PruneConfig(ratio=0.0, latency_target=t, lut_runtime=rt, lut_precision=prec, importance="recon",
                           reconstruct=True)
        out.append((f"prune-lat{int(round(t * 100))}", [step],
                    f"channels allocated for {t:.0%} of the latency ({rt} {prec} table) + reconstruction",
                    "prune-lat", 1 - t))
    decisions.append(Decision(
        technique="prune_latency_allocation", decision="applied",
        reason=f"per-layer widths chosen greedily over a latency table measured on {rt} ({prec} layers"
               + (", the precision the INT8 candidates run" if prec == "int8" else "")
               + "), keeping the most importance per millisecond, for "
               + "/".join(f"{t:.0%}" for t in policy.LATENCY_TARGETS) + " of the baseline's latency"))
    return out
