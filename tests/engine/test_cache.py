"""Resume: a run interrupted midway, then rerun, takes the finished candidates from OUT/cache."""

import hashlib
from functools import partial

import pytest
import torch
from imagefolders import class_folders

import edgeopt
from edgeopt.engine.cache import CandidateCache, data_hash, key, model_hash
from edgeopt.engine.pipeline import Progress
from edgeopt.inputs.data import Batches


def test_keys_follow_model_weights_steps_and_data(tiny_plain):
    h = model_hash(tiny_plain)
    import tinynet

    assert model_hash(tinynet.make_plain()) == h  # same seed, same weights
    with torch.no_grad():
        next(tiny_plain.parameters()).add_(1e-3)
    assert model_hash(tiny_plain) != h
    # the same weights, another stride: another network, which no weight shape shows
    from torch import nn

    one, two = nn.Sequential(nn.Conv2d(1, 4, 3)), nn.Sequential(nn.Conv2d(1, 4, 3, stride=2))
    two.load_state_dict(one.state_dict())
    assert model_hash(one) != model_hash(two)
    x = torch.randn(4, 1, 16, 16)
    assert data_hash(Batches([(x, None)])) != data_hash(Batches([(x + 1, None)]))
    assert key("m", [{"technique": "prune"}], "onnxruntime", "fp32") != key("m", [], "onnxruntime", "fp32")
    assert key("m", [], "onnxruntime", "fp32") != key("m", [], "onnxruntime", "bf16")


def test_cache_roundtrip_and_corrupt_entry(tmp_path):
    c = CandidateCache(tmp_path)
    assert c.get("cand", "k") is None
    c.put("cand", "k", {"status": "ok", "accuracy": 97.5})
    assert c.get("cand", "k") == {"status": "ok", "accuracy": 97.5} and c.hits == 1
    (tmp_path / "cache" / "cand-bad.json").write_text("{half")
    assert c.get("cand", "bad") is None
    assert CandidateCache(tmp_path, enabled=False).get("cand", "k") is None


class Interrupt(Progress):
    """Stands in for Ctrl-C after `after` finished candidates."""

    def __init__(self, after: int):
        self.after, self.n = after, 0

    def advance(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.after:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_cache(tmp_path, tiny_plain, example, fast_bench):
    g = torch.Generator().manual_seed(3)
    calib = [torch.randn(8, 1, 16, 16, generator=g) for _ in range(2)]
    kw = dict(max_accuracy_drop=100.0, calib_data=calib, out_dir=tmp_path, runtimes=["onnxruntime"],
              techniques=["prune"], bench_config=fast_bench)
    with pytest.raises(KeyboardInterrupt):
        edgeopt.optimize(tiny_plain, example, progress=Interrupt(after=2), **kw)
    done = list((tmp_path / "cache").glob("cand-*.json"))
    assert len(done) >= 1 and not (tmp_path / "report.json").exists()
    report = edgeopt.optimize(tiny_plain, example, **kw)
    assert report.baseline.from_cache and report.baseline.status == "ok"
    assert report.model["cache_hits"] >= len(done)
    assert report.chosen is not None and report.baseline.latency_ms.n > 0  # latency re-measured, not cached
    again = edgeopt.optimize(tiny_plain, example, **kw)
    tried = [c for c in [again.baseline, *again.candidates] if c.status in ("ok", "failed")]
    assert tried and all(c.from_cache for c in tried)
    assert any("(cached)" in t for t in again.model["search"]["trace"])
    # the cache never changes results: same accuracies as the first complete run
    assert {c.id: c.accuracy for c in tried} == {c.id: c.accuracy for c in [report.baseline, *report.candidates]
                                                 if c.status in ("ok", "failed")}


def _ids_params(report):
    return {c.id: (c.status, c.params) for c in [report.baseline, *report.candidates]}


def test_models_sharing_an_out_dir_never_restore_each_others_artifacts(tmp_path, example, fast_bench, monkeypatch):
    """A, then B (another output shape), then A again into one folder: the third run is A's, end to end."""
    import onnxruntime as ort
    import tinynet

    from edgeopt.decide import policy

    # statuses compared across runs must not rest on latency: on a shared machine INT8 of this tiny net measures
    # slower than fp32 in one run and faster in the next
    monkeypatch.setattr(policy, "REDUCED_PRECISION_MUST_BE_FASTER", False)

    # goal size: the choice (INT8) rests on file sizes, not on latencies that differ from run to run
    calib = [torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(3))]
    kw = dict(max_accuracy_drop=100.0, out_dir=tmp_path, runtimes=["onnxruntime"], techniques=["quantize"],
              calib_data=calib, goal="size", bench_config=fast_bench)
    a = edgeopt.optimize(tinynet.make_plain(num_classes=10), example, **kw)
    b = edgeopt.optimize(tinynet.make_plain(num_classes=3), example, **kw)
    assert b.chosen is not None and b.model.cache_hits == 0
    again = edgeopt.optimize(tinynet.make_plain(num_classes=10), example, **kw)
    assert again.model.cache_hits >= 1  # A's own entries are still good
    assert _ids_params(again) == _ids_params(a) and again.chosen == a.chosen
    for c in [again.baseline, *again.candidates]:
        if c.status == "ok":  # the artifact measured is A's: A's output shape
            sess = ort.InferenceSession(str(tmp_path / c.artifact))
            assert sess.get_outputs()[0].shape[-1] == 10, c.id
    published = ort.InferenceSession(str(tmp_path / "model.onnx"))
    out = published.run(None, {published.get_inputs()[0].name: example.numpy()})[0]
    assert out.shape == (1, 10)
    # B's network copied over A's baseline artifact: A's next run rebuilds it instead of measuring B's
    (tmp_path / a.baseline.artifact).write_bytes((tmp_path / b.baseline.artifact).read_bytes())
    last = edgeopt.optimize(tinynet.make_plain(num_classes=10), example, **kw)
    assert not last.baseline.from_cache and last.baseline.status == "ok"
    assert ort.InferenceSession(str(tmp_path / last.baseline.artifact)).get_outputs()[0].shape[-1] == 10


