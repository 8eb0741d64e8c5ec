"""What edgeopt takes from the user is read as the user meant it and never turned against them: a tuple
example is positional, archives and pickles run only with explicit trust (never from a file), and no input
file or foreign output folder is written over."""

import sys

import pytest
import torch
from paths import TESTS
from torch import nn

import edgeopt
from edgeopt.errors import UnsafePickleError
from edgeopt.inputs.model_io import Inputs
from edgeopt.inputs.models import load_model
from edgeopt.measure.timing import BenchConfig

FAST = dict(target="local", goal="latency", max_accuracy_drop=100.0, resume=False, runtimes=["onnxruntime"],
            techniques=["prune"], bench_config=BenchConfig(warmup_runs=1, warmup_s=0, min_runs=3, max_time_s=0.2))


class ImgDepth(nn.Module):
    """Two inputs of different channel counts: a call that swaps or renames them fails."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, img, depth):
        return self.head(torch.relu(self.a(img) + self.b(depth)))


IMG, DEPTH = torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16)


def cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    """The CLI in this process (as `edgeopt ARGS` runs it): exit code and stderr."""
    from edgeopt.cli import main

    monkeypatch.setattr(sys, "argv", ["edgeopt", *map(str, args)])
    monkeypatch.delenv("EDGEOPT_DEBUG", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code or 0, capsys.readouterr().err


def one_line_error(code: int, err: str, *words: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_tuple_example_is_positional_end_to_end(tmp_path):
    report = edgeopt.optimize(ImgDepth().eval(), (IMG, DEPTH), out_dir=tmp_path / "out", **FAST)
    assert report.model["inputs"] == {"img": [1, 3, 16, 16], "depth": [1, 1, 16, 16]}
    assert report.baseline.latency_ms is not None
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_tuple_example_positional_whatever_the_names():
    """The names a tuple gets are labels for the exported inputs, never keywords of forward()."""
    loaded = load_model(ImgDepth(), input_shape=Inputs.of((IMG, DEPTH)))
    assert loaded.input_shapes == {"img": (1, 3, 16, 16), "depth": (1, 1, 16, 16)}


def test_dict_example_still_calls_by_name():
    # given in the other order than forward() declares: only a call by name works
    ex = Inputs.of({"depth": DEPTH, "img": IMG})
    loaded = load_model(ImgDepth(), input_shape=ex)
    assert loaded.input_shapes == {"depth": (1, 1, 16, 16), "img": (1, 3, 16, 16)}
    assert ex.call(loaded.model).shape == (1, 4, 16, 16)


def _harmless_pt2(tmp_path):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(nn.Sequential(nn.Linear(4, 3)).eval(), (torch.randn(1, 4),)), str(path))
    return path


def test_pt2_archive_needs_trust_like_a_pickle(tmp_path, capsys, monkeypatch):
    """Even a harmless archive: torch.export.load can run code from it in ways no inspection can rule out."""
    path = _harmless_pt2(tmp_path)
    with pytest.raises(UnsafePickleError, match="--trust-pickle") as err:
        load_model(str(path), input_shape=(1, 4))
    assert "run code" in str(err.value)
    line = one_line_error(*cli(capsys, monkeypatch, "plan", "--model", path, "--input-shape", "1,4"),
                          "--trust-pickle", "torch.export archive", "run code")
    assert str(path) in line
    loaded = load_model(str(path), input_shape=(1, 4), trust_pickle=True)
    assert loaded.model(torch.randn(1, 4)).shape == (1, 3)
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"not a zip")
    with pytest.raises(edgeopt.errors.ModelLoadError, match="not a readable torch.export archive"):
        load_model(str(broken), input_shape=(1, 4), trust_pickle=True)


class _MakesMarker:
    """Unpickling this creates a file: stands for the code a hostile pickle runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_config_file_cannot_switch_trust_on(tmp_path, capsys, monkeypatch):
    import pickle

    marker = tmp_path / "ran"
    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(_MakesMarker(marker)))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"inputs:\n  model: {evil}\n  trust_pickle: true\n  input_shape: [1, 4]\n")
    for args in (["plan"], ["optimize", "--out", tmp_path / "o"]):
        one_line_error(*cli(capsys, monkeypatch, *args, "--config", cfg),
                       str(cfg), "trust_pickle", "--trust-pickle", "command line")
        assert not marker.exists()
    with pytest.raises(edgeopt.errors.ConfigError, match="never read from a file"):
        edgeopt.load_config(cfg)
    # the same file without the key, with the flag on the command line: trust is the user's own decision
    from edgeopt.cli.options import config_from_flags

    cfg.write_text(f"inputs:\n  model: {evil}\n  input_shape: [1, 4]\n")
    assert config_from_flags({"trust_pickle": True}, {"trust_pickle"}, cfg).inputs.trust_pickle is True
    assert config_from_flags({"trust_pickle": False}, set(), cfg).inputs.trust_pickle is False


