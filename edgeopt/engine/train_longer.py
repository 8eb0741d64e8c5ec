"""Training longer where the measured recovery says it pays: a fine-tuned family's mildest level that broke the
accuracy budget (its near miss) is trained on, block by block, while each block closes enough of the gap.

A fine-tuned level is trained for the planned epochs only (about 300 steps): enough to rank levels, short of what
the level can recover. The near miss is the most aggressive structure worth the time: the next faster one
after the level the family settled at. Its recovery is measured, not assumed: its drop before fine-tuning
(its un-fine-tuned twin's) and after gives the gain of the first block (the benchmark Unet's prune-recon50:
8.68 pp without, 3.32 pp after two epochs, 2.72 pp after two more, where the rule below stopped it: 1.72 pp
over a 1 pp budget at 0.59 pp a block; ConvNeXt-atto's prune-recon60-ft at about 300 steps a block: 2.41 pp
before, 1.45 after one block, 0.96 after two, chosen). A block of as many epochs again is started
only where the gain of the last block, repeated for the blocks left (policy.TRAIN_LONGER_BLOCKS), would close
the gap; each block continues the student the last one left (a structure of its own, built on the last one,
screened like any other) and stops the run of blocks when it recovers less than that. The first block
within the budget is finished (exported, verified, measured) like any other structure and chosen on the same
measurements. A near miss with no twin (a family planned fine-tuned only) has no measured gain: within one
budget of it, it gets one block on trial, run after every family was searched (on the time they leave), and its
gain decides the rest. Each block's fine-tuning forecasts its own end (training/loop.py): a block that cannot
end before the search's deadline is not run."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.fine_tuned import fine_tuned
from edgeopt.report import Decision


def near_miss(search, structures: list[str]) -> str | None:
    """The mildest of a family's structures (mildest first) screened over the accuracy budget, when every one of
    them fine-tunes last; None otherwise."""
    specs, limit = search.ledger.specs, search.context.max_accuracy_drop + policy.EPS_PP
    if not structures or not all(fine_tuned(specs[s][0]) for s in structures):
        return None
    return next((s for s in structures if (search.screened.get(s) or 0.0) > limit), None)


def next_miss(search, structures: list[str], after: str) -> str | None:
    """The next of a family's structures (mildest first) after `after` that was screened over the accuracy
    budget; None when there is none (a level never built has no drop to train on from)."""
    limit = search.context.max_accuracy_drop + policy.EPS_PP
    rest = structures[structures.index(after) + 1:] if after in structures else []
    return next((s for s in rest if (search.screened.get(s) or 0.0) > limit), None)


def train_longer(search, structure: str) -> str | None:
    """Train the near miss `structure` on in blocks (module doc); returns the first block's structure that holds
    the budget (finished), or None. Records a `train_longer` decision saying what was done or why not."""
    ledger, limit = search.ledger, search.context.max_accuracy_drop + policy.EPS_PP
    spec = ledger.specs[structure][0]
    tune = spec.steps[-1]
    kept = _kept_unchanged(search, structure)
    if kept:
        return _decide(search, "skipped", f"{structure}: its fine-tuning left it unchanged ({kept})")
    same = _same_layout_held(search, structure)
    if same:  # trained on, it could only match that one's speed (ConvNeXt-atto's prune-taylor30-ft: prune-recon30)
        return _decide(search, "skipped",
                       f"{structure}: the same channel layout as {same}, which holds the budget already")
    drop = _whole_drop(search, structure)
    before = _whole_drop(search, search.base_of[structure]) if has_twin(search, structure) else None
    name = f"{structure} ({drop:.2f} pp after {tune.epochs} epochs{_cut(search, structure)}"
    budget = search.context.max_accuracy_drop
    if before is None and drop - budget > budget:
        return _decide(search, "skipped", f"{name}, none measured before fine-tuning): {drop - budget:.2f} pp "
                                          "over the budget, more than the budget itself, with no recovery measured "
                                          "to close it")
    name += f", {before:.2f} pp before)" if before is not None else ", none measured before: one block on trial)"
    gain, epochs, last = (before - drop if before is not None else None), tune.epochs, structure
    steps: list[str] = []
    for block in range(1, policy.TRAIN_LONGER_BLOCKS + 1):
        gap, blocks_left = drop - budget, policy.TRAIN_LONGER_BLOCKS - block + 1
        # gain None: a near miss within one budget of it, no drop before fine-tuning: one block tells its gain
        if gain is not None and gain <= policy.EPS_PP:
            return _end(search, name, steps, f"its last {tune.epochs} epochs recovered nothing")
        if gain is not None and gap > gain * blocks_left:
            return _end(search, name, steps, f"{gap:.2f} pp over the budget, {gain:.2f} pp recovered by its last "
                                             f"{tune.epochs} epochs: {blocks_left} more such blocks would not close it")
        seconds = _block_seconds(search, last)
        left = search.clock.left("search")
        if search.clock.check() or (left is not None and seconds is not None and left < seconds):
            return _end(search, name, steps, f"the next {tune.epochs} epochs would take about {seconds or 0:.0f} s, "
                                             f"{max(left or 0.0, 0.0):.0f} s of the search's share left")
        epochs += tune.epochs
        longer = _add_block(search, structure, last, epochs)
        got = _whole_drop(search, longer)
        if got is None:
            why = (search.builds.failure(longer) or "not built").removeprefix("not tried: ")
            for s in ledger.specs[longer]:
                ledger.mark(s.id, "rejected", f"not tried: {why}")
            return _end(search, name, steps, f"{epochs} epochs: {why}")
        steps.append(f"{epochs} epochs{_cut(search, longer)}: {got:.2f} pp")
        gain, drop, last = drop - got, got, longer
        if got <= limit:
            search.finisher.finish(longer)
            search.compressed_finished()
            _decide(search, "applied", f"{name}; " + "; ".join(steps) + ": within the budget, finished")
            return longer
        for s in ledger.specs[longer]:
            ledger.mark(s.id, "rejected", f"not tried: PyTorch accuracy drop {got:.2f} pp > budget "
                                          f"{budget} pp (screening)")
    return _end(search, name, steps, f"still over the budget after {policy.TRAIN_LONGER_BLOCKS} more blocks")


def _add_block(search, structure: str, last: str, epochs: int) -> str:
    """The structure `structure` trained for `epochs` in all: the last one's steps and one more fine-tuning
    block, built on the last one's model, with the near miss's candidates (formats, precisions)."""
    ledger = search.ledger
    name = f"{structure}-{epochs}ep"
    base = ledger.specs[last][0]
    ledger.add_structure([CandidateSpec(
        id=f"{name}@{s.format}-{s.precision}", structure=name, format=s.format, precision=s.precision,
        steps=[*base.steps, ledger.specs[structure][0].steps[-1]],
        reason=f"{structure} fine-tuned for {epochs} epochs in all (trained on: it missed the budget by a margin "
               f"its measured recovery could close); {s.reason.split('; ', 1)[-1]}") for s in ledger.specs[structure]])
    search.builds.base_of[name] = last
    search.reaches[name] = search.reaches.get(structure, structure)
    search.trace.append(f"train longer: {name} on {last}")
    return name


def has_twin(search, structure: str) -> bool:
    """Whether the structure was built on an un-fine-tuned twin, whose drop tells what its fine-tuning gained."""
    twin = search.base_of.get(structure)
    return twin is not None and search.builds.ready(twin) is not None


def _whole_drop(search, structure: str) -> float | None:
    """The structure's screened drop on the whole selection split. A screening stopped early measured the
    samples it saw only: enough to say "over the budget", not to compare two drops (ConvNeXt-atto's
    prune-recon50-ft read 1.61 pp on 384 of 415 samples, 1.93 pp on all of them, as its twin before
    fine-tuning), so it is evaluated whole here (and its screening updated)."""
    drop = search.screen(structure)
    built = search.builds.ready(structure)
    if drop is None or structure not in search.partial or built is None:
        return drop
    drop = round(search.base_torch_acc - search.builder.torch_accuracy(built.model), 4)
    search.screened[structure] = drop
    del search.partial[structure]
    search.trace.append(f"screen {structure}: drop {drop:.2f} pp on the whole selection split")
    return drop


def _same_layout_held(search, structure: str) -> str | None:
    """Another structure with the near miss's channel layout that holds the budget (it runs as fast), if any."""
    layout, limit = search.builds.layout_of.get(structure), search.context.max_accuracy_drop + policy.EPS_PP
    return next((s for s, d in search.screened.items() if s != structure and d is not None and d <= limit
                 and layout is not None and search.builds.layout_of.get(s) == layout), None)