def _onnx(path, out_features):
    from torch import nn

    from edgeopt.formats import export_verified

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_verified(nn.Linear(4, out_features), torch.randn(1, 4), "onnx", path.with_suffix(""), verify=False)


def test_a_cached_artifact_changed_since_is_rebuilt_not_restored(tmp_path):
    from edgeopt.engine.build import from_cache, to_cache
    from edgeopt.report import Candidate

    art = tmp_path / "artifacts" / "m.onnx"
    _onnx(art, 2)
    done = Candidate(id="m", runtime="onnxruntime", precision="fp32", status="ok", artifact="artifacts/m.onnx",
                     params=10, accuracy=90.0, metric="top1")
    entry = to_cache(done, tmp_path)
    assert entry["artifact_sha256"] == {"artifacts/m.onnx": hashlib.sha256(art.read_bytes()).hexdigest()}

    def restore(e):
        cand = Candidate(id="m", runtime="onnxruntime", precision="fp32")
        ok, session = from_cache(cand, e, tmp_path, 1)
        assert ok == cand.from_cache and (session is not None) == ok
        return ok, cand

    ok, cand = restore(entry)
    assert ok and cand.params == 10 and cand.accuracy == 90.0
    _onnx(art, 3)  # another network under the same name
    assert restore(entry) == (False, Candidate(id="m", runtime="onnxruntime", precision="fp32"))
    _onnx(art, 2)
    assert restore(entry)[0]  # the same bytes again: restored
    assert not restore({k: v for k, v in entry.items() if k != "artifact_sha256"})[0]  # nothing to check against
    assert not restore({**entry, "artifact": "../elsewhere/m.onnx"})[0]
    art.unlink()
    assert not restore(entry)[0]


_image_folder = partial(class_folders, n=6, size=(16, 16), mode="L")


def _held_out(root, seed=0, val_split=0.2):
    from edgeopt.inputs.data.folder import list_folder, stratified_split

    return [f for f, _ in stratified_split(list_folder(root)[1], val_split, seed)[1]]


def _repaint(f):
    """New pixels under the same file name."""
    import numpy as np
    from PIL import Image

    with Image.open(f) as im:
        a = 255 - np.asarray(im)
    Image.fromarray(a, mode="L").save(f)


def test_data_hashes_follow_pixels_rewritten_under_the_same_names(tmp_path):
    from edgeopt.inputs.data import image_folder

    root = _image_folder(tmp_path / "imgs")

    def hashes():
        s = image_folder(root, 16, 1, augment=False, workers=0)
        return s.heldout_hash, data_hash(s.eval), data_hash(s.calib)

    before = hashes()
    assert hashes() == before  # nothing changed: the same hashes (the cache hits)
    _repaint(_held_out(root)[0])
    after = hashes()
    assert after[0] != before[0] and after[1] != before[1]
    assert after[2] == before[2]  # calibration comes from the training split, which did not change


def test_folder_hash_past_its_content_bound_uses_size_and_mtime(tmp_path):
    import os

    from edgeopt.inputs.data.folder import file_list_hash

    (tmp_path / "a").mkdir()
    pairs = [(tmp_path / "a" / f"{i}.png", 0) for i in range(2)]
    for f, _ in pairs:
        f.write_bytes(b"x" * 100)
    full, bounded = file_list_hash(pairs, tmp_path), file_list_hash(pairs, tmp_path, content_bytes=100)
    last = pairs[1][0]
    st = last.stat()
    last.write_bytes(b"y" * 100)  # same size, same time: only the bytes tell
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_list_hash(pairs, tmp_path) != full  # hashed in full: the change is seen
    assert file_list_hash(pairs, tmp_path, content_bytes=100) == bounded  # past the bound: size and time only
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_list_hash(pairs, tmp_path, content_bytes=100) != bounded


def test_a_cached_run_over_repainted_data_measures_again(tmp_path, tiny_plain, example, fast_bench):
    root = _image_folder(tmp_path / "imgs")
    kw = dict(data=str(root), max_accuracy_drop=100.0, out_dir=tmp_path / "o", runtimes=["onnxruntime"],
              techniques=["quantize"], goal="size", bench_config=fast_bench,
              data_options={"augment": False, "workers": 0})
    first = edgeopt.optimize(tiny_plain, example, **kw)
    assert edgeopt.optimize(tiny_plain, example, **kw).model.cache_hits >= 1  # unchanged data: cached
    _repaint(_held_out(root)[0])
    again = edgeopt.optimize(tiny_plain, example, **kw)
    assert again.model.cache_hits == 0 and not again.baseline.from_cache
    assert again.environment["heldout_sha256"] != first.environment["heldout_sha256"]