def test_saved_run_config_never_carries_trust(tmp_path):
    from edgeopt.config import RunConfig, load_config

    text = RunConfig().with_flat(model="m.pt", trust_pickle=True).to_yaml()
    assert "trust_pickle: true" not in text and "--trust-pickle again" in text
    saved = tmp_path / "run.yaml"
    saved.write_text(text)
    replay = load_config(saved)  # replayable as written, and untrusted until the flag is given again
    assert replay.inputs.trust_pickle is False and replay.inputs.model == "m.pt"


def _tinynet_file(tmp_path):
    """The model's source as a user has it: a file of their own next to the outputs."""

    src = tmp_path / "net.py"
    src.write_text((TESTS / "tinynet.py").read_text())
    return src


def test_export_never_writes_over_the_weights(tmp_path, capsys, monkeypatch):
    """OpenVINO's weights go to the .xml's companion .bin: here, the user's checkpoint."""
    import tinynet

    src = _tinynet_file(tmp_path)
    weights = tmp_path / "weights.bin"
    torch.save(tinynet.make().state_dict(), weights)
    before = weights.read_bytes()
    one_line_error(*cli(capsys, monkeypatch, "export", "--model", f"{src}:make", "--weights", weights,
                        "--input-shape", "1,1,16,16", "--format", "openvino", "--out", tmp_path / "weights.xml"),
                   str(weights), "--weights")
    assert weights.read_bytes() == before and not (tmp_path / "weights.xml").exists()


def test_prune_never_writes_its_record_over_the_model_source(tmp_path, capsys, monkeypatch):
    src = _tinynet_file(tmp_path)
    before = src.read_bytes()
    one_line_error(*cli(capsys, monkeypatch, "prune", "--model", f"{src}:make", "--input-shape", "1,1,16,16",
                        "--out", tmp_path / "p.onnx", "--record", src), str(src), "--model")
    assert src.read_bytes() == before and not (tmp_path / "p.onnx").exists()


def test_optimize_never_writes_into_a_folder_of_the_users_files(tmp_path, capsys, monkeypatch):
    src = _tinynet_file(tmp_path)
    mine = tmp_path / "deploy"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"the user's own network")
    one_line_error(*cli(capsys, monkeypatch, "optimize", "--model", f"{src}:make", "--input-shape", "1,1,16,16",
                        "--out", mine), str(mine), "model.onnx")
    assert (mine / "model.onnx").read_bytes() == b"the user's own network"
    assert sorted(p.name for p in mine.iterdir()) == ["model.onnx"]
    # the folder that holds the model's own source is an input folder as much
    one_line_error(*cli(capsys, monkeypatch, "optimize", "--model", f"{src}:make", "--input-shape", "1,1,16,16",
                        "--out", tmp_path), str(src))


def test_a_second_optimize_into_its_own_folder_still_works(tmp_path):
    import tinynet

    out = tmp_path / "out"
    options = dict(FAST, techniques=["quantize"], out_dir=out)
    first = edgeopt.optimize(tinynet.make_plain(), torch.randn(1, 1, 16, 16), **options)
    assert (out / ".edgeopt").is_file() and first.baseline is not None
    again = edgeopt.optimize(tinynet.make_plain(), torch.randn(1, 1, 16, 16), **options)
    assert again.baseline is not None and (out / "report.json").is_file()


def test_output_folder_rules(tmp_path):
    from edgeopt.errors import ConfigError
    from edgeopt.report.outputs import MARKER, check_folder, claim_folder

    check_folder(tmp_path / "new")  # a check writes nothing: a run stopped by bad input leaves no folder
    assert not (tmp_path / "new").exists()
    claim_folder(tmp_path / "new")  # created and marked
    assert (tmp_path / "new" / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_folder(empty)
    assert (empty / MARKER).is_file()
    earlier = tmp_path / "earlier"  # written by a run from before the marker: its run.yaml says so
    earlier.mkdir()
    (earlier / "run.yaml").write_text("# edgeopt run config; replay: edgeopt optimize --config run.yaml\n")
    claim_folder(earlier)
    weights = earlier / "w.pth"
    weights.write_bytes(b"w")
    with pytest.raises(ConfigError, match="holds an input of this run"):
        claim_folder(earlier, {"--weights": weights})
    data = tmp_path / "images"
    data.mkdir()
    with pytest.raises(ConfigError, match="inside the input folder"):
        claim_folder(data / "out", {"--data": data})
    assert not (data / "out").exists()
