import pytest

from edgeopt.measure.roofline import estimate_ms, estimate_stats, roofline
from edgeopt.targets import TargetProfile, detect_local, list_targets, load_target


def _profile(**kw):
    base = dict(name="t", kind="cpu", arch="x", runtimes=["onnxruntime"], precisions=["fp32", "int8"],
                peak_ops={"fp32": 1e12, "int8": 4e12}, memory_bandwidth_gbs=100.0)
    return TargetProfile(**{**base, **kw})


def test_compute_bound_is_two_ops_per_mac():
    r = roofline(_profile(), macs=10**9, weight_bytes=4_000)
    assert r.bound == "compute" and r.compute_ms == pytest.approx(2.0) and r.total_ms == pytest.approx(2.0)


def test_memory_bound_and_precision_scales_traffic():
    fp32 = roofline(_profile(), macs=1, weight_bytes=400 * 10**6)  # 400 MB at 100 GB/s = 4 ms
    assert fp32.bound == "memory" and fp32.total_ms == pytest.approx(4.0)
    assert roofline(_profile(), macs=1, weight_bytes=400 * 10**6, precision="int8").total_ms == pytest.approx(1.0)


def test_faster_precision_uses_its_peak_and_unknown_falls_back_to_fp32():
    p = _profile()
    assert estimate_ms(p, 10**9, 0, "int8") == pytest.approx(estimate_ms(p, 10**9, 0, "fp32") / 4)
    r = roofline(p, 10**9, 0, "fp16")  # no fp16 peak in this profile
    assert r.peak_precision == "fp32" and r.compute_ms == pytest.approx(2.0)


def test_call_overhead_is_a_floor():
    p = _profile(call_overhead_ms=0.05)
    assert estimate_ms(p, 0, 0) == pytest.approx(0.05)
    assert estimate_ms(p, 10**9, 0) == pytest.approx(2.05)


def test_no_peak_no_estimate_and_stats_are_marked_unmeasured():
    assert estimate_ms(_profile(peak_ops={}), 10**9, 10**6) is None
    s = estimate_stats(_profile(), 10**9, 0, "fp32")
    assert s.n == 0 and s.samples_ms == [] and s.p50 == s.p99


@pytest.mark.parametrize("profile", [p for p in list_targets() if p.peak_ops], ids=lambda p: p.name)
def test_every_profile_estimates_resnet18_plausibly(profile):
    # resnet18 at 224x224: 1.82 GMACs, 46.8 MB of fp32 weights; any real device takes 0.01 ms .. 1 s
    ms = estimate_ms(profile, 1_819_066_368, 46_800_000, "fp32")
    assert 0.01 < ms < 1000


def test_gpu_faster_than_cpu_in_the_model():
    macs, w = 1_819_066_368, 46_800_000
    assert estimate_ms(load_target("nvidia-gpu"), macs, w) < estimate_ms(load_target("x86-avx2"), macs, w)
    orin = load_target("jetson")
    assert estimate_ms(orin, macs, w, "fp16") < estimate_ms(orin, macs, w, "fp32")


def test_local_profile_has_roofline_figures_on_a_known_cpu():
    local = detect_local()
    if local.kind != "cpu" or not local.peak_ops:
        pytest.skip("no built-in CPU profile matches this machine's ISA")
    assert "roofline figures scaled from" in local.description and local.memory_bandwidth_gbs > 0
