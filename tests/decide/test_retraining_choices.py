"""Retraining-side choices made by measurement: Network Slimming, IMP's rewinding point by linear mode
connectivity, the distillation kind by a short screen, and what the planner proposes with --retrain."""

import copy

import pytest
import smallnet
import torch
from torch import nn

from edgeopt.config import ModelSummary, make_context
from edgeopt.decide.plan import plan
from edgeopt.errors import ConfigError
from edgeopt.targets import load_target
from edgeopt.techniques import DISTILL_KINDS, FineTuneConfig, IMPConfig, PruneConfig, SlimmingConfig, parse_step
from edgeopt.training import fit, top1

SUMMARY = ModelSummary(params=1_000_000, macs=100_000_000, input_shape=[1, 3, 64, 64], num_outputs=10,
                       prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1, "batchnorm": 10})


def _plan(summary=SUMMARY, has_train_data=True, **ctx):
    local = load_target("x86-amx").model_copy(update={"detected": False})
    return plan(make_context(target="x86-amx", **ctx), load_target("x86-amx"), summary, local, ["onnxruntime"],
                has_calib_data=True, has_train_data=has_train_data)


# ---- Network Slimming --------------------------------------------------------------------------------------
def test_slimming_shrinks_bn_scales_then_prunes_and_reuses_the_sparsity_training():
    from edgeopt.techniques.pruning.slimming import apply_slimming

    model, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    train = train.items[:8]
    config = SlimmingConfig(ratio=0.5, epochs=1, strength=1.0)
    small, rec = apply_slimming(model, x, config, teacher=model, train_data=train)
    assert rec["gamma_after"]["mean_abs_gamma"] < 0.9 * rec["gamma_before"]["mean_abs_gamma"]
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert rec["sparsity_training_reused"] is False and small(x).shape == (1, 10)
    milder, rec2 = apply_slimming(model, x, config.model_copy(update={"ratio": 0.3}), teacher=model,
                                  train_data=train)
    assert rec2["sparsity_training_reused"] is True  # one sparsity training serves every ratio of the family
    assert sum(p.numel() for p in milder.parameters()) > sum(p.numel() for p in small.parameters())


def test_slimming_without_batchnorm_is_a_one_line_config_error_and_skipped_by_the_planner():
    from edgeopt.techniques.pruning.slimming import apply_slimming

    plain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match="needs BatchNorm layers") as e:
        apply_slimming(plain, torch.randn(1, 1, 8, 8), SlimmingConfig(), train_data=[(torch.randn(4, 1, 8, 8),
                                                                                       torch.zeros(4).long())])
    assert "\n" not in str(e.value)
    no_bn = SUMMARY.model_copy(update={"layers": {"conv": 10, "linear": 1}})
    d = next(d for d in _plan(no_bn, retrain=True).decisions if d.technique == "slimming")
    assert d.decision == "skipped" and "no BatchNorm" in d.reason


def test_planner_proposes_slimming_as_its_own_family_only_with_retraining():
    p = _plan(retrain=True, max_accuracy_drop=1.0)
    slim = [c for c in p.candidates if c.family == "slim"]
    assert slim and [s.technique for s in slim[0].steps] == ["slimming", "fine_tune"]
    assert sorted({c.level for c in slim}) == sorted({s.steps[0].ratio for s in slim})
    assert next(d for d in p.decisions if d.technique == "slimming").decision == "applied"
    assert not any(c.family == "slim" for c in _plan(retrain=False).candidates)
    no_data = next(d for d in _plan(retrain=True, has_train_data=False).decisions if d.technique == "slimming")
    assert no_data.decision == "skipped" and "--retrain" in no_data.reason


# ---- distillation kind by measurement ------------------------------------------------------------------------
def test_fine_tune_kind_is_validated_and_matches_the_training_kinds():
    from edgeopt.training.loop import KINDS

    assert DISTILL_KINDS == KINDS
    assert FineTuneConfig(kind="Feature+response").kind == "response+feature"
    with pytest.raises(ConfigError, match="unknown distillation kind"):
        parse_step({"technique": "fine_tune", "kind": "logits"})


