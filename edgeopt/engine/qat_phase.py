"""The QAT phase of the search: where INT8 post-training quantization of a structure broke the accuracy budget on
a format QAT is armed for, that structure is retrained with fake quantization (distilled from the original) and
exported as INT8 Q/DQ, as a structure of its own built on it."""

from __future__ import annotations

from edgeopt.decide.plan import CandidateSpec
from edgeopt.decide.precisions import qat_choice
from edgeopt.report import Decision
from edgeopt.techniques import QATConfig


def qat_phase(search) -> None:
    """Per armed format, quantization-aware training of the structure whose INT8 post-training quantization
    measurably broke the budget (decide/precisions.py: qat_choice): a structure of its own, built on that one
    (`Builds.base_of`), finished like any other."""
    base = search.ledger.baseline
    budget = search.context.max_accuracy_drop
    for fmt in search.plan.qat_formats:
        if search.clock.check() or base.accuracy is None:
            return
        # a precision screen ruled INT8 out on this format (slower than a more exact precision, or under a time
        # budget not leading the float ones): QAT would train for an INT8 that cannot win
        if why := search.finisher.ruled_out.get((fmt, "int8")):
            search.decisions.append(Decision(technique=f"qat@{fmt}", decision="skipped", reason=(
                f"its INT8 would not be exported: {why.removeprefix('not tried: ')}")))
            continue
        rows = []
        for structure, specs in list(search.ledger.specs.items()):
            got = {s.precision: search.ledger.cands[s.id] for s in specs if s.format == fmt}
            f, q = got.get("fp32"), got.get("int8")
            if f and q and f.status == "ok":
                rows.append((structure, f.macs or 0, f.accuracy, q.status, q.accuracy, q.failure))
        structure, drop = qat_choice(rows, base.accuracy, budget)
        if structure is None:
            search.decisions.append(Decision(technique=f"qat@{fmt}", decision="skipped", reason=drop))
            continue
        spec = search.ledger.specs[structure][0]
        name = f"{structure}-qat"
        qspec = CandidateSpec(
            id=f"{name}@{fmt}-int8", structure=name, format=fmt, precision="int8",
            steps=[*spec.steps, QATConfig(epochs=search.plan.qat_epochs)],
            reason=f"INT8 PTQ of {structure} failed the {budget} pp budget ({drop}): quantization-aware "
                   "training (fake quantization, distilled from the original), exported as INT8 Q/DQ")
        search.builds.base_of[name] = structure
        search.ledger.add(qspec)
        search.decisions.append(Decision(technique=f"qat@{fmt}", decision="applied", reason=qspec.reason))
        search.trace.append(f"qat: {qspec.id} (PTQ: {drop})")
        search.finisher.finish(name)
        search.compressed_finished()
