"""Library models by name: Ultralytics configs and checkpoints (a pickle: only with the trust flag), smp
architectures with query-string keyword arguments; random weights, nothing downloaded; a missing library or an
unknown name is one line."""

import copy
import sys

import pytest
import torch

from edgeopt.errors import BackendMissingError, ModelLoadError, UnsafePickleError
from edgeopt.inputs.models import load_model

NO_ULTRALYTICS = "ultralytics is not installed (the optional extra edgeopt[yolo])"


def _ultralytics():
    return pytest.importorskip("ultralytics", reason=NO_ULTRALYTICS)


def anchors(size: int) -> int:
    return sum((size // s) ** 2 for s in (8, 16, 32))  # YOLOv8's three strides


def test_yolo_config_gives_its_head_tensor_in_eval_mode():
    _ultralytics()
    lm = load_model("ultralytics:yolov8n.yaml?nc=3", input_shape=(1, 3, 64, 64))
    assert type(lm.model).__name__ == "DetectionModel" and not lm.model.training
    with torch.no_grad():
        y = lm.model(torch.rand(2, 3, 64, 64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 4 + 3, anchors(64))  # the head tensor alone
    scores = y[:, 4:]
    assert scores.min() >= 0 and scores.max() <= 1  # class scores after the sigmoid


def test_yolo_checkpoint_needs_trust_and_loads_as_float(tmp_path):
    _ultralytics()
    model = load_model("ultralytics:yolov8n.yaml?nc=2", input_shape=(1, 3, 64, 64)).model
    ckpt = tmp_path / "best.pt"
    torch.save({"epoch": 3, "model": copy.deepcopy(model).half(), "ema": None}, ckpt)  # Ultralytics' layout
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(str(ckpt), input_shape=(1, 3, 64, 64))
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(f"ultralytics:{ckpt}", input_shape=(1, 3, 64, 64))
    for spec in (str(ckpt), f"ultralytics:{ckpt}"):
        got = load_model(spec, input_shape=(1, 3, 64, 64), trust_pickle=True).model
        assert next(got.parameters()).dtype == torch.float32 and not got.training
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(got(x), model(x), atol=0.05, rtol=0.05)  # weights were stored in fp16


@pytest.mark.parametrize("spec,msg", [
    ("ultralytics:yolo8n.yaml", "did you mean 'yolov8n.yaml'"),
    ("ultralytics:yolov8n", "name a model config"),
])
def test_unknown_yolo_names_are_one_line(spec, msg):
    _ultralytics()
    with pytest.raises(ModelLoadError, match=msg) as e:
        load_model(spec)
    assert "\n" not in str(e.value)


def test_smp_unet_from_query_string():
    pytest.importorskip("segmentation_models_pytorch")
    lm = load_model("smp:Unet?encoder_name=resnet18&classes=3", input_shape=(1, 3, 64, 64))
    with torch.no_grad():
        assert lm.model(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("spec,msg", [
    ("smp:Unett", "did you mean 'Unet'"),
    ("smp:Unet?encoder_name=resnet81", "did you mean 'resnet18'"),
    ("smp:Unet?encoder_weights=imagenet", "would download weights"),
    ("timm:resnet81", "did you mean 'resnet18'"),
])
def test_unknown_names_suggest_close_ones(spec, msg):
    pytest.importorskip("segmentation_models_pytorch")
    with pytest.raises(ModelLoadError, match=msg) as e:
        load_model(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec,module,extra", [
    ("smp:Unet", "segmentation_models_pytorch", "smp"),
    ("ultralytics:yolov8n.yaml", "ultralytics", "yolo"),
])
def test_missing_library_names_the_extra(monkeypatch, spec, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError, as when absent
    with pytest.raises(BackendMissingError, match=rf"pip install 'edgeopt\[{extra}\]'"):
        load_model(spec)


def test_yolo_head_scored_by_map_on_a_data_yaml(tmp_path):
    _ultralytics()
    from test_yolo import yolo_set

    from edgeopt.inputs.data import resolve_data
    from edgeopt.measure.accuracy import default_metric, score, torch_predictions

    data = resolve_data("module", str(yolo_set(tmp_path / "set", n_train=2, n_val=4)), None, None, None,
                        (3, 64, 64), None)
    data.eval.metric = default_metric(data.eval)
    assert data.eval.metric.num_classes == 2
    model = load_model("ultralytics:yolov8n.yaml?nc=2", input_shape=(1, 3, 64, 64)).model
    got = score(torch_predictions(model, data.eval, 2), data.eval)
    # random weights: the figures mean nothing, but both are measured, in 0..100, from the decoded head
    assert got[1] == "map50" and set(got.metrics) == {"map50", "map50_95"}
    assert all(0 <= v <= 100 for v in got.metrics.values())


@pytest.mark.slow  # YOLOv8n through the whole optimize: load, analysis, an export, measurement (minutes on 2 cores)
def test_optimize_yolo_config_on_a_data_yaml_without_trained_weights_is_judged_by_fidelity(tmp_path):
    _ultralytics()
    import json

    from cliruns import run
    from test_yolo import yolo_set

    data = yolo_set(tmp_path / "set", n_train=2, n_val=6)
    p = run("optimize", "--model", "ultralytics:yolov8n.yaml?nc=2", "--input-shape", "1,3,160,160", "--data",
            str(data), "--time-budget", "30", "--out", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    # random weights find no box: an mAP of 0 would protect nothing, so the run judges by box-level fidelity to
    # the original, and says so
    assert rep["baseline"]["metric"] == "fidelity" and rep["baseline"]["accuracy"] == pytest.approx(100.0)
    why = [d for d in rep["decisions"] if d["technique"] == "metric"]
    assert why and why[0]["decision"] == "rejected" and "% map50" in why[0]["reason"]
    assert "warning:" in p.stdout + p.stderr


def test_trusted_yolo_checkpoint_without_ultralytics_names_the_extra(tmp_path, monkeypatch):
    _ultralytics()
    model = load_model("ultralytics:yolov8n.yaml?nc=2", input_shape=(1, 3, 64, 64)).model
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model}, ckpt)
    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: unpickling cannot import its classes
    with pytest.raises(BackendMissingError, match=r"pip install 'edgeopt\[yolo\]'"):
        load_model(str(ckpt), input_shape=(1, 3, 64, 64), trust_pickle=True)