def test_fine_tune_auto_screens_every_kind_and_trains_with_the_best():
    from edgeopt.techniques.pruning.prune import apply_prune
    from edgeopt.techniques.retraining.finetune import apply_finetune

    model, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    small, _ = apply_prune(model, x, PruneConfig(ratio=0.5))
    tuned, rec = apply_finetune(small, x, FineTuneConfig(kind="auto", epochs=1), teacher=model,
                                train_data=train.items[:12])
    screen = rec["kind_screen"]
    assert set(screen["scores"]) == {"response", "feature", "relation", "response+feature"}
    assert screen["chosen"] == max(screen["scores"], key=screen["scores"].get) == rec["distillation"]
    assert screen["metric"] == "top1" and screen["held_out_samples"] > 0
    assert top1(tuned, val) > top1(small, val) + 20  # the full fine-tuning ran with the chosen kind
    assert screen["start"] < max(screen["scores"].values())  # a cut model: every kind beats it as it came


def test_fine_tuning_that_would_lower_the_held_out_score_keeps_the_model_unchanged():
    """A student already as good as its teacher (here: the teacher itself) and a learning rate that wrecks it:
    every kind's probe scores below the student as it came, the best one's kind trains, scores lower too, and
    the student is kept with its weights untouched, saying why."""
    import copy

    from edgeopt.techniques.retraining.finetune import apply_finetune

    model, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    student = copy.deepcopy(model)
    tuned, rec = apply_finetune(student, x, FineTuneConfig(kind="auto", epochs=1, lr=50.0), teacher=model,
                                train_data=train.items[:12])
    screen = rec["kind_screen"]
    assert screen["probes_below_start"] and screen["chosen"] in screen["scores"]
    assert rec["distillation"] == "unchanged" and rec["epochs"] == 0
    assert screen["start"] > max(screen["scores"].values())
    assert "fine-tuning lowered its score" in rec["kept_unchanged"]
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    assert top1(tuned, val) == top1(model, val)


def test_probes_below_the_start_do_not_veto_a_fine_tuning_that_recovers(monkeypatch):
    """A probe is one short epoch; a fine-tuning hundreds of steps. When every probe scored below the student as
    it came, the best probe's kind and rate still train, and the result is kept because it scores higher."""
    from edgeopt.techniques.pruning.prune import apply_prune
    from edgeopt.techniques.retraining import finetune
    from edgeopt.training import screen

    model, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    cut = apply_prune(model, x, PruneConfig(ratio=0.6))[0]
    record = {"chosen": screen.UNCHANGED, "metric": "top1", "start": 101.0, "lr": 0.01, "seconds": 0.1,
              "scores": {"response": 10.0, "feature": 20.0}}  # every probe below the start: the old veto
    monkeypatch.setattr(screen, "choose_kind", lambda *a, **k: (screen.UNCHANGED, dict(record)))
    tuned, rec = finetune.apply_finetune(cut, x, FineTuneConfig(kind="auto", epochs=3), teacher=model,
                                         train_data=train.items)
    assert rec["epochs"] == 3 and rec["distillation"] == "feature" and "kept_unchanged" not in rec
    assert rec["kind_screen"]["probes_below_start"] and rec["kind_screen"]["chosen"] == "feature"
    assert top1(tuned, val) > top1(cut, val) + 5


