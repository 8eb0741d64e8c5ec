"""The streaming data pipeline: training order reshuffled per epoch and mixing classes, a stratified and
reproducible held-out split, stratified calibration, lazy decoding under a memory cap, preprocessing,
Datasets/DataLoaders from the API, and bad inputs named in one line."""

import pytest
import torch
from imagefolders import class_folders
from torch.utils.data import DataLoader, TensorDataset

from edgeopt.errors import DataError
from edgeopt.inputs.data import Batches, StreamBatches, TrainFeed, folder, image_folder, resolve_data
from edgeopt.training import fit

_folder = class_folders


def _labels(batches):
    return [int(v) for _, y in batches for v in y]


def test_training_order_differs_between_epochs_and_mixes_classes(tmp_path):
    s = image_folder(_folder(tmp_path / "imgs"), 8, 3, augment=False, batch_size=6, workers=0)
    feed = TrainFeed(s.train, seed=3)
    e0, e1 = _labels(feed.epoch(0)), _labels(feed.epoch(1))
    assert sorted(e0) == sorted(e1) == sorted(s.train.labels().tolist())  # every sample once per epoch
    assert e0 != e1  # reshuffled
    assert len(set(e0[:6])) > 1  # the files are class-sorted on disk, the first batch is not
    assert _labels(TrainFeed(s.train, seed=3).epoch(0)) == e0  # seeded: a rerun sees the same order
    # batches already in memory, class-sorted: shuffled sample by sample, not batch by batch
    x = torch.randn(40, 1, 4, 4)
    y = torch.arange(4).repeat_interleave(10)
    mem = TrainFeed([(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)], seed=0)
    first = next(iter(mem.epoch(0)))[1]
    assert len(first) == 10 and len(set(first.tolist())) > 1


