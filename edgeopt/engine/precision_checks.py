"""The precisions a search finishes compressed structures at, and the precision it judges a probe at.

Both are decided on the original model's conversions, finished first. A (format, precision) the original
cannot win with (decide/select.py: cannot_win) is not finished on any compressed structure. A probe of a
bisection is checked at policy.CHECK_PRECISION (INT8) on the runtime, where the structure will win: only on a
format whose original held the budget there and ran policy.CHECK_INT8_LEAD faster than its fastest float
conversion. Elsewhere a structure wins at a float precision and its INT8 drop would veto levels whose float
candidates hold (on an AMX Xeon BF16 ran ConvNeXt-atto's original as fast as INT8, 2.78 against 2.67 ms, and
INT8 lost 2.41 pp on a level that lost 0.96 in PyTorch)."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.decide.select import cannot_win
from edgeopt.decide.serving import Serving, latency_rules_out_precisions
from edgeopt.report import Decision


def rule_out_precisions(search) -> None:
    """Precisions the target cannot win with, measured on the original, are not finished on any compressed
    structure, planned or added later by the search (`Finisher.ruled_out`)."""
    ledger = search.ledger
    if not search.plan.measure_locally or search.clock.check():
        return  # estimated latencies do not rule anything out
    may, why_not = latency_rules_out_precisions(Serving.of(search.context))
    if not may:
        search.trace.append(f"precision screen skipped: {why_not}")
        return
    ok = [ledger.cands[s.id] for s in ledger.specs[ledger.original]]
    ok = [c for c in ok if c.status == "ok" and c.id in search.finisher.sessions]
    if len(ok) < 2:
        return
    base, budget = ledger.baseline.accuracy, search.context.max_accuracy_drop + policy.EPS_PP
    broke = {(c.format, c.precision) for c in ok
             if base is not None and c.accuracy is not None and base - c.accuracy > budget}
    # all of the original's conversions measured afresh side by side, in separate rounds, and a pair is
    # ruled out only when every round agrees: a figure taken earlier (a candidate cut for time is timed
    # alone) or one noisy round once cost a Unet its fastest runtime
    verdicts = []
    for _ in range(policy.CANNOT_WIN_ROUNDS):
        search.quick_latency(ok, search.finisher.sessions)
        verdicts.append(cannot_win([(c.format, c.precision, c.latency_ms.p50) for c in ok
                                    if c.latency_ms is not None], broke))
    out = {pair: why for pair, why in verdicts[-1].items() if all(pair in v for v in verdicts)}
    for pair, why in out.items():
        _rule_out(search, pair, why)


def _rule_out(search, pair: tuple[str, str], why: str) -> None:
    """(format, precision) is not finished on any compressed structure, planned or added later
    (`Finisher.ruled_out`): its pending candidates are marked with why, and the decision traced."""
    ledger = search.ledger
    search.finisher.ruled_out[pair] = why
    for structure, specs in ledger.specs.items():
        for spec in specs:
            if structure != ledger.original and (spec.format, spec.precision) == pair \
                    and ledger.cands[spec.id].status == "pending":
                ledger.mark(spec.id, "rejected", why)
    search.decisions.append(Decision(technique=f"precision_screen:{pair[1]}@{pair[0]}", decision="rejected",
                                     reason=why.removeprefix("not tried: ")))
    search.trace.append(why.removeprefix("not tried: "))


def judge_by_float(search) -> set[str]:
    """The formats whose probes are judged by their float drop (`leads` is False there), decided once, on the
    precision screen's figures, and traced."""
    ledger, out = search.ledger, set()
    for fmt in sorted({s.format for s in ledger.specs[ledger.original] if s.precision == policy.CHECK_PRECISION}):
        if not leads(search, fmt):
            out.add(fmt)
            search.trace.append(f"probes not checked at {policy.CHECK_PRECISION} on {fmt}: its original does not "
                                f"run {policy.CHECK_INT8_LEAD:g}x faster than the fastest float conversion, so "
                                "levels are judged by their float drop")
    return out


def trailing_int8(search) -> set[str]:
    """The formats where INT8 is not pursued on compressed structures (not exported, no accuracy control, no
    QAT): under --time-budget and goal latency, those whose original's INT8 did not run policy.CHECK_INT8_LEAD
    faster than its fastest float conversion (`float_wins`). A structure keeps its original's ratio within a few
    %, so its INT8 candidate could tie its float one at best, and less exactly, while each INT8 export (NNCF
    calibration, 10-25 s a structure on 2 cores) is time a deeper level could use. Not under goal size (an INT8
    that ties is still about 4x smaller), nor goal throughput (batch-1 figures do not rank runtimes there), nor
    without a time budget (its few % may still win)."""
    serving = Serving.of(search.context)
    if not search.clock.time_budget_s or serving.goal != "latency" or serving.served:
        return set()
    return set(search.float_wins)


def rule_out_trailing_int8(search) -> None:
    """INT8 is not finished on any compressed structure on the formats `trailing_int8` gives, with both timings
    quoted."""
    for fmt in sorted(trailing_int8(search)):
        if (fmt, policy.CHECK_PRECISION) in search.finisher.ruled_out:
            continue  # ruled out already, as slower than a more exact precision
        quant, fast = _quant_and_fastest_float(search, fmt)
        if quant is None or fast is None:
            continue
        why = (f"not tried: under --time-budget, {fmt} {policy.CHECK_PRECISION} is finished only where it leads: on "
               f"the original it ran at {quant.latency_ms.p50:.3f} ms p50 against {fast.format} {fast.precision}'s "
               f"{fast.latency_ms.p50:.3f} ms, not {policy.CHECK_INT8_LEAD:g}x faster, so on a compressed structure "
               "it could tie the float candidate at best, and less exactly; its exports go to deeper levels")
        _rule_out(search, (fmt, policy.CHECK_PRECISION), why)