def test_the_kind_screen_runs_once_per_run_and_a_reused_choice_is_checked(monkeypatch):
    """YOLOv8n's depth1-ft ran 45 s screening again (11 s without), for the choice the first screen made: later
    fine-tunings of the same teacher on the same data take the first screen's kind and rate; each is kept
    only if it scores above its student as it came, which no probe of its own checked."""
    import copy

    from edgeopt.techniques.pruning.prune import apply_prune
    from edgeopt.techniques.retraining import finetune
    from edgeopt.training import screen

    screens = []
    real = screen.choose_kind
    monkeypatch.setattr(screen, "choose_kind", lambda *a, **k: screens.append(1) or real(*a, **k))
    model, train, val = smallnet.trained(size=8)
    from edgeopt.inputs.data import Batches

    x, data = val.items[0][0][:1], Batches(train.items[:12])
    first, rec1 = finetune.apply_finetune(apply_prune(model, x, PruneConfig(ratio=0.5))[0], x,
                                          FineTuneConfig(kind="auto", epochs=1), teacher=model, train_data=data)
    small = apply_prune(model, x, PruneConfig(ratio=0.4))[0]
    second, rec2 = finetune.apply_finetune(small, x, FineTuneConfig(kind="auto", epochs=1), teacher=model,
                                           train_data=data)
    assert len(screens) == 1 and "screened_before" in rec2["kind_screen"]
    assert rec2["distillation"] == rec1["distillation"] and rec2["lr"] == rec1["lr"] and rec2["epochs"] == 1
    assert top1(second, val) > top1(small, val) + 20  # fine-tuned, and kept: it scored above the cut model
    # other data: screened again
    finetune.apply_finetune(small, x, FineTuneConfig(kind="auto", epochs=1), teacher=model,
                            train_data=Batches(train.items[:10]))
    assert len(screens) == 2
    # a rate that wrecks the student: the first screen keeps the teacher's copy unchanged by its probes; the
    # reused choice trains the next copy, scores it below the copy as it came, and keeps the copy unchanged
    wreck = FineTuneConfig(kind="auto", epochs=1, lr=50.0)
    finetune.apply_finetune(copy.deepcopy(model), x, wreck, teacher=model, train_data=data)
    kept, rec = finetune.apply_finetune(copy.deepcopy(model), x, wreck, teacher=model, train_data=data)
    assert len(screens) == 3 and "screened_before" in rec["kind_screen"]
    assert rec["distillation"] == "unchanged" and "fine-tuning lowered its score" in rec["kept_unchanged"]
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    from edgeopt.techniques.retraining.fine_tune_technique import kind_decision

    d = kind_decision([("prune-ft40", rec2), ("ft-copy", rec)])
    assert "prune-ft40: " in d.reason and "(as first screened)" in d.reason
    assert "(as first screened; then kept unchanged: fine-tuning lowered its score" in d.reason
    assert "scored (top1)" in d.reason


def test_the_fine_tuning_rate_is_screened_unless_one_is_given():
    """A rate that wrecks the student loses the screen to a gentler one, every kind is then probed at the
    winner, and the full fine-tuning runs at it; a rate the user gave is used as given."""
    from edgeopt.techniques.pruning.prune import apply_prune
    from edgeopt.techniques.retraining.finetune import apply_finetune
    from edgeopt.training.screen import choose_kind

    model, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    small, _ = apply_prune(model, x, PruneConfig(ratio=0.5))
    _, screen = choose_kind(small, model, train.items[:12], lr=50.0, rates=(0.05,))
    assert set(screen["rates"]) == {"50", "0.05"} and screen["rates"]["0.05"] > screen["rates"]["50"]
    assert screen["lr"] == 0.05 and screen["scores"]["response"] == screen["rates"]["0.05"]
    _, rec = apply_finetune(small, x, FineTuneConfig(kind="auto", epochs=1), teacher=model,
                            train_data=train.items[:12])
    rates = rec["kind_screen"]["rates"]
    assert len(rates) == 3 and rec["lr"] == rec["kind_screen"]["lr"]
    assert rates[f"{rec['lr']:g}"] == max(rates.values())
    _, rec = apply_finetune(small, x, FineTuneConfig(kind="auto", epochs=1, lr=0.02), teacher=model,
                            train_data=train.items[:12])
    assert "rates" not in rec["kind_screen"] and rec["lr"] == rec["kind_screen"]["lr"] == 0.02
    # "not given" survives a config's round trip (torchrun followers and the cache rebuild steps from dumps):
    # a follower that read the default as given would probe fewer times than rank 0, and the collectives hang
    again = FineTuneConfig(**FineTuneConfig(kind="auto").model_dump())
    assert again.lr is None and FineTuneConfig(**FineTuneConfig(lr=0.02).model_dump()).lr == 0.02


