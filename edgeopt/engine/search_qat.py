"""The search's QAT phase (issue 8): quantization-aware training only where post-training INT8 measurably
broke the accuracy budget. Runs after the structure families, on the Search it is given."""

from __future__ import annotations

from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import new_candidate
from edgeopt.report import Decision, Step


def qat_phase(search) -> None:
    """Per armed format: take the most compressed structure whose fp32 candidate is within the accuracy
    budget but whose PTQ INT8 twin is not, and retrain it with fake quantization. Skipped (with the
    measured reason) when a structure at least as small already holds the budget with PTQ."""
    base = search.cands[search.plan.baseline_id]
    budget = search.context.max_accuracy_drop
    for fmt in search.plan.qat_formats:
        if search._check_stop() or base.accuracy is None:
            return
        ptq_ok, ptq_bad = [], []
        for structure, specs in list(search.specs.items()):
            got = {s.precision: search.cands[s.id] for s in specs if s.format == fmt}
            f, q = got.get("fp32"), got.get("int8")
            if not (f and q and f.status == "ok" and f.accuracy is not None):
                continue
            if base.accuracy - f.accuracy > budget + 1e-9:
                continue
            if q.status == "ok" and q.accuracy is not None:
                drop = base.accuracy - q.accuracy
                (ptq_ok if drop <= budget + 1e-9 else ptq_bad).append((f.macs or 0, structure, f"{drop:.2f} pp"))
            elif q.status == "failed" and "differ from PyTorch" in q.reason:  # INT8 outputs too far off
                ptq_bad.append((f.macs or 0, structure, "its verification"))
        if not ptq_bad:
            search.decisions.append(Decision(technique=f"qat@{fmt}", decision="skipped", reason=(
                "INT8 post-training quantization stays within the accuracy budget" if ptq_ok else
                "no structure within the budget has a measured INT8 twin")))
            continue
        macs, structure, drop = min(ptq_bad)
        if ptq_ok and min(ptq_ok)[0] <= macs:
            search.decisions.append(Decision(technique=f"qat@{fmt}", decision="skipped", reason=(
                f"PTQ INT8 of {structure} breaks the budget ({drop}), but {min(ptq_ok)[1]} is as small and holds "
                "the budget with PTQ")))
            continue
        spec = search.specs[structure][0]
        name = f"{structure}-qat"
        qspec = CandidateSpec(
            id=f"{name}@{fmt}-int8", structure=name, format=fmt, precision="int8",
            steps=[*spec.steps, Step(technique="qat", params={"epochs": search.plan.qat_epochs})],
            reason=f"INT8 PTQ of {structure} failed the {budget} pp budget ({drop}): quantization-aware "
                   "training (fake quantization, distilled from the original), exported as INT8 Q/DQ")
        search.base_of[name] = structure
        search.specs[name] = [qspec]
        search.cands[qspec.id] = new_candidate(qspec)
        search.decisions.append(Decision(technique=f"qat@{fmt}", decision="applied", reason=qspec.reason))
        search.trace.append(f"qat: {qspec.id} (PTQ: {drop})")
        search._finish(name)