def test_ranks_read_disjoint_equal_shards(tmp_path):
    x, y = torch.randn(21, 1, 4, 4), torch.arange(21) % 3
    feed = TrainFeed([(x, y)], seed=0)
    xs = [torch.cat([b for b, _ in feed.epoch(0, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(xs[0]) == len(xs[1]) == 10 and feed.steps(2) == 1  # lockstep: the remainder is dropped
    rows = {tuple(v.flatten().tolist()) for v in torch.cat(xs)}
    assert len(rows) == 20  # no sample on both ranks


def test_heldout_split_is_stratified_and_identical_across_reruns(tmp_path):
    root = _folder(tmp_path / "imgs", n=10)
    a = image_folder(root, 8, 3, val_split=0.2, seed=5, workers=0)
    b = image_folder(root, 8, 3, val_split=0.2, seed=5, workers=0)
    c = image_folder(root, 8, 3, val_split=0.2, seed=6, workers=0)
    assert a.heldout_hash == b.heldout_hash != c.heldout_hash
    assert a.eval.labels().tolist() == [0, 0, 1, 1, 2, 2]  # 20 % of each class, in a fixed order
    assert torch.equal(torch.cat(list(a.eval.inputs())), torch.cat(list(b.eval.inputs())))
    assert len(a.train) == 24


def test_calibration_is_a_stratified_sample_covering_every_class(tmp_path):
    root = _folder(tmp_path / "imgs", n=10)
    s = image_folder(root, 8, 3, calib_size=6, batch_size=2, workers=0)
    labels = _labels(s.calib)
    assert len(labels) == 6 and labels[:3] == [0, 1, 2]  # interleaved: any prefix covers the classes
    assert isinstance(s.calib, Batches) and s.calib.key


def test_large_heldout_set_streams_instead_of_being_decoded_whole(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", n=10)
    decoded = []
    real = folder.ImageFiles.load_image
    monkeypatch.setattr(folder.ImageFiles, "load_image", lambda self, i: decoded.append(i) or real(self, i))
    small = image_folder(root, 8, 3, calib_size=3, workers=0)
    assert isinstance(small.eval, Batches)  # under the cap: decoded once, kept
    monkeypatch.setattr(folder, "MEMORY_CAP_BYTES", 1000)  # a tiny cap: 6 images of 3x8x8 floats exceed it
    decoded.clear()
    s = image_folder(root, 8, 3, calib_size=3, batch_size=2, workers=0)
    assert isinstance(s.eval, StreamBatches) and isinstance(s.train, StreamBatches)
    assert len(decoded) == 3  # only the calibration sample was decoded up front
    decoded.clear()
    assert s.eval.labels().tolist() == [0, 0, 1, 1, 2, 2] and decoded == []  # labels without decoding
    for i, (x, _) in enumerate(s.eval):
        assert len(x) == 2 and len(decoded) == 2 * (i + 1)  # one batch decoded at a time
    assert len(decoded) == 6


def test_preprocessing_resize_crop_grayscale_and_augmentation(tmp_path):
    root = _folder(tmp_path / "wide", classes=("a", "b"), n=4, size=(20, 10))
    s = image_folder(root, 8, 1, resize=10, crop=8, mean=(0.5,), std=(0.5,), augment=True, workers=0)
    x = s.calib.items[0][0]
    assert x.shape[1:] == (1, 8, 8) and x.min() >= -1.0 and x.max() <= 1.0  # RGB files read as grayscale
    ds = s.train.dataset
    reads = [ds[0][0] for _ in range(5)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])  # random crops and flips for training
    ev = s.eval.items[0][0]
    again = image_folder(root, 8, 1, resize=10, crop=8, augment=True, workers=0).eval.items[0][0]
    assert torch.equal(ev, again)  # evaluation never augmented
    plain = image_folder(root, 8, 1, augment=False, workers=0).train.dataset
    assert torch.equal(plain[0][0], plain[0][0])
    with pytest.raises(DataError, match="--crop gives 6x6 images, the model takes 8x8"):
        resolve_data("m", str(root), None, None, None, (1, 8, 8), 2, {"crop": 6})


def test_bad_inputs_are_one_line_errors(tmp_path):
    root = _folder(tmp_path / "imgs", classes=("a", "b"), n=6)
    (root / "b" / "broken.png").write_bytes(b"not an image")
    s = image_folder(root, 8, 3, calib_size=2, batch_size=2, workers=1)  # decoded by a worker process
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png") as e:
        for _ in TrainFeed(s.train).epoch(0):
            pass
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    with pytest.raises(DataError, match=r"1 \(grayscale\) or 3 \(RGB\) channels"):
        resolve_data("m", str(root), None, None, None, (4, 8, 8), 2)
    with pytest.raises(DataError, match="mean/--std need 1 or 1 values"):
        resolve_data("m", str(root), None, None, None, (1, 8, 8), 2, {"mean": (0.5, 0.5, 0.5)})
    (root / "c").mkdir()
    with pytest.raises(DataError, match="class folder .*c has no images"):
        image_folder(root, 8, 3)


def test_a_broken_image_is_one_line_after_ultralytics_patched_pillow(tmp_path, monkeypatch):
    """Ultralytics, once imported (a YOLO model loaded), replaces PIL's Image.open with one that answers an
    undecodable file by importing pi_heif, not installed with it: the folder reader and the mask reader still
    say which file, in one line."""
    from PIL import Image, UnidentifiedImageError

    from edgeopt.inputs.masks import _mask

    real = Image.open

    def patched(*args, **kwargs):  # what ultralytics.utils.patches.image_open does without pi_heif
        try:
            return real(*args, **kwargs)
        except UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'") from None

    monkeypatch.setattr(Image, "open", patched)
    root = _folder(tmp_path / "imgs", classes=("a", "b"), n=6)
    (root / "b" / "broken.png").write_bytes(b"not an image")
    s = image_folder(root, 8, 3, calib_size=2, batch_size=2, workers=1)
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png: not an image Pillow can decode"):
        for _ in TrainFeed(s.train).epoch(0):
            pass
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png: not an image Pillow can decode"):
        _mask(root / "b" / "broken.png", (8, 8), root / "b" / "broken.png", None)


def test_datasets_and_dataloaders_from_the_api_stream(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.arange(64) % 4
    ds = TensorDataset(x, y)
    s = resolve_data("module", None, DataLoader(ds, batch_size=16), ds, DataLoader(ds, batch_size=16), (1, 8, 8),
                     4, {"calib_size": 20, "batch_size": 8, "workers": 0})
    assert isinstance(s.train, StreamBatches) and isinstance(s.eval, StreamBatches)
    assert isinstance(s.calib, Batches) and len(s.calib) == 20  # a calibration sample, kept in memory
    assert s.eval.labels().tolist() == y.tolist() and s.train.labelled
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    res = fit(net, s.train, epochs=2, lr=0.05)
    assert len(res.losses) == 2 and len(res.data_seconds) == 2 and res.data_seconds[0] <= res.epoch_seconds[0]
    bad = TensorDataset(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="evaluation data batch 0 has sample shape"):
        resolve_data("module", None, None, None, bad, (1, 8, 8), 4)


def test_data_file_leaves_no_pycache(tmp_path):
    f = tmp_path / "mydata.py"
    f.write_text("import torch\n"
                 "def fn():\n"
                 "    return {'eval': [(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))]}\n")
    s = resolve_data("module", f"{f}:fn", None, None, None, (1, 8, 8), 2)
    assert s.eval.labelled and not (tmp_path / "__pycache__").exists()


@pytest.mark.slow  # a whole optimize in a subprocess
def test_cli_optimize_on_an_image_folder_records_the_heldout_split(tmp_path, tinynet_spec):
    import json
    import subprocess
    import sys

    root = _folder(tmp_path / "imgs", classes=[f"c{i}" for i in range(10)], n=4, size=(16, 16), mode="L")

    def run(out, *extra):
        return subprocess.run([sys.executable, "-m", "edgeopt", "optimize", "--model", tinynet_spec,
                               "--input-shape", "1,1,16,16", "--data", str(root), "--techniques", "quantize",
                               "--runtimes", "onnxruntime", "--bench-time", "0.3", "--max-accuracy-drop", "100",
                               "--calib-size", "10", "--workers", "0", "--no-augment", "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=600)

    p = run(tmp_path / "out")
    assert p.returncode == 0, p.stderr[-2000:]
    env = json.loads((tmp_path / "out" / "report.json").read_text())["environment"]
    assert env["data"].startswith("folder:") and len(env["heldout_sha256"]) == 64
    p = run(tmp_path / "bad", "--crop", "12")
    assert p.returncode == 2 and "--crop gives 12x12 images" in p.stderr and "Traceback" not in p.stderr


def test_streaming_pins_the_allocators_mmap_threshold(monkeypatch):
    """Streaming frees one batch after another: glibc's dynamic mmap threshold would move batch-sized tensors
    onto a heap that fragments and never shrinks; a StreamBatches pins the threshold once per process."""
    import ctypes
    import sys

    import edgeopt.inputs.data.batches as batches

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(batches, "_pinned", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: FakeLibc())
    monkeypatch.setattr(sys, "platform", "linux")
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    batches.StreamBatches(ds, batch_size=2)
    batches.StreamBatches(ds, batch_size=2)
    assert calls == [(-3, batches.MMAP_THRESHOLD_BYTES)]  # M_MMAP_THRESHOLD, once


class _Halves(torch.nn.Module):
    """Class 0 when the left half is brighter: a flip swaps the class of almost every image."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)


class _Brightness(torch.nn.Module):
    """Reads only the mean: its top-1 is the same for an image and its mirror image."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([m, -m], 1)


def test_a_flip_is_kept_only_where_the_original_keeps_its_top1(tmp_path):
    from edgeopt.inputs.data.transforms import flip_agreement, keep_flip_if_label_preserving

    root = _folder(tmp_path / "imgs", classes=("a", "b"), n=8)
    s = image_folder(root, 8, 3, augment=True, workers=0)
    key = s.train.key
    assert flip_agreement(_Brightness(), s.calib) == 100.0 and flip_agreement(_Halves(), s.calib) < 20.0
    kept = keep_flip_if_label_preserving(_Brightness(), s.train, s.calib)
    assert "flipped left-right at random" in kept and s.train.dataset.transform.flip and s.train.key == key
    dropped = keep_flip_if_label_preserving(_Halves(), s.train, s.calib)
    assert "not flipped" in dropped and "not label-preserving" in dropped
    assert not s.train.dataset.transform.flip and s.train.key != key  # fine-tuned models are keyed on it
    # the random resized crop stays: two reads of one training image still differ, neither is mirrored
    ds = s.train.dataset
    assert any(not torch.equal(ds[0][0], ds[0][0]) for _ in range(5))
    assert keep_flip_if_label_preserving(_Halves(), s.train, s.calib) is None  # nothing left to decide
    plain = image_folder(root, 8, 3, augment=False, workers=0)
    assert keep_flip_if_label_preserving(_Halves(), plain.train, plain.calib) is None  # no augmentation asked


def test_a_flip_is_not_decided_for_outputs_other_than_class_logits(tmp_path):
    from edgeopt.inputs.data.transforms import flip_agreement, keep_flip_if_label_preserving

    class Dense(torch.nn.Module):
        def forward(self, x):
            return {"masks": x}

    s = image_folder(_folder(tmp_path / "imgs", classes=("a", "b"), n=4), 8, 3, augment=True, workers=0)
    assert flip_agreement(Dense(), s.calib) is None
    assert keep_flip_if_label_preserving(Dense(), s.train, s.calib) is None and s.train.dataset.transform.flip


def test_prepare_decides_the_flip_when_retraining_and_the_report_says_why(tmp_path):
    from edgeopt.config import RunConfig
    from edgeopt.engine.prepare import prepare

    root = _folder(tmp_path / "imgs", classes=("a", "b"), n=8)

    def prep(retrain):
        cfg = RunConfig().with_flat(data=str(root), input_shape=(1, 3, 8, 8), retrain=retrain,
                                    data_options={"workers": 0})
        return prepare(cfg, model=_Halves(), example=torch.randn(1, 3, 8, 8)).splits

    s = prep(True)
    assert "not flipped" in s.augmentation and not s.train.dataset.transform.flip
    s = prep(False)  # no fine-tuning: nothing to decide, nothing run
    assert s.augmentation is None and s.train.dataset.transform.flip


def test_the_distillation_screen_reads_training_images_as_evaluation_does(tmp_path):
    from edgeopt.inputs.data.transforms import eval_transform
    from edgeopt.training.screen import held_out_split

    s = image_folder(_folder(tmp_path / "imgs", classes=("a", "b"), n=16), 8, 3, augment=True, batch_size=4,
                     workers=0)
    probe, held = held_out_split(s.train, 4, 2)
    again = held_out_split(s.train, 4, 2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(probe + held, again[0] + again[1], strict=True))
    ds = s.train.dataset
    assert ds.transform.augment  # augmented again for the fine-tuning itself
    assert torch.equal(held[-1][0][0], eval_transform(ds.transform.p)(ds.load_image(4 * 5)))  # batch 5, image 0


def test_steps_per_epoch_of_a_streamed_folder_without_decoding_it(tmp_path):
    from edgeopt.inputs.data.epochs import steps_per_epoch

    root = _folder(tmp_path / "imgs", classes=("a", "b"), n=6)
    s = image_folder(root, 8, 3, calib_size=2, batch_size=4, workers=1)
    assert isinstance(s.train, StreamBatches)
    assert steps_per_epoch(s.train) == TrainFeed(s.train).steps() == -(-len(s.train) // 4)
