"""Retraining-free pruning: reconstruction of the layers fed by pruned channels, and the `recon` criterion."""

import json

import torch
from torch import nn

import edgeopt
from edgeopt.techniques import TECHNIQUES


def _mlp_with_duplicate():
    """Linear(6->8) -> ReLU -> Linear(8->3) where hidden unit 7 repeats unit 2: one channel is redundant."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[7] = model[0].weight[2]
        model[0].bias[7] = model[0].bias[2]
    return model


def _gauss(n=4, shape=(64, 6), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def test_removing_a_redundant_channel_and_reconstructing_is_exact():
    model = _mlp_with_duplicate()
    calib, x = _gauss(), _gauss(1, seed=9)[0]
    res = edgeopt.prune(model, x[:1], ratio=0.125, method="recon", data=calib, reconstruct=True)
    small = res.model
    assert small[0].out_features == 7
    rec = res.record["reconstruction"]
    assert rec["ran"] and [r["layer"] for r in rec["layers"]] == ["2"]
    with torch.no_grad():
        ref, got = model(x), small(x)
    # the recon criterion found one of the two copies; re-solving the consumer restores the output
    assert torch.allclose(got, ref, atol=1e-3 * ref.abs().max().item()), (got - ref).abs().max()
    assert rec["layers"][0]["error_after"] < 1e-5 < rec["layers"][0]["error_before"]
    naive = edgeopt.prune(model, x[:1], ratio=0.125, method="recon", data=calib).model
    with torch.no_grad():
        assert not torch.allclose(naive(x), ref, atol=1e-2)  # without reconstruction the copy's share is lost


def test_recon_criterion_picks_the_redundant_channel_l2_does_not():
    model = _mlp_with_duplicate()
    with torch.no_grad():  # make the duplicated pair the largest units, so L2 never removes them
        model[0].weight[2] *= 5
        model[0].weight[7] *= 5
    calib = _gauss()
    small = edgeopt.prune(model, calib[0][:1], ratio=0.125, method="recon", data=calib).model
    w = small[0].weight
    assert sum(1 for row in w if torch.allclose(row, model[0].weight[2])) == 1  # exactly one copy left
    l2 = edgeopt.prune(model, calib[0][:1], ratio=0.125, method="l2").model
    assert sum(1 for row in l2[0].weight if torch.allclose(row, model[0].weight[2])) == 2


def _accuracy(model, val):
    model.eval()
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in val.items)
    return 100.0 * hits / len(val)


def test_reconstruction_beats_naive_pruning_on_a_small_cnn():
    import smallnet

    from edgeopt.techniques.repair.bn_recal import recalibrate_bn

    model, train, val = smallnet.trained()
    calib = train.inputs()[:4]
    base = _accuracy(model, val)
    naive = edgeopt.prune(model, calib[0][:1], ratio=0.4, data=calib).model
    recalibrate_bn(naive, calib)  # the best the naive path can do without retraining
    recon = edgeopt.prune(model, calib[0][:1], ratio=0.4, data=calib, reconstruct=True)
    a_naive, a_recon = _accuracy(naive, val), _accuracy(recon.model, val)
    assert a_recon > a_naive + 5, (base, a_naive, a_recon)
    rows = recon.record["reconstruction"]["layers"]
    assert rows and all(r["error_after"] < r["error_before"] for r in rows)


def test_residual_concat_and_attention_model_outputs_move_closer(tiny):
    calib = _gauss(3, (16, 1, 16, 16))
    x = _gauss(1, (16, 1, 16, 16), seed=5)[0]
    naive = edgeopt.prune(tiny, x[:1], ratio=0.4, data=calib).model
    recon = edgeopt.prune(tiny, x[:1], ratio=0.4, data=calib, reconstruct=True)
    with torch.no_grad():
        ref = tiny(x)
        e_naive, e_recon = (naive(x) - ref).norm() / ref.norm(), (recon.model(x) - ref).norm() / ref.norm()
    assert e_recon < e_naive
    assert recon.record["reconstruction"]["layers"]


def test_no_calibration_data_skips_reconstruction_with_the_reason(tiny, example):
    rec = edgeopt.prune(tiny, example, ratio=0.3, reconstruct=True).record["reconstruction"]
    assert rec["ran"] is False and "no calibration data" in rec["reason"]
    fallback = edgeopt.prune(tiny, example, ratio=0.3, method="recon").record
    assert fallback["importance"] == "l2" and "l2 used instead" in fallback["importance_fallback"]


def test_registry_config_and_iterative_steps(tiny, example):
    from edgeopt.inputs.data import Batches

    cfg = TECHNIQUES.get("prune").make_config({"ratio": 0.3, "importance": "recon", "reconstruct": True,
                                              "iterative_steps": 2})
    data = Batches([(x, None) for x in _gauss(2, (8, 1, 16, 16))])
    small, record = TECHNIQUES.get("prune").apply_fn()(tiny, example, cfg, data=data)
    assert record["importance"] == "recon" and record["reconstruction"]["ran"]
    assert small(example).shape == tiny(example).shape
    json.dumps(record)  # goes into the report as is


def test_planner_proposes_a_reconstruction_ladder_only_with_calibration_data():
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan
    from edgeopt.targets import load_target

    summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
    local = load_target("x86-avx2").model_copy(update={"detected": False})

    def make(calib, **ctx):
        return plan(make_context(target="x86-avx2", **ctx), load_target("x86-avx2"), summary, local,
                    ["onnxruntime"], has_calib_data=calib)

    recon = [c for c in make(True).candidates if c.family == "prune-recon"]
    assert recon and all(c.steps[0].reconstruct for c in recon)
    assert all(len(c.steps) == 1 for c in recon)  # no BN re-estimation after reconstruction
    no_data = make(False)
    assert not any(c.family == "prune-recon" for c in no_data.candidates)
    why = next(d for d in no_data.decisions if d.technique == "prune_reconstruct")
    assert why.decision == "skipped" and "calibration data" in why.reason


def test_sampled_patches_match_unfold_rows():
    """Gathering only the sampled k x k patches gives exactly F.unfold's rows (same order, same columns) for
    strides, dilations, paddings and rectangular kernels, and the output rows match the same positions."""
    import torch.nn.functional as F

    from edgeopt.techniques.repair.layer_rows import input_rows as _rows
    from edgeopt.techniques.repair.layer_rows import output_rows as _targets
    from edgeopt.techniques.repair.layer_rows import sample_rows as _sample

    for k, s, d, p in [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 1, 0), (5, 2, 2, 3), ((3, 1), (2, 1), 1, (1, 0))]:
        m = nn.Conv2d(6, 4, k, stride=s, dilation=d, padding=p)
        x = torch.randn(3, 6, 17, 13)
        y = m(x).detach()
        cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        full = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        outs = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
        idx = _sample(full.shape[0], 7, 50)
        assert torch.equal(_rows(m, x, 7, 50)[:, :-1].float(), full[idx])
        assert torch.equal(_targets(m, y, 7, 50), outs[idx].double())
        assert torch.equal(_rows(m, x, 7, 10 ** 6)[:, :-1].float(), full)  # small maps: every row


def test_recon_scores_are_reused_for_the_same_weights_and_batches():
    from edgeopt.techniques.pruning.recon_scores import measure_scores

    model = _mlp_with_duplicate()
    calib = _gauss()
    calls = []
    h = model[2].register_forward_pre_hook(lambda m, a: calls.append(1))
    first = measure_scores(model, calib)["2"].clone()
    n = len(calls)
    twin = _mlp_with_duplicate()
    twin[2].register_forward_pre_hook(lambda m, a: calls.append(1))
    again = measure_scores(twin, list(calib))  # a new list of the same batches, a copy of the same weights
    assert len(calls) == n and torch.equal(again["2"], first)
    with torch.no_grad():
        twin[2].weight.mul_(2)
    again = measure_scores(twin, calib)  # other weights: measured again
    assert len(calls) > n and not torch.equal(again["2"], first)
    measure_scores(model, [b.clone() for b in calib])  # other batch objects: measured again
    assert len(calls) > n + len(calib)
    h.remove()


def test_one_pass_solves_the_same_problems_as_a_pass_per_layer(tiny, monkeypatch):
    """All calibration batches joined in one forward pass, each consumer solved by a hook before it runs,
    gives the same weights as running the pruned network up to every consumer batch by batch."""
    from edgeopt.techniques.repair import reconstruct as rc

    calib = _gauss(3, (8, 1, 16, 16))
    x = _gauss(1, (8, 1, 16, 16), seed=5)[0]
    one = edgeopt.prune(tiny, x[:1], ratio=0.4, data=calib, reconstruct=True)
    monkeypatch.setattr(rc, "ONE_PASS_ELEMENTS", 0)  # batches too large to join: a pass per layer
    per_layer = edgeopt.prune(tiny, x[:1], ratio=0.4, data=calib, reconstruct=True)
    a, b = one.record["reconstruction"], per_layer.record["reconstruction"]
    assert a["one_pass"] is True and b["one_pass"] is False
    assert [r["layer"] for r in a["layers"]] == [r["layer"] for r in b["layers"]] and a["layers"]
    assert a["skipped"] == b["skipped"]
    with torch.no_grad():
        assert torch.allclose(one.model(x), per_layer.model(x), atol=1e-4, rtol=1e-4)


def test_batches_too_large_to_join_use_the_leading_ones_that_fit(tiny, monkeypatch):
    """Over the one-pass limit the leading batches that fit are joined (one pass, fewer batches); when fewer
    than half fit, every batch is used and each consumer gets its own passes."""
    from edgeopt.techniques.repair import reconstruct as rc

    calib = _gauss(8, (4, 1, 16, 16))
    x = _gauss(1, (4, 1, 16, 16), seed=5)[0]
    per_batch = calib[0].numel()
    monkeypatch.setattr(rc, "ONE_PASS_ELEMENTS", 5 * per_batch)
    rec = edgeopt.prune(tiny, x[:1], ratio=0.4, data=calib, reconstruct=True).record["reconstruction"]
    assert rec["one_pass"] is True and rec["batches"] == 5 and rec["layers"], rec
    monkeypatch.setattr(rc, "ONE_PASS_ELEMENTS", 3 * per_batch)
    rec = edgeopt.prune(tiny, x[:1], ratio=0.4, data=calib, reconstruct=True).record["reconstruction"]
    assert rec["one_pass"] is False and rec["batches"] == 8 and rec["layers"], rec


def test_fewer_rows_than_inputs_are_solved_in_the_dual_form_with_the_same_result():
    """Wide layers on small maps have fewer calibration rows than inputs: the n x n kernel form must give
    the primal ridge solution (unshrunk bias included) and its errors."""
    from edgeopt.techniques.repair import reconstruct as rc

    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(40, 5)
    dual = rc.NormalEquations()
    for _ in range(2):  # 2 x 12 rows < 40 inputs: kept as rows
        xs = torch.randn(12, 40, generator=g) + 0.5
        ys = torch.randn(12, 5, generator=g)
        dual.add(torch.cat([xs, torch.ones(12, 1)], 1), ys)
    assert dual.a is None and dual.n == 24
    primal = rc.NormalEquations()
    x = torch.cat([r[0] for r in dual.rows])
    y = torch.cat([r[1] for r in dual.rows])
    primal.a, primal.b, primal.yy = (x.T @ x).double(), (x.T @ y).double(), dual.yy
    w0 = rc._current(layer)
    s_dual, before_d, after_d = rc._solve_dual(dual, w0, 1e-2)
    s_primal, before_p, after_p = rc._solve_primal(primal, w0, 1e-2)
    assert torch.allclose(s_dual, s_primal, atol=1e-4), (s_dual - s_primal).abs().max()  # float32 rows
    assert abs(before_d - before_p) < 1e-5 and abs(after_d - after_p) < 1e-5 and after_d < before_d


class _SequenceFirst(nn.Module):
    """Tokens laid out (length, batch, features) inside, as nn.Transformer's default: the consumer's first
    axis is the sequence, not the batch, so joined batches do not stack along it."""

    def __init__(self):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 6)

    def forward(self, x):  # x: (batch, length, features)
        t = x.transpose(0, 1)
        return self.down(self.act(self.up(t))).transpose(0, 1)


def test_a_sequence_first_consumer_is_solved_by_its_own_passes(monkeypatch):
    from edgeopt.techniques.repair import reconstruct as rc

    torch.manual_seed(0)
    model = _SequenceFirst().eval()
    calib = _gauss(3, (4, 12, 6))  # 12 tokens = the 12 samples of the three batches: only the layout tells
    x = _gauss(1, (4, 12, 6), seed=5)[0]
    one = edgeopt.prune(model, x[:1], ratio=0.25, data=calib, reconstruct=True)
    monkeypatch.setattr(rc, "ONE_PASS_ELEMENTS", 0)
    per_layer = edgeopt.prune(model, x[:1], ratio=0.25, data=calib, reconstruct=True)
    rec = one.record["reconstruction"]
    assert rec["one_pass"] and [r["layer"] for r in rec["layers"]] == ["down"], rec
    with torch.no_grad():
        assert torch.allclose(one.model(x), per_layer.model(x), atol=1e-4, rtol=1e-4)


def test_spd_solves_agree_with_lu_and_a_singular_system_still_gets_a_finite_answer():
    from edgeopt.techniques.repair.layer_rows import solve_spd

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 6, generator=g, dtype=torch.float64)
    a, b = x.transpose(1, 2) @ x, torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(solve_spd(a, b), torch.linalg.solve(a, b))
    assert torch.allclose(solve_spd(a[0], b[0]), torch.linalg.solve(a[0], b[0]))
    singular = torch.ones(4, 4, dtype=torch.float64)  # rank 1: Cholesky fails, least squares answers
    out = solve_spd(singular, torch.ones(4, 1, dtype=torch.float64))
    assert torch.isfinite(out).all() and torch.allclose(singular @ out, torch.ones(4, 1, dtype=torch.float64))


def test_recon_pruning_does_not_depend_on_an_lu_solve(monkeypatch):
    """oneMKL's threaded batched LU can return invalid pivots once OpenVINO has run in the process (a ViT's
    patch embedding then failed every reconstruction level); the scores and the re-solve use Cholesky, with
    least squares where Cholesky fails, so an LU that fails changes nothing."""
    model = _mlp_with_duplicate()
    calib, x = _gauss(), _gauss(1, seed=9)[0]
    expected = edgeopt.prune(model, x[:1], ratio=0.125, method="recon", data=calib, reconstruct=True).model

    def broken(*_, **__):
        raise RuntimeError("Pivots given to lu_solve must all be greater or equal to 1")

    monkeypatch.setattr(torch.linalg, "solve", broken)
    monkeypatch.setattr(torch.linalg, "inv", broken)
    from edgeopt.techniques.pruning import recon_scores

    recon_scores._SCORES.clear()
    small = edgeopt.prune(model, x[:1], ratio=0.125, method="recon", data=calib, reconstruct=True).model
    with torch.no_grad():
        assert torch.allclose(small(x), expected(x), atol=1e-5)
