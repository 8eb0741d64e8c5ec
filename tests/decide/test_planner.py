import pytest

from edgeopt.config import ModelSummary, make_context
from edgeopt.decide.plan import plan
from edgeopt.errors import ConfigError, UnknownNameError
from edgeopt.targets import detect_local, load_target

SUMMARY = ModelSummary(params=1_000_000, macs=100_000_000, input_shape=[1, 3, 64, 64], num_outputs=10,
                       prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})


def _plan(target="x86-amx", installed=("onnxruntime", "openvino"), **ctx):
    local = load_target("x86-amx").model_copy(update={"detected": False})
    return plan(make_context(target=target, **ctx), load_target(target), SUMMARY, local, list(installed),
                has_calib_data=True)


def test_cpu_plan_has_pruning_runtimes_and_reasons():
    p = _plan()
    assert p.measure_locally
    assert p.candidates[0].id == p.baseline_id and p.candidates[0].steps == []
    assert {c.format for c in p.candidates} == {"onnx", "openvino"}
    assert any(c.precision == "bf16" for c in p.candidates)  # AMX accelerates bf16
    assert any(s.technique == "prune" for c in p.candidates for s in c.steps)
    assert all(c.reason for c in p.candidates)
    by = {d.technique: d for d in p.decisions}
    assert by["unstructured_pruning"].decision == "rejected" and "dense" in by["unstructured_pruning"].reason
    assert by["channel_rounding"].decision == "applied"


def test_avx2_target_gets_no_bf16():
    p = _plan(target="x86-avx2")
    assert not any(c.precision == "bf16" for c in p.candidates)
    assert any(d.technique.startswith("quantize:bf16") and d.decision == "skipped" for d in p.decisions)


def test_remote_gpu_target_is_estimated():
    p = _plan(target="jetson")
    assert not p.measure_locally and any("estimate" in n for n in p.notes)


def test_missing_runtime_is_skipped_with_reason():
    p = _plan(installed=("onnxruntime",))
    assert {c.format for c in p.candidates} == {"onnx"}
    assert any(d.technique == "runtime:openvino" and d.decision == "skipped" for d in p.decisions)


def test_techniques_filter_and_unknown_name():
    p = _plan(techniques=["quantize"])
    assert not any(s.technique == "prune" for c in p.candidates for s in c.steps)
    with pytest.raises(UnknownNameError, match="did you mean 'prune'"):
        _plan(techniques=["prun"])


@pytest.mark.parametrize("width,kept,multiple,expected", [
    (64, 51, 16, 64),   # a partial block costs a whole one: kept
    (64, 45, 16, 48),
    (64, 48, 16, 48),   # whole blocks stay as asked
    (80, 40, 16, 48),   # never above the width, and a width off the blocks still reaches whole ones
    (80, 79, 16, 80),
    (32, 20, 16, 24),   # narrower than four blocks: smaller multiples, so it can still be cut in steps
    (16, 11, 16, 12),
    (7, 3, 1, 3),       # no multiple: as asked
])
def test_kept_channels_round_up_to_whole_blocks(width, kept, multiple, expected):
    from edgeopt.techniques.pruning.graph_surgery import rounded_kept

    assert rounded_kept(width, kept, multiple) == expected


def test_an_avx512_machine_prunes_in_blocks_of_16(monkeypatch):
    import edgeopt.targets as targets

    for flags, kind, multiple in [({"avx2", "avx512f", "avx512_vnni"}, "cpu", 16), ({"avx2", "fma"}, "cpu", 8),
                                  ({"asimd"}, "cpu", 4), ({"avx2"}, "gpu", 16)]:
        assert targets._channel_multiple(flags, kind) == multiple


