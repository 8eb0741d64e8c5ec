"""The benchmark harness on its tiniest configuration, so that it keeps working. No timing assertions."""

import argparse

import torch

from benchmarks.run import run_task, to_markdown
from benchmarks.tasks import Task


def test_harness_runs_every_contender(tmp_path, tiny_plain):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    import tinynet

    model = tinynet.TinyNet(in_ch=3, attention=False).eval()
    task = Task("smoke", "tinynet", model, x, calib=[torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)],
                eval=[torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)], labelled=False)
    args = argparse.Namespace(no_retrain=True, bench_time=0.3, measure_time=0.5)
    res = run_task(task, args, tmp_path)
    names = {r["contender"] for r in res["rows"]}
    assert {"pytorch-eager-fp32", "ort-fp32", "openvino-default", "openvino-nncf-int8", "ort-static-int8",
            "torch-pruning-l2-50%-ort", "edgeopt"} <= names
    for r in res["rows"]:
        assert r["n"] > 0 and r["p50_ms"] > 0 and 0 <= r["accuracy"] <= 100
    eager = next(r for r in res["rows"] if r["contender"] == "pytorch-eager-fp32")
    assert eager["accuracy"] == 100.0  # fidelity of the reference to itself
    md = to_markdown([res])
    assert "| edgeopt" in md and "speedup of edgeopt" in md


def test_real_models_data_is_read_by_edgeopt_and_a_yolo_step_trains(tmp_path):
    """benchmarks/real_models.py on its smallest setting: the generated sets are read by edgeopt as the layouts
    they claim (YOLO data.yaml -> boxes scored by map50, torchvision's label shift, mask folder -> miou,
    class folders), and one training step of YOLOv8n with Ultralytics' own loss gives weights edgeopt loads."""
    from pathlib import Path

    import numpy as np

    from benchmarks import real_models as rm
    from benchmarks import synthetic_sets as sets
    from edgeopt.inputs.data import resolve_data
    from edgeopt.measure.accuracy import default_metric

    paths = rm.data_sets(tmp_path, small=True)
    det = resolve_data("api", str(paths["det"]), None, None, None, (3, rm.DET_SIZE, rm.DET_SIZE), None)
    assert default_metric(det.eval).name == "map50"
    written = sum(len(a) for a in sets.read_yolo_split(paths["det"].parent, "val")[1])
    read = [t for _, ts in det.eval.items for t in ts]
    assert len(read) == 4 and sum(len(t["boxes"]) for t in read) == written > 0
    tv = resolve_data("api", str(paths["det_tv"]), None, None, None, (3, rm.DET_SIZE, rm.DET_SIZE), None)
    tv_labels = sorted(int(v) for _, ts in tv.eval.items for t in ts for v in t["labels"])
    assert tv_labels == sorted(int(v) + 1 for t in read for v in t["labels"])  # class c is torchvision's c + 1
    seg = resolve_data("api", rm.optimize_data(rm.BENCHES["unet"], paths)[0], None, None, None,
                       (3, rm.SEG_SIZE, rm.SEG_SIZE), rm.SEG_CLASSES, {"val_split": 0.5})
    assert default_metric(seg.eval).name == "miou"
    imgs, masks = sets.read_masks(paths["seg"] / "train")
    assert set(np.unique(masks)) <= set(range(rm.SEG_CLASSES)) and masks.max() > 0 and imgs.shape[-1] == 3
    xs, ys = sets.read_folder(paths["cls"] / "test")
    assert xs.shape[1:] == (rm.CLS_SIZE, rm.CLS_SIZE) and set(ys) == set(range(10))
    # a classifier's data: a split folder, the held-out digits never among those --retrain fine-tunes on
    split = Path(rm.optimize_data(rm.BENCHES["convnext"], paths)[0])
    cls = resolve_data("api", str(split), None, None, None, (3, rm.CLS_SIZE, rm.CLS_SIZE), 10)
    held = {f.resolve() for f in (split / "val").rglob("*.png")}
    tuned = {f.resolve() for f in (split / "train").rglob("*.png")}
    assert 0 < len(cls.eval) == len(held) and held <= {f.resolve() for f in (paths["cls"] / "test").rglob("0_*.png")}
    assert tuned and held.isdisjoint(tuned) and all(f.parent.parent.name == "train" for f in tuned)

    bench = rm.BENCHES["yolov8n"]
    weights, took = rm.trained_weights(bench, paths, tmp_path, steps=1, log=lambda *_: None)
    assert took > 0 and weights.exists()
    model = rm.edgeopt.load_model(bench.spec, weights=weights, input_shape=bench.input_shape).model
    out = model(torch.rand(1, *bench.input_shape[1:]))
    assert isinstance(out, torch.Tensor) and out.shape[:2] == (1, 4 + 10)  # the export head, trained weights
    assert not any(torch.isnan(p).any() for p in model.parameters())


def test_real_models_table_reads_a_report():
    from benchmarks.real_models import markdown, summarise

    report = {"model": {"test_split": {"split": "stratified", "images": 50, "selection_images": 50},
                        "headline": {"speedup_vs_best_plain": 2.0, "best_plain": "original@onnx-int8"}},
              "baseline": {"id": "original", "metric": "map50", "accuracy": 80.0, "accuracy_test": 78.0,
                           "params": 100},
              "candidates": [{"id": "prune-recon40@onnx-int8", "metric": "map50", "params": 60,
                              "accuracy_test": 77.5, "accuracy_drop_test": 0.5, "steps": ["prune"]}],
              "chosen": "prune-recon40@onnx-int8"}
    row = {"model": "m", "train_s": 1.0, "wall_s": 2.0, **summarise(report)}
    assert row["compressed"] and row["original_test"] == 78.0 and row["drop_test_pp"] == 0.5
    assert row["params_kept"] == 0.6 and row["speedup_vs_best_plain"] == 2.0
    md = markdown([row, {"model": "x", "error": "boom", "train_s": 0, "wall_s": 1}], "t")
    assert "| m | map50 | 78.00 | prune-recon40@onnx-int8 | yes | 60% |" in md and "**crash**: boom" in md
    assert "Compressed choices: 1 of 2" in md


