"""Resume: a run interrupted midway, then rerun, takes the finished candidates from OUT/cache."""

import pytest
import torch

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
