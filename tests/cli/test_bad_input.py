"""Bad input is refused in one line, exit code 2, before any expensive work: flags out of range, inputs that
would hang or exhaust memory, files nested or sized to break a reader, masks that cannot be scored, and data
checked before the model is loaded (the demo is trained on first use)."""

import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from paths import TESTS
from PIL import Image

from edgeopt.errors import DataError

TINY_SHAPE = ("--input-shape", "1,1,16,16")


def cli(monkeypatch, capsys, *args):
    """`edgeopt ARGS` in this process, through the same entry point as the console script: (exit code, the
    non-empty output lines of stdout and stderr)."""
    from edgeopt.cli import main

    monkeypatch.delenv("EDGEOPT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["edgeopt", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, [ln for ln in (err + out).splitlines() if ln.strip()]


def assert_refused(result, *needles):
    code, lines = result
    text = "\n".join(lines)
    assert code == 2 and "Traceback" not in text and len(lines) == 1, text
    for n in needles:
        assert n in lines[0], text


def png_header(path, width, height):
    """A PNG that claims width x height grey pixels (header only: the size a decoder would allocate)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny ONNX model, its `benchmark --json`, an ONNX model without inputs, deeply nested JSON and YAML,
    and an image folder holding one 400-Mpixel PNG."""
    import onnx
    import tinynet
    from onnx import TensorProto, helper

    import edgeopt
    from edgeopt.measure.artifacts import benchmark_many
    from edgeopt.measure.timing import BenchConfig

    root = tmp_path_factory.mktemp("bad")
    tiny = edgeopt.export(tinynet.make(), torch.randn(1, 1, 16, 16), out=root / "tiny.onnx")
    const = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / "noinput.onnx")
    (root / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (root / "deep.yaml").write_text("deploy: " + "[" * 5000 + "]" * 5000 + "\n")
    bench = root / "bench.json"  # what `benchmark --json` writes
    bench.write_text(benchmark_many([tiny], threads=1, config=BenchConfig(min_runs=5, max_time_s=0.2))[0]
                     .model_dump_json())
    big = root / "bigdata"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (big / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(big / cls / f"{i}.png")
    png_header(big / "a" / "huge.png", 20_000, 20_000)  # 400 Mpixel
    return {"tiny": tiny, "noinput": root / "noinput.onnx", "deep_json": root / "deep.json",
            "deep_yaml": root / "deep.yaml", "bench": bench, "big": big, "root": root}


T = f"{TESTS / 'tinynet.py'}:make"
# (command line with {placeholders}, what the one line must contain)
CASES = {
    "input-name-not-in-forward": (["plan", "--model", T, "--input-shape", "image:1,1,16,16"], ["--input-shape",
                                                                                                 "'image'"]),
    "input-shape-too-large": (["plan", "--model", T, "--input-shape", "1,3,99999,99999"], ["--input-shape"]),
    "input-shape-letter": (["plan", "--model", T, "--input-shape", "1,3,x,4"], ["--input-shape", "1,3,x,4"]),
    "seed-float": (["optimize", "--model", T, *TINY_SHAPE, "--seed", "1e23"], ["--seed"]),
    "seed-huge": (["optimize", "--model", T, *TINY_SHAPE, "--seed", str(10**23)], ["seed"]),
    "image-size-nan": (["plan", "--model", T, *TINY_SHAPE, "--data", "{big}", "--image-size", "nan"],
                       ["--image-size"]),
    "image-size-inf": (["plan", "--model", T, *TINY_SHAPE, "--data", "{big}", "--image-size", "inf"],
                       ["--image-size"]),
    "mean-nan": (["plan", "--model", T, *TINY_SHAPE, "--data", "{big}", "--mean", "nan"], ["--mean"]),
    "yaml-nested": (["optimize", "--config", "{deep_yaml}"], ["--config", "nested too deeply"]),
    "huge-png": (["plan", "--model", T, *TINY_SHAPE, "--data", "{big}"], ["huge.png"]),
    "onnx-without-inputs": (["benchmark", "{noinput}"], ["noinput.onnx", "no inputs"]),
    "gate-json-nested": (["gate", "{deep_json}", "--max-latency-ms", "1"], ["deep.json", "nested too deeply"]),
    "max-time-0": (["benchmark", "{tiny}", "--max-time", "0"], ["--max-time"]),
    "max-time-negative": (["benchmark", "{tiny}", "--max-time", "-1"], ["--max-time"]),
    "max-time-nan": (["benchmark", "{tiny}", "--max-time", "nan"], ["--max-time"]),
    "threads-negative": (["benchmark", "{tiny}", "--threads", "-1", "--max-time", "0.2"], ["--threads"]),
    "threads-100000": (["benchmark", "{tiny}", "--threads", "100000", "--max-time", "0.2"], ["--threads"]),
    "optimize-threads-100000": (["optimize", "--model", T, *TINY_SHAPE, "--threads", "100000"], ["threads"]),
    "top-negative": (["benchmark", "{tiny}", "--per-layer", "--top", "-1", "--max-time", "0.2"], ["--top"]),
    "round-to-negative": (["prune", "--model", T, *TINY_SHAPE, "--round-to", "-8", "--out", "{root}/p.onnx"],
                          ["--round-to"]),
    "steps-0": (["prune", "--model", T, *TINY_SHAPE, "--steps", "0", "--out", "{root}/p.onnx"], ["--steps"]),
    "timeout-negative": (["prune", "--model", T, *TINY_SHAPE, "--timeout", "-1", "--out", "{root}/p.onnx"],
                         ["--timeout"]),
    "max-regression-nan": (["gate", "{bench}", "--baseline", "{bench}", "--max-regression", "nan"],
                           ["--max-regression"]),
    "max-regression-inf": (["gate", "{bench}", "--baseline", "{bench}", "--max-regression", "inf"],
                           ["--max-regression"]),
    "image-size-without-data": (["plan", "--model", T, *TINY_SHAPE, "--image-size", "16"], ["--image-size"]),
    "val-split-without-data": (["plan", "--model", T, *TINY_SHAPE, "--val-split", "0.3"], ["--val-split"]),
    "mean-without-folder": (["plan", "--model", T, *TINY_SHAPE, "--data", "digits", "--mean", "0.5"], ["--mean"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line(case, files, monkeypatch, capsys, tmp_path):
    args, needles = CASES[case]
    args = [a if a == T else a.format(**files) for a in args]
    if args[0] in ("optimize", "plan") and "--config" not in args:
        args += ["--out", str(tmp_path / "out")] if args[0] == "optimize" else []
    assert_refused(cli(monkeypatch, capsys, *args), *needles)


def test_threads_and_seed_bounds_are_the_run_configs(files):
    """The Python API refuses what the CLI refuses, with the same words."""
    from edgeopt import benchmark
    from edgeopt.config import RunConfig
    from edgeopt.errors import ConfigError

    with pytest.raises(ConfigError, match="threads must be from 1 to 1024"):
        benchmark(files["tiny"], threads=100_000)

    with pytest.raises(ConfigError, match="measure.threads.*from 1 to 1024"):
        RunConfig().with_flat(threads=100_000)
    with pytest.raises(ConfigError, match="measure.seed.*from 0 to"):
        RunConfig().with_flat(seed=10**23)
    with pytest.raises(ConfigError, match="input_shape.*elements"):
        RunConfig().with_flat(input_shape=[1, 3, 99999, 99999])
    with pytest.raises(ConfigError, match="bench_time_s.*finite"):
        RunConfig().with_flat(bench_time=float("nan"))


# --- data checked before the model is loaded --------------------------------------------------------------

def test_empty_data_folder_refused_before_the_demo_is_trained(tmp_path, monkeypatch, capsys):
    """`optimize --model demo --data EMPTY` says the folder is empty without training the demo first."""
    from edgeopt.inputs import demo

    def no_training(*a, **k):
        raise AssertionError("the demo was trained before the data was checked")

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))  # no cached demo: loading it would train
    monkeypatch.setattr(demo, "train_demo", no_training)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(monkeypatch, capsys, "optimize", "--model", "demo", "--data", empty, "--out", tmp_path / "o")
    assert_refused(result, str(empty), "no class sub-folders")


def test_data_checked_before_a_model_is_loaded(tmp_path, monkeypatch):
    """Every model spec: a missing metric file, a --data that does not exist, masks without a pair."""
    from edgeopt.config import RunConfig
    from edgeopt.engine import prepare as prep
    from edgeopt.errors import ConfigError

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(prep, "load_model", no_loading)
    with pytest.raises(ConfigError, match="metric function.*does not exist"):
        prep.prepare(RunConfig().with_flat(metric=str(tmp_path / "nope.py") + ":acc"))
    with pytest.raises(ConfigError, match="neither 'digits', an existing image folder"):
        prep.prepare(RunConfig().with_flat(data=str(tmp_path / "missing")))
    _write_pairs(tmp_path, 3)
    (tmp_path / "masks" / "s1.png").unlink()
    with pytest.raises(DataError, match="s1.png has no mask"):
        prep.prepare(RunConfig().with_flat(data=str(tmp_path / "images"),
                                           data_options={"masks": str(tmp_path / "masks")}))


# --- boxes and metrics that do not fit ---------------------------------------------------------------------

RAW_HEAD = "import torch.nn as nn\n\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 6, 4, 4), nn.Flatten(2))\n"


def _yolo(root, label_line):
    for split in ("train", "val"):
        for i in range(2):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(label_line)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return root / "data.yaml"


@pytest.mark.parametrize("line,needle", [("2 0.5 0.5 0.2 0.2\n", "outside the 2 classes"),
                                         ("0 0.5 0.95 0.2 0.2\n", "outside the image"),
                                         ("0 0.5 0.5\n", "3 values")])
def test_bad_box_labels_refused(tmp_path, monkeypatch, capsys, line, needle):
    (tmp_path / "net.py").write_text(RAW_HEAD)
    yaml = _yolo(tmp_path / "set", line)
    result = cli(monkeypatch, capsys, "optimize", "--model", f"{tmp_path / 'net.py'}:make", "--input-shape",
                 "1,3,16,16", "--data", yaml, "--out", tmp_path / "o")
    assert_refused(result, needle)


def test_a_raw_head_against_class_labels_names_metric(tmp_path, monkeypatch, capsys):
    """A YOLO-style head tensor (N, 4 + C, anchors) with a one-class image folder: top-1 cannot read it."""
    (tmp_path / "net.py").write_text(RAW_HEAD)
    for i in range(12):
        (tmp_path / "imgs" / "person").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), i * 20, np.uint8)).save(tmp_path / "imgs" / "person" / f"{i}.png")
    result = cli(monkeypatch, capsys, "optimize", "--model", f"{tmp_path / 'net.py'}:make", "--input-shape",
                 "1,3,16,16", "--data", tmp_path / "imgs", "--out", tmp_path / "o")
    assert_refused(result, "--metric", "top1")