def rule_out_failed_verification(search) -> None:
    """Under --time-budget, a (format, precision) whose original failed verification (outputs too far from
    PyTorch's) is not finished on a compressed structure: a structure is the same graph, narrower or shorter,
    and its conversion runs the same operators. DeiT-tiny's ONNX Runtime INT8 (relative error 0.54 on the
    original) failed on all six structures it was exported for, 21.5 s of a 600 s search. Without a time budget
    they are finished as planned, and so is INT8 on a format QAT is armed for."""
    if not search.clock.time_budget_s:
        return
    ledger = search.ledger
    for cand in (ledger.cands[s.id] for s in ledger.specs[ledger.original]):
        if cand.status != "failed" or cand.failure != "verification":
            continue
        pair = (cand.format, cand.precision)
        if pair in search.finisher.ruled_out or (cand.precision == "int8" and cand.format in search.plan.qat_formats):
            continue  # ruled out already, or QAT's to repair: an INT8 that fails verification is what it retrains
        why = (f"not tried: under --time-budget, {cand.format} {cand.precision} is not exported for compressed "
               f"structures: the original's failed verification ({cand.reason})")
        _rule_out(search, pair, why)


def leads(search, fmt: str) -> bool:
    """Whether the original at policy.CHECK_PRECISION on `fmt` measured faster than each of its float
    conversions by policy.CHECK_INT8_LEAD (the precision screen's figures). True when they were not measured
    (the check stands, as planned)."""
    quant, fast = _quant_and_fastest_float(search, fmt)
    return quant is None or fast is None or quant.latency_ms.p50 * policy.CHECK_INT8_LEAD < fast.latency_ms.p50


def _quant_and_fastest_float(search, fmt: str):
    """The original's timed candidate at policy.CHECK_PRECISION on `fmt`, and its fastest timed float candidate
    on any format (None where not measured)."""
    ledger = search.ledger
    timed = [c for c in (ledger.cands[s.id] for s in ledger.specs[ledger.original])
             if c.status == "ok" and c.latency_ms is not None]
    quant = next((c for c in timed if c.format == fmt and c.precision == policy.CHECK_PRECISION), None)
    floats = [c for c in timed if c.precision in ("fp32", "fp16", "bf16")]
    return quant, min(floats, key=lambda c: c.latency_ms.p50, default=None)


def checks_probes(search, structures: list[str]) -> bool:
    """Whether the bisection of a family checks each probe at the precision the structure will win with
    (its INT8 candidates finished on the runtime): no margin level is needed then. Not where QAT is armed:
    there an INT8 twin that breaks the budget is what QAT retrains."""
    return not search.plan.qat_formats and search.ledger.baseline.accuracy is not None and any(
        checkable(search, spec) for s in structures for spec in search.ledger.specs[s])


def checkable(search, spec) -> bool:
    """Whether a structure's candidate checks its probe: at policy.CHECK_PRECISION, not yet finished, on a
    format whose original at that precision held the budget and led the float conversions (`leads`). Where
    the original itself breaks it there (YOLOv8n lost 2.9 pp at OpenVINO INT8), every level would break it
    too, and the check would say nothing of the structure."""
    ledger = search.ledger
    if spec.precision != policy.CHECK_PRECISION or ledger.cands[spec.id].status != "pending" \
            or spec.format in search.float_wins:
        return False
    twin, base = ledger.find(ledger.original, spec.format, spec.precision), ledger.baseline.accuracy
    return twin is None or twin.accuracy is None or base is None or \
        base - twin.accuracy <= search.context.max_accuracy_drop + policy.EPS_PP


def check(search, structure: str) -> float | None:
    """The drop (pp) of a structure at the precision it will win with: its PyTorch drop, and where that holds
    the budget, the worse of it and its policy.CHECK_PRECISION candidates' drop measured on the runtime
    (finished now: they are the structure's candidates, not extra work). Judged by the PyTorch drop alone
    when no such candidate gives a result (failed, or stopped by the time budget)."""
    drop = search.screen(structure)
    if drop is None or drop > search.context.max_accuracy_drop + policy.EPS_PP:
        return drop
    ledger = search.ledger
    specs = [s for s in ledger.specs[structure] if checkable(search, s)]
    if not specs:
        return drop
    search.finisher.finish(structure, specs)
    search.compressed_finished()
    cands = [ledger.cands[s.id] for s in specs]
    accs = [c.accuracy for c in cands if c.status == "ok" and c.accuracy is not None]
    base = ledger.baseline.accuracy
    if not accs:
        search.trace.append(f"check {structure} at {policy.CHECK_PRECISION}: no result "
                            f"({'; '.join(c.reason for c in cands if c.reason) or 'not finished'}); "
                            "judged by its PyTorch drop")
        return drop
    checked = round(base - max(accs), 4)
    search.trace.append(f"check {structure} at {policy.CHECK_PRECISION}: drop {checked:.2f} pp")
    budget = search.context.max_accuracy_drop
    for c in cands:  # over the budget: not worth the final latency measurement
        if c.status == "ok" and c.accuracy is not None and base - c.accuracy > budget + policy.EPS_PP:
            c.status, c.reason = "rejected", (f"accuracy drop {base - c.accuracy:.2f} pp > budget {budget} pp "
                                              "(checked in the bisection)")
    return max(drop, checked)
