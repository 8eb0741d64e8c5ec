"""Sparse model structures the planner proposes: weight sparsity (global magnitude, lottery-ticket IMP, 2:4)
and pruning at initialisation (trained from scratch).

Where they pay off: zeroed weights make no dense kernel faster, so sparsity is proposed only
for a size goal (zeros compress: candidates are ranked by compressed size) or for a target with sparse
tensor cores (2:4 on NVIDIA Ampere+, through TensorRT); never for latency on a dense CPU, and the decision
says why. Structures are (name, steps, why, family, level), as in decide/structures.py; ladders from
decide/policy.py."""

from __future__ import annotations

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.report import Decision
from edgeopt.targets import TargetProfile
from edgeopt.techniques import FineTuneConfig, IMPConfig, PruneAtInitConfig, UnstructuredConfig, allowed

# the error barrier (pp) under which two runs count as linearly mode-connected; the technique
# (techniques/sparsity/lottery.py: LMC_BARRIER_PP) measures against the same value, quoted here for the
# decision's reason
LMC_BARRIER_PP = 2.0
# pruning-at-init criteria screened as families (Lee et al. 2019; Wang et al. 2020; Tanaka et al. 2020)
SCRATCH_METHODS = ("snip", "grasp", "synflow")


def _has_2_4(target: TargetProfile) -> bool:
    return "2:4" in (target.sparse_support or [])


def _finetune_keeping_zeros(finetune: FineTuneConfig) -> FineTuneConfig:
    return finetune.model_copy(update={"keep_sparsity": True}, deep=True)


def sparse_structures(context: DeployContext, target: TargetProfile, finetune: FineTuneConfig | None,
                      decisions: list[Decision]) -> list[tuple]:
    tech = "unstructured_pruning"
    if context.goal == "size":
        use_imp = bool(finetune) and allowed(context.techniques, "imp")
        if not use_imp and not allowed(context.techniques, "unstructured"):
            decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
            return []
        out = []
        for s in policy.SPARSITIES[bool(finetune)]:
            if use_imp:  # lottery-ticket style: prune gradually, retrain between rounds; the rewinding point is
                # the earliest epoch with no error barrier (linear mode connectivity), measured per candidate
                steps = [IMPConfig(sparsity=s, rounds=policy.IMP_ROUNDS, epochs=context.epochs, rewind="auto")]
                name = f"imp{int(round(s * 100))}"
            else:
                steps = [UnstructuredConfig(sparsity=s)]
                name = f"sparse{int(round(s * 100))}"
            out.append((name, steps, f"{'IMP (rewinding by LMC)' if use_imp else 'global magnitude'} weight "
                        f"sparsity at {s:.0%}", "imp" if use_imp else "sparse", s))
        decisions.append(Decision(
            technique="imp" if use_imp else tech, decision="applied",
            reason="size goal: zeroed weights compress (candidates are ranked by their deflate-compressed size "
                   "on disk, as downloads and container layers carry them); sparsity "
                   f"{out[0][4]:.0%}..{out[-1][4]:.0%} chosen by measured accuracy" +
                   ("; iterative magnitude pruning retrains between rounds, rewinding to the earliest epoch (0, 1) "
                    "whose two differently-ordered probe runs show no error barrier (linear mode connectivity, "
                    f"< {LMC_BARRIER_PP} pp), else learning-rate rewinding; the barriers are in each candidate's "
                    "record (rewind_auto)" if use_imp else "; no retraining: one-shot magnitude masks")))
        return out
    if _has_2_4(target):
        if not allowed(context.techniques, "unstructured"):
            decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
            return []
        if not finetune:
            decisions.append(Decision(
                technique=tech, decision="rejected",
                reason=f"{target.name} runs 2:4 sparse weights on sparse tensor cores, but removing half of "
                       "every group of 4 weights needs retraining to keep accuracy: pass --retrain"))
            return []
        steps = [UnstructuredConfig(pattern="2:4"), _finetune_keeping_zeros(finetune)]
        decisions.append(Decision(
            technique=tech, decision="applied",
            reason=f"{target.name} accelerates 2:4 semi-structured sparsity (TensorRT sparse weights); the "
                   "2:4 pattern is produced, kept through distillation fine-tuning and marked for the build"))
        return [("sparse24-ft", steps, "2:4 semi-structured sparsity + distillation fine-tuning", "sparse24",
                 0.5)]
    why = (f"unstructured sparsity: dense kernels on {target.name} gain no latency from zeroed weights "
           "(only a size goal or sparse tensor cores pay off)")
    decisions.append(Decision(technique=tech, decision="rejected", reason=why))
    return []


def from_scratch_structures(context: DeployContext, target: TargetProfile, has_train_data: bool,
                            decisions: list[Decision]) -> list[tuple]:
    tech = "prune_at_init"
    if not context.from_scratch:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason="pruning at initialisation trains from scratch: only with --from-scratch"))
        return []
    if not allowed(context.techniques, tech):
        decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
        return []
    if not has_train_data:
        decisions.append(Decision(technique=tech, decision="skipped", reason="no training data was given"))
        return []
    if context.goal != "size" and not _has_2_4(target):
        decisions.append(Decision(
            technique=tech, decision="rejected",
            reason=f"SNIP/GraSP/SynFlow masks are unstructured: dense kernels on {target.name} gain no latency; "
                   "structured pruning with retraining is proposed instead"))
        return []
    epochs = policy.scratch_epochs(context.epochs)
    out = [(f"{method}{int(round(s * 100))}", [PruneAtInitConfig(method=method, sparsity=s, epochs=epochs,
                                                                  seed=context.seed)],
            f"{method.upper()} mask at initialisation ({s:.0%} sparse), trained from scratch for {epochs} epochs",
            method, s)
           for method in SCRATCH_METHODS for s in policy.SCRATCH_SPARSITIES]
    decisions.append(Decision(
        technique=tech, decision="applied",
        reason="training from scratch allowed: SNIP (connection sensitivity on one labelled batch), GraSP "
               "(gradient flow) and SynFlow (data-free synaptic flow) each pick a mask before training; they rank "
               "weights differently and which one holds accuracy best is model-dependent, so each is its own "
               "family, bisected over the sparsities by measured accuracy, and the selection keeps the best"))
    return out