def test_unprunable_model_skips_pruning_with_reason():
    s = SUMMARY.model_copy(update={"prunable_groups": 0, "unprunable": ["model: graph failed"]})
    p = plan(make_context(), load_target("x86-amx"), s, detect_local(), ["onnxruntime"])
    assert all(s.technique != "prune" for c in p.candidates for s in c.steps)
    assert any(d.technique == "prune" and "graph failed" in d.reason for d in p.decisions)


@pytest.mark.parametrize("kwargs,msg", [({"goal": "speed"}, "goal"), ({"max_accuracy_drop": -1}, "max_accuracy_drop"),
                                        ({"colour": "red"}, "colour")])
def test_bad_context(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        make_context(**kwargs)


# ---- the decision grid: CPU/GPU x latency/size x retrain/no-retrain x tight/loose budget ----------------
def _grid_plan(kind, goal, retrain, budget):
    target = "x86-amx" if kind == "cpu" else "nvidia-gpu"
    local = load_target("x86-amx").model_copy(update={"detected": False})
    ctx = make_context(target=target, goal=goal, retrain=retrain, max_accuracy_drop=budget)
    return plan(ctx, load_target(target), SUMMARY, local, ["onnxruntime", "openvino"], has_calib_data=True,
                has_train_data=True)


def _ratios(p):
    return sorted({s.ratio for c in p.candidates for s in c.steps if s.technique == "prune"})


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
@pytest.mark.parametrize("goal", ["latency", "size"])
@pytest.mark.parametrize("retrain", [False, True])
@pytest.mark.parametrize("budget", [0.3, 3.0])
def test_decision_grid(kind, goal, retrain, budget):
    p = _grid_plan(kind, goal, retrain, budget)
    by = {d.technique: d for d in p.decisions}
    # every candidate and every decision carries a reason
    assert all(c.reason for c in p.candidates) and all(d.reason for d in p.decisions)
    # structured pruning is always proposed for a prunable model, in families the search can bisect
    pruned = [c for c in p.candidates if any(s.technique == "prune" for s in c.steps)]
    assert pruned and all(c.family and c.family.startswith("prune-") for c in pruned)
    assert by["prune"].decision == "applied"
    # weight sparsity only where it pays off: a size goal (zeros compress) or 2:4 sparse tensor cores
    sparse = [c for c in p.candidates if any(s.technique in ("unstructured", "imp") for s in c.steps)]
    if goal == "size":
        d = by["imp" if retrain else "unstructured_pruning"]
        assert d.decision == "applied" and "compress" in d.reason
        assert sparse and all(c.family in ("sparse", "imp") for c in sparse)
    elif kind == "gpu" and retrain:
        assert by["unstructured_pruning"].decision == "applied" and "2:4" in by["unstructured_pruning"].reason
        assert sparse and all(c.structure == "sparse24-ft" for c in sparse)
    else:
        assert not sparse and by["unstructured_pruning"].decision == "rejected"
        assert ("--retrain" if kind == "gpu" else "dense kernels") in by["unstructured_pruning"].reason
    # pruning at initialisation needs --from-scratch
    assert by["prune_at_init"].decision == "skipped" and "--from-scratch" in by["prune_at_init"].reason
    # retraining: fine-tuning follows every pruning step but the reconstruction alone (searched first, as the
    # floor the fine-tuned levels start beyond), and the ratios go further
    ft = [c for c in pruned if any(s.technique == "fine_tune" for s in c.steps)]
    if retrain:
        plain = [c for c in pruned if c not in ft]
        assert by["fine_tune"].decision == "applied" and ft and all(c.family == "prune-recon" for c in plain)
        assert max(_ratios(p)) >= 0.6
    else:
        assert by["fine_tune"].decision == "skipped" and "no retraining" in by["fine_tune"].reason
        assert not ft and max(_ratios(p)) <= 0.6
        assert by["qat"].decision == "rejected"
    # tight vs loose: a tight budget starts and ends milder than a loose one
    other = _grid_plan(kind, goal, retrain, 3.0 if budget < 1 else 0.3)
    tight, loose = (p, other) if budget < 1 else (other, p)
    assert min(_ratios(tight)) < min(_ratios(loose)) or max(_ratios(tight)) < max(_ratios(loose))
    assert ("tight" if budget < 1 else "loose") in by["search"].reason
    # GPU target is not this machine: estimated, one runtime; CPU target measured here with bf16 (AMX)
    if kind == "gpu":
        assert not p.measure_locally
    else:
        assert p.measure_locally and any(c.precision == "bf16" for c in p.candidates)


def test_factorize_proposed_only_when_registered_and_fitting(monkeypatch):
    from edgeopt.techniques import TECHNIQUES, Technique

    if "factorize" not in TECHNIQUES:
        fake = Technique("factorize", type(make_context()), None, "model", False, False, "test row")
        monkeypatch.setitem(TECHNIQUES._items, "factorize", fake)
    cpu = _grid_plan("cpu", "latency", True, 1.0)
    fac = [c for c in cpu.candidates if any(s.technique == "factorize" for s in c.steps)]
    assert fac and {c.family for c in fac} == {"factorize-tucker", "factorize-tucker-vbmf", "factorize-cp",
                                                "factorize-svd"}
    assert all(c.screen == "factorize-method" for c in fac)
    assert {s.method for c in fac for s in c.steps if s.technique == "factorize"} == {"tucker", "cp", "svd"}
    # without retraining: VBMF ranks and CP layers need fine-tuning to recover, so only Tucker by energy and SVD
    untrained = _grid_plan("cpu", "latency", False, 1.0)
    fac = [c for c in untrained.candidates if any(s.technique == "factorize" for s in c.steps)]
    assert {c.family for c in fac} == {"factorize-tucker", "factorize-svd"}
    why = next(d for d in untrained.decisions if d.technique == "factorize")
    assert "not tried without retraining: tucker-vbmf, cp" in why.reason
    gpu = _grid_plan("gpu", "latency", False, 1.0)
    assert not any(s.technique == "factorize" for c in gpu.candidates for s in c.steps)
    assert any(d.technique == "factorize" and d.decision == "skipped" and "GPU" in d.reason
               for d in gpu.decisions)
    assert any(s.technique == "factorize" for c in _grid_plan("gpu", "size", False, 1.0).candidates
               for s in c.steps)


def test_int8_precisions_need_int8_hardware():
    local = load_target("x86-amx").model_copy(update={"detected": False})
    fmts = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8", "int8_weights")}
    amx = plan(make_context(target="x86-amx"), load_target("x86-amx"), SUMMARY, local,
               ["onnxruntime", "openvino"], precisions_of_format=fmts, has_calib_data=True)
    assert {"int8", "int8_weights"} <= {c.precision for c in amx.candidates}
    avx2 = plan(make_context(target="x86-avx2"), load_target("x86-avx2"), SUMMARY, local,
                ["onnxruntime", "openvino"], precisions_of_format=fmts, has_calib_data=True)
    assert not any(c.precision.startswith("int8") for c in avx2.candidates)
    assert any(d.technique == "quantize:int8_weights@openvino" and "no int8" in d.reason for d in avx2.decisions)


def test_retrain_without_training_data_is_explained():
    local = load_target("x86-amx").model_copy(update={"detected": False})
    p = plan(make_context(retrain=True, target="x86-amx"), load_target("x86-amx"), SUMMARY, local,
             ["onnxruntime"], has_calib_data=True, has_train_data=False)
    by = {d.technique: d for d in p.decisions}
    assert by["fine_tune"].decision == "skipped" and "no training data" in by["fine_tune"].reason


def test_int8_needs_calibration_data_unless_random_is_asked():
    local = load_target("x86-amx").model_copy(update={"detected": False})
    fmts = {"onnx": ("fp32", "int8")}
    p = plan(make_context(target="x86-amx"), load_target("x86-amx"), SUMMARY, local, ["onnxruntime"],
             precisions_of_format=fmts, has_calib_data=False)
    assert not any(c.precision == "int8" for c in p.candidates)
    assert any(d.technique == "quantize:int8@onnxruntime" and "calibration" in d.reason for d in p.decisions)
    p = plan(make_context(target="x86-amx", calib_random=True), load_target("x86-amx"), SUMMARY, local,
             ["onnxruntime"], precisions_of_format=fmts, has_calib_data=False)
    assert any(c.precision == "int8" for c in p.candidates)


# ---- the retraining toolbox in the plan --------------------------------------------------------------
def _plan8(goal="latency", target="x86-amx", int8=True, **ctx):
    local = load_target("x86-amx").model_copy(update={"detected": False})
    precs = {"onnx": ("fp32", "int8") if int8 else ("fp32",), "openvino": ("fp32",)}
    return plan(make_context(target=target, goal=goal, **ctx), load_target(target), SUMMARY, local,
                ["onnxruntime", "openvino"], has_calib_data=True, has_train_data=True, precisions_of_format=precs)


def test_from_scratch_implies_retrain_and_proposes_snip_only_for_size():
    assert make_context(from_scratch=True).retrain is True
    size = _plan8(goal="size", from_scratch=True)
    snip = [c for c in size.candidates if any(s.technique == "prune_at_init" for s in c.steps)]
    assert snip and {c.family for c in snip} == {"snip", "grasp", "synflow"}
    levels = sorted({c.level for c in snip})
    assert levels == sorted(levels) and levels[0] >= 0.5
    assert all(s.epochs >= 5 for c in snip for s in c.steps)
    lat = _plan8(goal="latency", from_scratch=True)
    d = next(d for d in lat.decisions if d.technique == "prune_at_init")
    assert d.decision == "rejected" and "unstructured" in d.reason
    assert not any(s.technique == "prune_at_init" for c in lat.candidates for s in c.steps)


def test_qat_is_armed_only_with_retraining_and_int8():
    armed = _plan8(retrain=True)
    assert armed.qat_formats == ["onnx"]
    assert next(d for d in armed.decisions if d.technique == "qat").decision == "applied"
    assert _plan8(retrain=False).qat_formats == []
    no_int8 = _plan8(retrain=True, int8=False)
    assert no_int8.qat_formats == [] and "no INT8" in next(d for d in no_int8.decisions if d.technique == "qat").reason
    excluded = _plan8(retrain=True, techniques=["prune", "fine_tune", "quantize"])
    assert excluded.qat_formats == []


def test_size_goal_with_retraining_uses_imp_and_2_4_keeps_zeros_through_fine_tuning():
    imp = [c for c in _plan8(goal="size", retrain=True).candidates if c.family == "imp"]
    assert imp and all(c.steps[0].rewind == "auto" for c in imp)
    gpu = _plan8(target="jetson-agx-orin", retrain=True)
    s24 = [c for c in gpu.candidates if c.structure == "sparse24-ft"]
    assert s24 and s24[0].steps[0].pattern == "2:4" and s24[0].steps[1].keep_sparsity


def test_sensitivity_reaches_every_prune_step():
    local = load_target("x86-amx").model_copy(update={"detected": False})
    drops = {"conv1": 5.0, "layer1.0.conv1": 0.1}
    p = plan(make_context(), load_target("x86-amx"), SUMMARY, local, ["onnxruntime"], sensitivity=drops)
    prune_steps = [s for c in p.candidates for s in c.steps if s.technique == "prune"]
    assert prune_steps and all(s.sensitivity == drops for s in prune_steps)
    assert "sensitivity" in next(d for d in p.decisions if d.technique == "prune").reason


def test_techniques_filter_holds_for_sparsity():
    only_imp = _plan8(goal="size", techniques=["prune", "imp"])  # no retraining: IMP impossible, magnitude excluded
    assert not any(s.technique in ("unstructured", "imp") for c in only_imp.candidates for s in c.steps)
    with_retrain = _plan8(goal="size", retrain=True, techniques=["prune", "imp", "fine_tune"])
    assert {c.family for c in with_retrain.candidates if c.family in ("imp", "sparse")} == {"imp"}


def test_size_goal_on_cpu_without_int8_units_gets_weight_only_int8():
    from edgeopt.formats import BACKENDS

    def _plan(target, **ctx):  # what the CLI and the pipeline pass: the precisions the backends produce
        local = load_target("x86-amx").model_copy(update={"detected": False})
        return plan(make_context(target=target, **ctx), load_target(target), SUMMARY, local,
                    ["onnxruntime", "openvino"], precisions_of_format={n: b.precisions for n, b in BACKENDS.items()})

    size = _plan(target="x86-avx2", goal="size")
    assert {c.precision for c in size.candidates} >= {"fp32", "int8w"}
    assert not any(c.precision == "int8" for c in size.candidates)  # no int8 compute units: still skipped
    assert {c.format for c in size.candidates if c.precision == "int8w"} == {"onnx", "openvino"}
    latency = _plan(target="x86-avx2", goal="latency")
    assert not any(c.precision == "int8w" for c in latency.candidates)
    assert any(d.technique.startswith("quantize:int8w") and d.decision == "skipped" and "size goal" in d.reason
               for d in latency.decisions)


# ---- what the screening chooses among: every criterion the data allows, scope and schedule, factorization methods
def _families(p, prefix):
    return {c.family for c in p.candidates if c.family and c.family.startswith(prefix)}


def _crit_plan(calib=True, train=False, summary=SUMMARY, class_labels=None, **ctx):
    local = load_target("x86-amx").model_copy(update={"detected": False})
    return plan(make_context(target="x86-amx", **ctx), load_target("x86-amx"), summary, local, ["onnxruntime"],
                has_calib_data=calib, has_train_data=train, has_class_labels=class_labels)


def test_prune_criteria_follow_the_data():
    screened = {"prune-l2", "prune-l1", "prune-fpgm", "prune-l2-global", "prune-l2-iter3"}
    weights_only = _crit_plan(calib=False)
    assert _families(weights_only, "prune-") == screened  # no BatchNorm in SUMMARY: no bn_scale
    calib = _crit_plan(calib=True)
    assert _families(calib, "prune-") - {"prune-recon", "prune-lat"} == screened | {"prune-energy", "prune-hrank"}
    labels = _crit_plan(calib=True, train=True)
    assert "prune-taylor" in _families(labels, "prune-")  # Taylor needs labelled batches: only with train data
    assert "prune-taylor" not in _families(calib, "prune-")
    # training data whose targets are not class labels of a classifier (a detector's boxes, masks): no Taylor
    assert "prune-taylor" not in _families(_crit_plan(calib=True, train=True, class_labels=False), "prune-")
    bn = _crit_plan(summary=SUMMARY.model_copy(update={"layers": {**SUMMARY.layers, "batchnorm": 8}}))
    assert "prune-bn_scale" in _families(bn, "prune-")
    crit = [c for c in labels.candidates if c.family and c.family not in ("prune-recon", "prune-lat")
            and c.family.startswith("prune-")]
    assert all(c.screen == "prune-criterion" for c in crit)
    steps = {c.family: c.steps[0] for c in crit}
    assert steps["prune-taylor"].importance == "taylor" and steps["prune-l2-global"].scope == "global"
    assert steps["prune-l2-iter3"].iterative_steps == 3 and steps["prune-l2"].scope == "local"
    # every family of the group shares one ratio ladder: the screening compares them at one common ratio
    ratios = {f: sorted(c.level for c in crit if c.family == f) for f in steps}
    assert len({tuple(r) for r in ratios.values()}) == 1
    why = next(d.reason for d in labels.decisions if d.technique == "prune")
    assert "taylor" in why and "screened" in why
    # reconstruction reaches further than any criterion, which a screening at their mild common ratio cannot
    # show: its own family, bisected on its own, planned (and so searched) before the criteria
    assert {c.screen for c in calib.candidates if c.family == "prune-recon"} == {None}
    order = [c.family for c in calib.candidates if c.family]
    assert order.index("prune-recon") < order.index("prune-l2")
    assert {s.batches for c in crit for s in c.steps if s.technique == "bn_recalibrate"} == {8}


def test_sensitivity_leaves_out_the_global_variant():
    local = load_target("x86-amx").model_copy(update={"detected": False})
    p = plan(make_context(), load_target("x86-amx"), SUMMARY, local, ["onnxruntime"], sensitivity={"conv1": 1.0})
    fams = _families(p, "prune-")
    assert "prune-l2-global" not in fams and "prune-l2-iter3" in fams


def test_factorize_methods_are_one_screening_group():
    p = _crit_plan(train=True, retrain=True)
    fac = [c for c in p.candidates if c.screen == "factorize-method"]
    fams = {c.family: [] for c in fac}
    for c in fac:
        fams[c.family].append(c)
    vbmf = fams["factorize-tucker-vbmf"]
    assert {c.structure for c in vbmf} == {"factorize-tucker-vbmf-ft"} and vbmf[0].steps[0].rank_method == "vbmf"
    tucker_levels = sorted({c.level for c in fams["factorize-tucker"]})
    assert vbmf[0].level in tucker_levels  # measured beside the others at their common level
    assert {s.method for c in fams["factorize-svd"] for s in c.steps if s.technique == "factorize"} == {"svd"}
    no_linear = _crit_plan(summary=SUMMARY.model_copy(update={"layers": {"conv": 10}}))
    assert "factorize-svd" not in _families(no_linear, "factorize-")
    only_linear = _crit_plan(summary=SUMMARY.model_copy(update={"layers": {"linear": 3}}))
    assert _families(only_linear, "factorize-") == {"factorize-svd"}


def test_factorization_decided_by_the_latency_table_only_when_measured_here():
    here = _crit_plan(calib=True)
    steps = [s for c in here.candidates if c.family and c.family.startswith("factorize-") for s in c.steps
             if s.technique == "factorize"]
    assert steps and {s.lut_runtime for s in steps if s.method != "svd"} == {"onnxruntime"}
    assert "measured faster on onnxruntime" in next(d.reason for d in here.decisions if d.technique == "factorize")
    local = load_target("x86-amx").model_copy(update={"detected": False})
    away = plan(make_context(target="arm64-cpu"), load_target("arm64-cpu"), SUMMARY, local, ["onnxruntime"])
    away_steps = [s for c in away.candidates for s in c.steps if s.technique == "factorize"]
    assert away_steps and all(s.lut_runtime is None for s in away_steps)  # estimated there: no table here


def test_svd_is_not_tried_where_linear_layers_hold_almost_nothing():
    """resnet18's classifier head is 0.0003 % of its MACs: factorizing it can never pay for its builds."""
    tiny_head = SUMMARY.model_copy(update={"layers": {"conv": 10, "linear": 1}, "linear_macs": 5120,
                                           "linear_params": 5130})
    p = _crit_plan(summary=tiny_head)
    assert "factorize-svd" not in _families(p, "factorize-")
    why = next(d for d in p.decisions if d.technique == "factorize_svd")
    assert why.decision == "skipped" and "cannot pay" in why.reason
    big_head = SUMMARY.model_copy(update={"layers": {"conv": 10, "linear": 1}, "linear_macs": SUMMARY.macs // 4,
                                          "linear_params": SUMMARY.params // 2})
    assert "factorize-svd" in _families(_crit_plan(summary=big_head), "factorize-")


def test_analyze_counts_what_linear_layers_hold():
    import torchvision
    from torch import nn

    from edgeopt.inputs.analyze import analyze

    s = analyze(torchvision.models.resnet18(num_classes=10).eval(), (1, 3, 64, 64))
    assert s.linear_macs == 512 * 10 and s.linear_params == 512 * 10 + 10
    vit = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    t = analyze(vit, (2, 5, 8))  # five tokens per sample: every token goes through both layers
    assert t.linear_macs == 5 * (8 * 16 + 16 * 4)
    assert s.residual_blocks == 5 and t.residual_blocks == 0  # what depth pruning's levels are sized by


def test_the_latency_ladder_reaches_deep_targets_with_reconstruction():
    """Without retraining the latency-table allocation (with reconstruction) goes down to 30 % of the layers'
    time, at the INT8 table when the plan measures INT8 on the timing runtime."""
    from edgeopt.techniques.planning import PlanningContext
    from edgeopt.techniques.pruning.prune_technique import propose_latency_allocation

    ctx = PlanningContext(context=make_context(), target=load_target("x86-amx"), summary=SUMMARY,
                          has_calib_data=True, timing_runtime="openvino", format_of_runtime={"openvino": "openvino"},
                          pairs=(("openvino", "fp32", ""), ("openvino", "int8", "")))
    structures = propose_latency_allocation(ctx).structures
    targets = sorted(s.steps[0].latency_target for s in structures)
    assert targets[0] <= 0.3 and targets[-1] >= 0.9 and len(targets) >= 5
    assert all(s.steps[0].reconstruct and s.steps[0].lut_precision == "int8" for s in structures)
    assert [s.level for s in structures] == sorted(s.level for s in structures)  # mildest first: bisectable


def test_retraining_fine_tunes_the_reconstructed_model_instead_of_dropping_it():
    """With retraining allowed, reconstruction stays in the plan as a start for fine-tuning: its own family
    (`prune-recon<r>-ft`, reconstruct then fine-tune), from the mild reconstruction levels up to the retraining
    ladder's furthest, planned before the criteria, after the reconstruction alone. Without calibration data
    there is nothing to reconstruct on."""
    from edgeopt.decide import policy

    p = _crit_plan(calib=True, train=True, retrain=True)
    recon = [c for c in p.candidates if c.family == "prune-recon-ft"]
    assert recon, sorted(_families(p, "prune-"))
    # the reconstruction alone is planned too, ahead of it: each of its levels is a fine-tuned level's twin
    # (the same steps without the fine-tuning), which the search builds that level on
    plain = {c.level: c for c in p.candidates if c.family == "prune-recon"}
    assert plain and all(c.steps == [c.steps[0]] for c in plain.values())
    for c in recon:
        if c.level in plain:
            assert c.steps[:-1] == plain[c.level].steps
    for c in recon:
        assert c.structure.endswith("-ft") and c.screen is None
        assert [s.technique for s in c.steps] == ["prune", "fine_tune"]
        assert c.steps[0].reconstruct and c.steps[0].importance == "recon"
    levels = sorted({c.level for c in recon})
    kind = policy.budget_kind(1.0)  # from the mild reconstruction levels to the retraining ladder's furthest
    assert levels[0] == policy.RECON_RATIOS[kind][0] and levels[-1] == policy.RATIOS[(True, kind)][-1]
    assert set(policy.RECON_RATIOS[kind]) <= set(levels)
    order = [c.family for c in p.candidates if c.family]
    assert order.index("prune-recon") < order.index("prune-recon-ft")
    assert order.index("prune-recon-ft") < min(order.index(f) for f in order if f.startswith("prune-l2"))
    assert any(d.technique == "prune_reconstruct" and "fine-tuning" in d.reason for d in p.decisions)
    assert "prune-recon-ft" not in _families(_crit_plan(calib=False, train=True, retrain=True), "prune-")