def test_a_layernorm_model_screens_adamw_beside_sgd_and_fine_tunes_with_the_winner():
    """A model normalised by LayerNorm/GroupNorm (trained with AdamW, as transformers and ConvNeXts are) has
    AdamW's rates probed beside SGD's, and the full fine-tuning runs with the setting that scored best; a
    BatchNorm CNN is probed at SGD's only (above); an optimizer given is screened at its own rates."""
    from edgeopt.techniques.retraining.finetune import apply_finetune, layer_normed

    torch.manual_seed(0)
    _, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    teacher = nn.Sequential(nn.Conv2d(x.shape[1], 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    fit(teacher, train.items[:12], epochs=2, lr=1e-3, optimizer="adamw")
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.add_(0.3 * torch.randn_like(student[0].weight))
    assert layer_normed(teacher) and not layer_normed(smallnet.trained(size=8)[0])
    _, rec = apply_finetune(student, x, FineTuneConfig(kind="auto", epochs=1), teacher=teacher,
                            train_data=train.items[:12])
    rates = rec["kind_screen"]["rates"]
    assert set(rates) == {"0.01", "0.001", "0.0001", "adamw 0.0001", "adamw 3e-05"}
    best = max(rates, key=rates.get)
    assert rec["optimizer"] == rec["kind_screen"]["optimizer"] == ("adamw" if best.startswith("adamw") else "sgd")
    assert f"{rec['lr']:g}" == best.split()[-1]
    _, rec = apply_finetune(student, x, FineTuneConfig(kind="auto", epochs=1, optimizer="adamw"), teacher=teacher,
                            train_data=train.items[:12])
    assert set(rec["kind_screen"]["rates"]) == {"adamw 0.0001", "adamw 3e-05"} and rec["optimizer"] == "adamw"
    with pytest.raises(ValueError, match="optimizer"):
        FineTuneConfig(optimizer="adam")


def test_planner_fine_tunes_with_the_auto_kind_when_retraining():
    p = _plan(retrain=True)
    kinds = {s.kind for c in p.candidates for s in c.steps if s.technique == "fine_tune"}
    assert kinds == {"auto"}
    assert next(d for d in p.decisions if d.technique == "distillation_kind").decision == "applied"
    assert not any(d.technique == "distillation_kind" for d in _plan(retrain=False).decisions)


# ---- IMP rewinding point by linear mode connectivity -------------------------------------------------------
def test_imp_auto_rewind_records_the_barriers_it_chose_by():
    from edgeopt.techniques.sparsity.lottery import LMC_BARRIER_PP, apply_imp

    model, train, val = smallnet.trained(size=8)
    pruned, rec = apply_imp(model, val.items[0][0][:1], IMPConfig(sparsity=0.5, rounds=1, epochs=1, rewind="auto"),
                            train_data=train)
    lmc = rec["rewind_auto"]
    first = lmc["barriers"]["0"]
    assert lmc["threshold_pp"] == LMC_BARRIER_PP and len(first["errors"]) == 5
    assert first["stable"] == (first["barrier_pp"] < LMC_BARRIER_PP)
    assert (rec["rewind"], rec["rewind_epoch"]) == (("init", 0) if first["stable"] else ("lr", 0))
    assert abs(rec["rounds"][-1]["sparsity"] - 0.5) < 0.02


def test_rewind_falls_back_to_lr_when_no_epoch_is_stable():
    from edgeopt.techniques.sparsity.lottery import choose_rewind

    _, train, val = smallnet.trained(size=8)
    small = train.items[:4]
    rewind, epoch, rec = choose_rewind(smallnet.make(), small, fit, lambda m: top1(m, val.items), epochs=2,
                                       threshold=-1.0, lr=0.05)  # a barrier can never be under -1 pp
    assert (rewind, epoch) == ("lr", 0) and set(rec["barriers"]) == {"0", "1"}
    assert all(not b["stable"] for b in rec["barriers"].values()) and "fallback" in rec


def test_imp_auto_needs_held_out_data_and_the_planner_uses_it():
    import edgeopt

    _, train, _ = smallnet.trained(size=8)
    with pytest.raises(ConfigError, match="held-out data"):
        edgeopt.imp(smallnet.make(), train.items[:2], ratio=0.5, rounds=1, epochs=1, rewind="auto")
    imp = [c for c in _plan(goal="size", retrain=True).candidates if c.family == "imp"]
    assert imp and all(c.steps[0].rewind == "auto" for c in imp)
    from edgeopt.techniques.sparsity import imp_technique, lottery

    assert imp_technique.LMC_BARRIER_PP == lottery.LMC_BARRIER_PP  # the decision quotes what the technique measures
    assert f"< {lottery.LMC_BARRIER_PP} pp" in next(d.reason for d in _plan(goal="size", retrain=True).decisions
                                                    if d.technique == "imp")


# ---- pruning at initialisation: SNIP, GraSP and SynFlow screened as families ---------------------------------
def test_from_scratch_screens_snip_grasp_and_synflow_as_families():
    p = _plan(goal="size", from_scratch=True)
    pai = [c for c in p.candidates if any(s.technique == "prune_at_init" for s in c.steps)]
    assert {c.family for c in pai} == {"snip", "grasp", "synflow"}
    assert all(c.steps[0].method == c.family for c in pai)
    d = next(d for d in p.decisions if d.technique == "prune_at_init")
    assert d.decision == "applied" and "bisected" in d.reason


def test_measured_choices_become_report_decisions_with_their_numbers():
    """The kind screen, the LMC rewinding check and sparsity training, recorded inside candidates' steps,
    are lifted into one report decision each, quoting the measured numbers; nothing recorded, no decision."""
    from edgeopt.engine.choices import measured_choices
    from edgeopt.report import Candidate, Step

    ft = Step(technique="fine_tune", params={"record": {"kind_screen": {
        "chosen": "feature", "metric": "top1", "scores": {"response": 91.5, "feature": 93.25}}}})
    imp = Step(technique="imp", params={"record": {"rewind_auto": {
        "chosen_epoch": 1, "threshold_pp": 2.0, "barriers": {"0": {"barrier_pp": 9.5}, "1": {"barrier_pp": 0.75}}}}})
    slim = Step(technique="slimming", params={"record": {
        "gamma_before": {"mean_abs_gamma": 0.9, "share_below_0.01": 0.0},
        "gamma_after": {"mean_abs_gamma": 0.2, "share_below_0.01": 0.4}}})
    cands = [Candidate(id="prune-l250-ft@onnx-fp32", status="ok", steps=[Step(technique="prune"), ft]),
             Candidate(id="prune-l250-ft@openvino-fp32", status="ok", steps=[Step(technique="prune"), ft]),
             Candidate(id="imp80@onnx-fp32", status="rejected", steps=[imp]),
             Candidate(id="slim50@onnx-fp32", status="ok", steps=[slim])]
    got = {d.technique: d.reason for d in measured_choices(cands)}
    assert set(got) == {"distillation_kind", "imp_rewind", "slimming_training"}
    assert "prune-l250-ft: feature (feature 93.25, response 91.50)" in got["distillation_kind"]
    assert got["distillation_kind"].count("prune-l250-ft") == 1  # one structure, several runtimes
    assert "epoch 0: 9.50 pp, epoch 1: 0.75 pp" in got["imp_rewind"] and "rewound to epoch 1" in got["imp_rewind"]
    assert "0.900 -> 0.200" in got["slimming_training"] and "0% -> 40%" in got["slimming_training"]
    assert measured_choices([Candidate(id="prune-l250@onnx-fp32", status="ok", steps=[Step(technique="prune")])]) == []


# ---- fine-tuning length: optimizer steps, not passes over a small training split ---------------------------
def test_planned_epochs_reach_about_the_step_target_on_a_small_training_split():
    from edgeopt.decide import policy

    assert policy.planned_epochs(None, None) == policy.FINETUNE_EPOCHS  # nothing known: the default
    assert policy.planned_epochs(None, 19) == round(policy.FINETUNE_STEPS / 19)  # 600 images at batch 32: 16
    assert policy.planned_epochs(None, 94) == 3  # a detection set of ~1,500 images at batch 16: about 300 steps
    assert policy.planned_epochs(None, 1000) == policy.FINETUNE_EPOCHS  # a large split: never fewer than 2
    assert policy.planned_epochs(None, 2) == policy.FINETUNE_MAX_EPOCHS  # a handful of samples: capped
    assert policy.planned_epochs(1, 19) == 1  # --epochs as given


def test_the_plan_fine_tunes_a_small_split_longer_and_says_why_unless_epochs_are_given():
    def fine_tuning(p):
        steps = [s for c in p.candidates for s in c.steps if s.technique == "fine_tune"]
        assert steps
        return {s.epochs for s in steps}, next(d.reason for d in p.decisions if d.technique == "fine_tune")

    local = load_target("x86-amx").model_copy(update={"detected": False})

    def planned(steps_per_epoch, **ctx):
        return plan(make_context(target="x86-amx", retrain=True, **ctx), load_target("x86-amx"), SUMMARY, local,
                    ["onnxruntime"], has_calib_data=True, has_train_data=True, train_steps_per_epoch=steps_per_epoch)

    epochs, why = fine_tuning(planned(19))
    assert epochs == {16} and "16 epochs each, not 2" in why and "19 steps an epoch" in why and "304" in why
    p = planned(19)
    assert p.qat_epochs == 16  # QAT recovers like fine-tuning does
    epochs, why = fine_tuning(planned(19, epochs=2))
    assert epochs == {2} and "as given (38 optimizer steps)" in why
    epochs, why = fine_tuning(planned(500))
    assert epochs == {2} and "not 2" not in why
    epochs, _ = fine_tuning(planned(None))  # the split's size unknown: the default
    assert epochs == {2}


def test_steps_per_epoch_is_what_the_training_loop_runs():
    from edgeopt.inputs.data import Batches, TrainFeed
    from edgeopt.inputs.data.epochs import steps_per_epoch

    batches = [(torch.randn(8, 3, 4, 4), torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    batches.append((torch.randn(3, 3, 4, 4), torch.zeros(3, dtype=torch.long)))
    for data in (batches, Batches(batches)):
        assert steps_per_epoch(data) == TrainFeed(data).steps() == 5


def test_a_fine_tuning_shortened_to_fit_says_so_in_its_record_and_decision(monkeypatch):
    """A fine-tuning ended early to fit the search's time (training/loop.py) is not the structure its name
    describes: its record says how many of its planned steps ran and why, and the report's decision lists it."""
    import time

    from edgeopt.techniques.pruning.prune import apply_prune
    from edgeopt.techniques.retraining import finetune
    from edgeopt.techniques.retraining.fine_tune_technique import kind_decision
    from edgeopt.training import loop

    model, train, val = smallnet.trained(size=8)
    x = val.items[0][0][:1]
    cut = apply_prune(model, x, PruneConfig(ratio=0.5))[0]
    # no time left after the steps that judge the forecast, and no floor: the run ends there
    monkeypatch.setattr(loop, "current_fit_by", time.perf_counter)
    monkeypatch.setattr(loop, "MIN_FIT_SHARE", 0.0)
    _, rec = finetune.apply_finetune(cut, x, FineTuneConfig(epochs=3), teacher=model, train_data=train.items)
    assert rec["steps"] == loop.FORECAST_STEPS + 1 and rec["planned_steps"] == 3 * len(train.items)
    assert rec["shortened"].startswith(f"{rec['steps']} of its {rec['planned_steps']} planned steps")
    d = kind_decision([("prune-ft50", rec)])
    assert "fine-tuned for fewer steps than planned: prune-ft50: 4 of its" in d.reason


def test_qat_is_chosen_for_an_int8_twin_that_failed_verification_not_for_one_that_failed_to_export():
    """QAT retrains an INT8 whose outputs were too far off PyTorch's; an INT8 whose converter failed has nothing
    QAT would repair. The kind of failure is read from the candidate's `failure`, not from its reason's words."""
    from edgeopt.decide.precisions import qat_choice

    def rows(failure):
        return [("prune30", 50, 90.0, "ok", 89.5, None), ("prune50", 30, 89.8, "failed", None, failure)]

    assert qat_choice(rows("verification"), 90.0, 1.0) == ("prune50", "its verification")
    structure, why = qat_choice(rows("export"), 90.0, 1.0)
    assert structure is None and "stays within the accuracy budget" in why
