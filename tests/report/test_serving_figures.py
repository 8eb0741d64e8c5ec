"""The report under goal throughput says which goal and load each figure is for, and compares images/s with
the plain conversion of the original serving the most under the same load."""

from edgeopt.measure.timing import stats_from_samples
from edgeopt.report import Candidate, Report, Step, ThroughputStats
from edgeopt.report.headline import headline, speed_line
from edgeopt.report.markdown import figures_line, to_markdown


def _cand(cid, images_s, p50_ms, steps=(), drop=0.0, status="ok"):
    t = ThroughputStats(images_s=images_s, p50_ms=20.0, p99_ms=25.0, batch=32, streams=2, requests=100,
                        window_s=3.0, runtime_settings={"runtime": "openvino", "num_streams": 2, "jobs": 2})
    return Candidate(id=cid, status=status, runtime="openvino", precision="fp32", throughput=t,
                     latency_ms=stats_from_samples([p50_ms] * 30), latency_source="measured", accuracy=98.0 - drop,
                     accuracy_drop=drop, steps=[Step(technique=s) for s in steps])


def _report(goal="throughput"):
    base = _cand("original@openvino-fp32", 1000.0, 4.0)
    int8 = _cand("original@openvino-int8", 2000.0, 2.0)
    wide = _cand("original@onnx-int8", 3000.0, 1.5, drop=5.0, status="rejected")  # outside the budget
    pruned = _cand("prune50@openvino-int8", 5000.0, 1.8, steps=["prune"], drop=0.4)
    ctx = {"goal": goal, "max_accuracy_drop": 1, "retrain": False}
    if goal == "throughput":
        ctx.update(serve_batch=32, streams=2)
    return Report(edgeopt_version="0.1.0", context=ctx, target={"name": "local"}, environment={},
                  baseline=base, candidates=[int8, wide, pruned], chosen="prune50@openvino-int8")


def test_headline_compares_images_s_with_the_best_plain_conversion_under_the_same_load():
    r = _report()
    h = headline(r)
    assert h.best_plain_throughput == "original@openvino-int8"  # the onnx one is outside the budget
    assert h.images_s_vs_best_plain == 2.5
    assert h.best_plain == "original@openvino-int8"  # batch-1 latency: its own comparison
    line = speed_line(r)
    assert line.startswith("5000.0 images/s under batch 32, 2 requests in flight (goal throughput")
    assert "2.50× the best plain conversion" in line and "batch-1 latency (goal latency's figure)" in line


def test_markdown_says_which_goal_each_figure_is_for_and_tables_the_served_load():
    r = _report()
    r.model.headline = headline(r)
    md = to_markdown(r)
    assert "batch 1, one request at a time (goal latency's figure)" in figures_line(r)
    assert "batch 32, 2 requests in flight (goal throughput" in md
    assert "## Served load (goal throughput)" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| prune50@openvino-int8 | ok | openvino/fp32 | 5000.0")]
    assert len(rows) == 1 and "| 2.50× |" in rows[0] and "| 32 | 2 |" in rows[0]


def test_latency_goal_report_has_no_serving_figures():
    r = _report("latency")
    for c in [r.baseline, *r.candidates]:
        c.throughput = None
    md = to_markdown(r)
    assert figures_line(r) is None and "Served load" not in md and "images/s" not in speed_line(r)
    assert headline(r).images_s_vs_best_plain is None