def _kept_unchanged(search, structure: str) -> str | None:
    """Why the structure's last fine-tuning kept the model as it came (it lowered the held-out score), if it
    did: training it longer would start from the model before fine-tuning."""
    return (_last_fine_tuning(search, structure) or {}).get("kept_unchanged")


def _cut(search, structure: str) -> str:
    """", its last block shortened to N of its M planned steps" when the structure's last fine-tuning ran fewer
    steps than planned (to end within the time left), else ""."""
    tuned = _last_fine_tuning(search, structure) or {}
    return (f", its last block shortened to {tuned['steps']} of its {tuned['planned_steps']} planned steps"
            if tuned.get("shortened") else "")


def _block_seconds(search, structure: str) -> float | None:
    """What the last fine-tuning of `structure` took (its record), else its whole build."""
    seconds = (_last_fine_tuning(search, structure) or {}).get("seconds")
    return float(seconds) if seconds is not None else search.builds.seconds.get(structure)


def _last_fine_tuning(search, structure: str) -> dict | None:
    """The record of the structure's last fine-tuning step, when it was built."""
    built = search.builds.ready(structure)
    tuned = [r for r in (built.records if built is not None else []) if r.get("technique") == "fine_tune"]
    return tuned[-1] if tuned else None


def _end(search, name: str, steps: list[str], why: str) -> None:
    """No block held the budget: "skipped" when none was trained, "rejected" when each trained fell short."""
    _decide(search, "rejected" if steps else "skipped", f"{name}; " + "".join(s + "; " for s in steps) +
            f"stopped: {why}")


def _decide(search, decision: str, reason: str) -> None:
    search.decisions.append(Decision(technique="train_longer", decision=decision, reason=reason))
    search.trace.append(f"train longer: {reason}")