# --- masks -------------------------------------------------------------------------------------------------

SEGMENTER = "import torch.nn as nn\n\n\ndef make():\n    return nn.Conv2d(3, 3, 1)  # 3 classes per pixel\n"


def _write_pairs(root, n, size=(8, 8), mask_size=None, value=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        h, w = mask_size if (mask_size and i == 1) else size
        m = (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)
        m[0, 0] = 255  # void pixels are allowed
        if value is not None and i == 1:
            m[h - 1, w - 1] = value
        Image.fromarray(m).save(root / "masks" / f"s{i}.png")


def _prepare_masks(root):
    from edgeopt.config import RunConfig
    from edgeopt.engine.prepare import prepare

    (root / "seg.py").write_text(SEGMENTER)
    return prepare(RunConfig().with_flat(model=f"{root / 'seg.py'}:make", input_shape=[1, 3, 8, 8],
                                         data=str(root / "images"), data_options={"masks": str(root / "masks")}))


def test_mask_values_beyond_the_models_classes_refused(tmp_path):
    """Values 0..C-1 and the void 255 pass; 7 for a 3-class model is refused naming the file."""
    _write_pairs(tmp_path / "ok", 4)
    _, y = _prepare_masks(tmp_path / "ok").splits.eval.items[0]
    assert y.shape[-2:] == (8, 8) and int(y.max()) == 255
    _write_pairs(tmp_path / "bad", 4, value=7)
    with pytest.raises(DataError, match=r"mask .*s1\.png has class value\(s\) 7 outside 0\.\.2"):
        _prepare_masks(tmp_path / "bad")


def test_mask_of_another_size_refused(tmp_path):
    _write_pairs(tmp_path, 4, mask_size=(8, 10))
    with pytest.raises(DataError, match=r"mask .*s1\.png is 10x8 but its image s1\.png is 8x8"):
        _prepare_masks(tmp_path)


def test_mask_errors_on_the_command_line(tmp_path, monkeypatch, capsys):
    _write_pairs(tmp_path, 4, value=9)
    (tmp_path / "seg.py").write_text(SEGMENTER)
    result = cli(monkeypatch, capsys, "optimize", "--model", f"{tmp_path / 'seg.py'}:make", "--input-shape",
                 "1,3,8,8", "--data", tmp_path / "images", "--masks", tmp_path / "masks", "--out", tmp_path / "o")
    assert_refused(result, "s1.png", "outside 0..2")


def test_void_pixels_count_for_no_class():
    """255 marks void pixels: a perfect prediction of the other pixels scores 100% mIoU."""
    from edgeopt.measure.accuracy import miou

    masks = torch.tensor([[[0, 1], [2, 255]]])
    assert miou(np.array([[[0, 1], [2, 0]]]), masks, None) == pytest.approx(100.0)


def test_agent_names_an_onnx_model_without_inputs(files, tmp_path):
    """The measurement agent's answer for such a model says what is wrong (it was "StopIteration: ")."""
    import json
    import shutil

    from edgeopt.remote.worker import main

    shutil.copy(files["noinput"], tmp_path / "a.onnx")
    (tmp_path / "job.json").write_text(json.dumps({"threads": 1, "max_time_s": 0.2, "artifacts": [
        {"id": "a", "path": str(tmp_path / "a.onnx"), "format": "onnx", "runtime": "onnxruntime",
         "precision": "fp32"}]}))
    assert main(str(tmp_path)) == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["error"].startswith("ArtifactError: a.onnx has no inputs"), result


def test_bad_input_is_one_line_exactly_when_the_progress_display_never_started(tmp_path):
    """As a log sees it (no terminal): the error line alone, no blank line left by a progress display that a
    refused input never got to use."""
    import os
    import subprocess

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "edgeopt", "optimize", "--data", str(empty), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, repr(p.stderr)
