"""report.md / report.html / report.png from a hand-built report (no export, no measurement)."""

from edgeopt.report import Candidate, Decision, LatencyStats, Report, load_report, write_report
from edgeopt.report.html import pareto_front, scatter_png, write_html_report


def _lat(ms):
    return LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=10)


def _report(metric="top1"):
    base = Candidate(id="original@onnx-fp32", status="ok", latency_ms=_lat(1.0), accuracy=99.0, metric=metric,
                     size_bytes=4_000_000, latency_source="measured")
    cands = [
        Candidate(id="a@onnx-fp32", status="ok", latency_ms=_lat(0.5), accuracy=98.5, accuracy_drop=0.5,
                  metric=metric, latency_source="measured", size_bytes=2_000_000),
        Candidate(id="b@onnx-fp32", status="rejected", latency_ms=_lat(0.6), accuracy=97.0, accuracy_drop=2.0,
                  metric=metric, latency_source="measured", reason="accuracy drop 2.00 pp > budget 1.0 pp"),
        Candidate(id="c@onnx-fp32", status="ok", latency_ms=_lat(0.3), accuracy=90.0, metric=metric,
                  latency_source="measured"),
        Candidate(id="d@onnx-fp32", status="rejected", reason="not tried: bisection settled"),
    ]
    return Report(edgeopt_version="0", context={"goal": "latency", "max_accuracy_drop": 1.0, "retrain": False,
                                                 "latency_budget_ms": 0.8},
                  target={"name": "local", "kind": "cpu"}, environment={"cpu": "x"}, baseline=base,
                  candidates=cands, chosen="a@onnx-fp32",
                  decisions=[Decision(technique="unstructured_pruning", decision="rejected", reason="dense <kernels>")],
                  model={"search": {"trace": ["prune-l2: bisection kept prune-l230"]}, "plan_notes": ["note one"]})


def test_pareto_front_keeps_only_undominated_points():
    r = _report()
    front = [c.id for c in pareto_front([r.baseline, *r.candidates[:3]])]
    assert front == ["c@onnx-fp32", "a@onnx-fp32", "original@onnx-fp32"]  # b is dominated by a


def test_scatter_png_and_html_and_markdown(tmp_path):
    r = _report()
    png = scatter_png(r)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    write_report(r, tmp_path)
    write_html_report(r, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and 'class="chosen"' in html and "a@onnx-fp32" in html
    assert "dense &lt;kernels&gt;" in html  # reasons are escaped, not injected
    md = (tmp_path / "report.md").read_text()
    assert "![latency vs accuracy](report.png)" in md and (tmp_path / "report.png").is_file()
    assert "## Plan: decisions and reasons" in md and "bisection kept prune-l230" in md
    assert "2.00× faster" in md and "| d@onnx-fp32 | rejected |" in md
    assert load_report(tmp_path / "report.json").chosen == "a@onnx-fp32"


def test_fidelity_is_labelled_and_nothing_measured_still_writes(tmp_path):
    r = _report(metric="fidelity")
    write_html_report(r, tmp_path)
    assert "fidelity: top-1 agreement" in (tmp_path / "report.md").read_text()
    empty = r.model_copy(update={"baseline": None, "candidates": [], "chosen": None})
    assert scatter_png(empty) is None
    write_html_report(empty, tmp_path / "e")
    assert "no measured candidate" in (tmp_path / "e" / "report.html").read_text()


def test_report_sections_are_typed_and_json_keys_unchanged(tmp_path):
    from edgeopt.report import ReportContext, ReportModel, ReportTarget

    r = _report()
    assert isinstance(r.context, ReportContext) and isinstance(r.target, ReportTarget)
    assert isinstance(r.model, ReportModel) and r.model.plan_notes == ["note one"]
    assert r.context.latency_budget_ms == 0.8 and r.target.kind == "cpu"
    assert r.model["search"]["trace"] and r.model.get("plot") is None and "plot" not in r.model  # dict form
    r.model["info_extra"] = 3  # unknown model facts are kept, as in the dict form
    write_report(r, tmp_path)
    data = __import__("json").loads((tmp_path / "report.json").read_text())
    assert set(data["model"]) == {"search", "plan_notes", "info_extra"}  # unset fields stay out of the JSON
    assert data["target"] == {"name": "local", "kind": "cpu", "runtimes": [], "precisions": [], "detected": False}
    back = load_report(tmp_path / "report.json")
    assert back.model.info_extra == 3 and back.context == r.context


def test_the_html_writer_reads_the_report_and_report_json_names_the_plot(tmp_path):
    import json

    from edgeopt.report.html import plot_file, write_all

    r = _report()
    before = r.model_dump(mode="json")
    write_html_report(r, tmp_path / "h")
    assert r.model_dump(mode="json") == before and r.model.plot is None  # never changed by the writer
    assert "![latency vs accuracy](report.png)" in (tmp_path / "h" / "report.md").read_text()
    # a run's report names its plot before anything is written: report.json has what report.md and .html show
    r.model.plot = plot_file(r)
    before = r.model_dump(mode="json")
    path = write_all(r, tmp_path / "a")
    assert r.model_dump(mode="json") == before
    data = json.loads(path.read_text())
    assert data["model"]["plot"] == "report.png" and (tmp_path / "a" / "report.png").is_file()
    assert "![latency vs accuracy](report.png)" in (tmp_path / "a" / "report.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "a" / "report.html").read_text()
    empty = r.model_copy(update={"baseline": None, "candidates": [], "chosen": None})
    assert plot_file(empty) is None


def test_candidates_carry_structure_and_format_and_old_reports_still_load(tmp_path):
    import json

    r = _report()
    r.candidates[0].structure, r.candidates[0].format = "a", "onnx"
    write_report(r, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["candidates"][0]["structure"] == "a" and data["candidates"][0]["format"] == "onnx"
    for c in [data["baseline"], *data["candidates"]]:  # a report written before the fields existed
        c.pop("structure"), c.pop("format")
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_report(tmp_path / "old.json")
    assert old.candidates[0].structure is None and old.candidates[0].format is None
    assert old.chosen == "a@onnx-fp32"