def test_speed_ceiling_measures_every_cut_against_the_original(tmp_path, monkeypatch):
    """benchmarks/speed_ceiling.py on a small residual net: each cut exported, timed beside the original, and
    smaller than it; no timing assertion."""
    from benchmarks import real_models as rm
    from benchmarks import speed_ceiling

    monkeypatch.setitem(rm.BENCHES, "small", rm.Bench("small", "torchvision:resnet18?num_classes=4",
                                                      (1, 3, 32, 32), "cls", None, "train_classifier", 1))
    out = tmp_path / "ceiling"
    speed_ceiling.main(["--models", "small", "--max-time", "0.5", "--out", str(out)])
    rows = __import__("json").loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["original", "channels -30%", "channels -50%", "blocks -2 of 5",
                                            "blocks -5 of 5"]
    assert rows[0]["speedup"] == 1.0 and all(r["p50_ms"] > 0 for r in rows)
    assert all(r["macs"] < rows[0]["macs"] for r in rows[1:])
    assert "| small | channels -50% |" in out.with_suffix(".md").read_text()
    # timed at the precision asked wherever the machine runs it: an fp32 IR loaded with a BF16 hint runs FP32
    from edgeopt.targets import detect_local

    want = "bf16" if "bf16" in detect_local().precisions else "fp32"
    assert {r["executed"] for r in rows} == {want}, rows
    speed_ceiling.main(["--models", "small", "--max-time", "0.2", "--out", str(out), "--ratios", "0.5",
                        "--round-to", "16", "--no-depth"])
    rows = __import__("json").loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["original", "channels -50%", "channels -50% (blocks of 16)"]
    speed_ceiling.main(["--models", "small", "--max-time", "0.2", "--out", str(out), "--ratios", "",
                        "--blocks", "1,3,9"])  # 9: more than the net has, left out
    rows = __import__("json").loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["original", "blocks -1 of 5", "blocks -3 of 5"]


def test_recoverability_scores_each_cut_before_and_after_edgeopts_fine_tuning(tmp_path, monkeypatch):
    """benchmarks/recoverability.py on a small classifier and the tiny generated set: each cut scored as cut,
    after one fine-tuning and after the second, its drop the original's score minus the last; a cut it does not
    know and a model that is not a classifier are refused."""
    import json

    import pytest

    from benchmarks import real_models as rm
    from benchmarks import recoverability

    monkeypatch.setitem(rm.BENCHES, "small", rm.Bench("small", "torchvision:resnet18?num_classes=10",
                                                      (1, 3, 32, 32), "cls", None, "train_classifier", 1))
    rm.data_sets(tmp_path, small=True)
    out = tmp_path / "recov"
    recoverability.main(["--models", "small", "--cuts", "depth1,prune-recon30", "--epochs", "1", "--cache",
                         str(tmp_path), "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["cut"] for r in rows] == ["depth1", "prune-recon30"]
    for r in rows:
        scores = [r["original"], r["cut_only"], r["after_1_epochs"], r["after_2_epochs"]]
        assert all(0 <= v <= 100 for v in scores)
        assert r["drop_pp"] == round(r["original"] - r["after_2_epochs"], 2)
    assert "| small | prune-recon30 |" in out.with_suffix(".md").read_text()
    recoverability.main(["--models", "small", "--cuts", "depth1,depth2", "--epochs", "1", "--gradual", "--cache",
                         str(tmp_path), "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["cut"] for r in rows] == ["depth1", "depth2 from depth1"]
    with pytest.raises(SystemExit, match="give the depth cuts deepest last"):
        recoverability.main(["--models", "small", "--cuts", "depth2,depth1", "--gradual", "--cache", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown cut 'depthy'"):
        recoverability.main(["--models", "small", "--cuts", "depthy", "--cache", str(tmp_path)])
    with pytest.raises(SystemExit, match="yolov8n is not one of the classifiers"):
        recoverability.main(["--models", "yolov8n", "--cache", str(tmp_path)])


def test_training_precision_times_both_ways_and_tables_what_was_chosen(tmp_path, monkeypatch):
    """benchmarks/training_precision.py on a small net: both step times measured (or the reason bfloat16 is
    out), the table says what fine-tuning would train at; a detector's recovery is refused before any work."""
    import json

    import pytest

    from benchmarks import real_models as rm
    from benchmarks import training_precision as tp

    monkeypatch.setitem(rm.BENCHES, "small", rm.Bench("small", "torchvision:resnet18?num_classes=4",
                                                      (1, 3, 32, 32), "cls", None, "train_classifier", 1))
    out = tmp_path / "tp"
    tp.main(["--models", "small", "--recovery", "", "--out", str(out)])
    row = json.loads(out.with_suffix(".json").read_text())["times"][0]
    assert row["model"] == "small" and row["precision"] in ("fp32", "bf16")
    assert "bf16_step_s" not in row or (row["fp32_step_s"] > 0 and row["bf16_step_s"] > 0)
    assert f"| small | {row.get('fp32_step_s', '-')} |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="yolov8n is not a segmenter"):
        tp.recovery("yolov8n", tmp_path, 1, 0.5)
