"""Layer-level (depth) pruning and the efficient-architecture decision. Pure, like the rest of the decision
layer: the measurement decides what is kept."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.report import Decision
from edgeopt.techniques import TECHNIQUES, ArchitectureConfig, DepthConfig, FineTuneConfig, allowed


def depth_structures(context, target, summary, has_calib_data: bool, finetune: FineTuneConfig | None,
                     decisions: list[Decision]) -> list[tuple]:
    """On CPUs at batch 1 per-layer dispatch, not MACs, dominates small models: removing whole residual
    blocks can beat thinning every layer, so depth pruning is proposed there and measured like the rest."""
    if "depth_prune" not in TECHNIQUES or not allowed(context.techniques, "depth_prune"):
        decisions.append(Decision(technique="depth_prune", decision="skipped",
                                  reason="not registered or excluded by --techniques"))
        return []
    batch = summary.input_shape[0] if summary.input_shape else 1
    if target.kind != "cpu" or batch != 1 or context.goal != "latency":
        decisions.append(Decision(technique="depth_prune", decision="skipped",
                                  reason="proposed for CPU latency at batch 1 only, where per-layer dispatch "
                                         f"dominates (here: {target.kind}, batch {batch}, goal {context.goal})"))
        return []
    if not has_calib_data:
        decisions.append(Decision(technique="depth_prune", decision="skipped",
                                  reason="the cost of removing each residual block is measured on held-out "
                                         "data, and none was given"))
        return []
    out = []
    for blocks in policy.DEPTH_LEVELS:
        steps = [DepthConfig(blocks=blocks)]
        if finetune:
            steps.append(finetune.model_copy(deep=True))
        out.append((f"depth{blocks}" + ("-ft" if finetune else ""), steps,
                    f"layer-level pruning: the {blocks} cheapest residual block(s) removed (measured cost), "
                    "BN re-estimated" + (" + distillation fine-tuning" if finetune else ""), "depth_prune",
                    float(blocks)))
    decisions.append(Decision(
        technique="depth_prune", decision="applied",
        reason=f"{target.name} at batch 1: removing whole residual blocks ({', '.join(map(str, policy.DEPTH_LEVELS))}) "
               "saves per-layer dispatch; models without residual blocks come back unchanged with the reason"))
    return out


def architecture_structures(context, table: list[dict] | None, has_train_data: bool,
                            decisions: list[Decision]) -> list[tuple]:
    """`table`: the efficient families' latency measured beside the model (rows, the user's model first), or
    None when it was not measured. With --from-scratch and training data, the faster families at comparable
    capacity become candidates (trained by distillation from the model, then measured like any other);
    otherwise the decision says what switching would buy, with the numbers."""
    tech = "architecture"
    how = ("`edgeopt architecture` measures MobileNetV3/EfficientNet/RegNet/GhostNet/MobileOne/RepVGG/"
           "ConvNeXt-atto at this input size next to your model")
    if not allowed(context.techniques, tech):
        decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
        return []
    if table is None:
        why = ("needs training from scratch (--from-scratch)" if not context.from_scratch else
               "the efficient families' latency was not measured for this model (one (N, classes) output "
               "measured on this machine is needed)")
        decisions.append(Decision(technique=tech, decision="skipped", reason=f"{why}; {how}"))
        return []
    ran = [r for r in table if "skipped" not in r]  # families that could not be measured are listed with why
    measured = "; ".join([f"{r['name']} {r['p50_ms']:.3f} ms" for r in ran] +
                         [f"{r['name']} " + ("not measured: an optional extra is missing"
                                             if "not installed" in r["skipped"] else "not run at this input size")
                          for r in table if "skipped" in r])
    faster = policy.faster_families(ran)
    if not faster:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason=f"no efficient family is faster than your model at comparable capacity "
                                         f"here (measured, PyTorch batch 1: {measured})"))
        return []
    if not context.from_scratch:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason=f"needs training from scratch (--from-scratch): {', '.join(faster)} "
                                         f"would be faster (measured, PyTorch batch 1: {measured})"))
        return []
    if not has_train_data:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason=f"{', '.join(faster)} faster than your model, but no training data was "
                                         f"given to train them (measured: {measured})"))
        return []
    epochs = policy.scratch_epochs(context.epochs)
    out = [(f"arch-{name}", [ArchitectureConfig(family=name, epochs=epochs, seed=context.seed)],
            f"efficient architecture {name} trained from scratch ({epochs} epochs) by distillation from your "
            "model", f"arch-{name}", 0.0) for name in faster]
    decisions.append(Decision(technique=tech, decision="applied",
                              reason=f"{', '.join(faster)} measured faster than your model at comparable capacity "
                                     f"(PyTorch batch 1: {measured}): trained by distillation from your model, "
                                     "then measured on the runtime beside the compressed candidates"))
    return out
