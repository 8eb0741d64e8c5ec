"""Several measurement agents from one run: agents served in this process (tests/agenthelp.py), real jobs."""

import json
from contextlib import ExitStack

import pytest
import torch
from agenthelp import TOKEN, agent_in_process, free_port
from cliruns import assert_one_line_error, run

from edgeopt.remote.client import AgentError, measure_candidates
from edgeopt.report import Candidate


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A folder with two tiny ONNX candidates (one model exported under two names)."""
    import tinynet

    from edgeopt import export

    d = tmp_path_factory.mktemp("fleet-model")
    torch.manual_seed(0)
    export(tinynet.make().eval(), torch.randn(1, 1, 16, 16), format="onnx", out=d / "c0.onnx")
    for i in range(1, 2):
        (d / f"c{i}.onnx").write_bytes((d / "c0.onnx").read_bytes())
    return d


def _cands(n=2):
    return [Candidate(id=f"c{i}", status="ok", artifact=f"c{i}.onnx", runtime="onnxruntime", precision="fp32")
            for i in range(n)]


def _measure(cands, out_dir, urls, log=None):
    return measure_candidates(cands, out_dir, ["onnxruntime"], urls, TOKEN, (1, 1, 16, 16), threads=1,
                              max_time_s=0.3, log=log)


def _dead_url():
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_two_agents_of_one_kind_split_the_candidates_of_a_search(tinynet_spec, tmp_path, fast_bench):
    pytest.importorskip("openvino")  # its candidates and ONNX Runtime's: a few to split
    from edgeopt.engine.pipeline import optimize

    with agent_in_process(tmp_path / "a") as (ua, ca), agent_in_process(tmp_path / "b") as (ub, cb):
        report = optimize(tinynet_spec, input_shape=(1, 1, 16, 16), target="local", out_dir=tmp_path / "out",
                          runtimes=["onnxruntime", "openvino"], techniques=["quantize"], bench_config=fast_bench,
                          device=[ua, ub], device_token=TOKEN)
    measured = [c for c in [report.baseline, *report.candidates] if c.latency_source == "measured"]
    assert len(measured) >= 2 and report.chosen is not None
    assert ca.measured > 0 and cb.measured > 0  # both agents received work
    assert ca.measured + cb.measured == len(measured)  # each candidate measured once
    assert {c.measured_on["agent"] for c in measured} == {ua, ub}
    fleet = json.loads((tmp_path / "out" / "report.json").read_text())["environment"]["device"]["fleet"]
    assert sorted((d["url"], d["measured"]) for d in fleet) == sorted([(ua, ca.measured), (ub, cb.measured)])


def test_a_dead_device_is_reported_and_the_run_finishes_on_the_other(artifacts, tmp_path):
    dead, logged = _dead_url(), []
    with agent_in_process(tmp_path / "a") as (ua, ca):
        cands = _cands(1)
        env = _measure(cands, artifacts, [dead, ua], logged.append)
    assert ca.measured == 1 and all(c.latency_source == "measured" for c in cands)
    failed = [d for d in env["fleet"] if d["status"] == "failed"]
    assert [d["url"] for d in failed] == [dead] and "cannot reach" in failed[0]["error"]
    assert any(dead in line for line in logged)


def test_a_device_lost_mid_run_hands_its_candidates_to_the_others(artifacts, tmp_path):
    from edgeopt.remote import client

    with agent_in_process(tmp_path / "a") as (ua, ca), ExitStack() as b_alive:
        ub, cb = b_alive.enter_context(agent_in_process(tmp_path / "b"))
        real = client.measure_remote

        def stop_b_first(artifacts_, url, *a, **kw):
            if url == ub:
                b_alive.close()  # agent b goes away after the fleet saw it healthy
            return real(artifacts_, url, *a, **kw)

        client.measure_remote = stop_b_first
        try:
            cands = _cands(2)
            env = _measure(cands, artifacts, [ua, ub])
        finally:
            client.measure_remote = real
    assert cb.measured == 0 and ca.measured == 2  # every candidate measured once, all on a
    assert all(c.latency_source == "measured" and c.measured_on["agent"] == ua for c in cands)
    assert {d["url"]: d["status"] for d in env["fleet"]} == {ua: "ok", ub: "failed"}


def test_no_device_left_stops_the_run(artifacts):
    with pytest.raises(AgentError, match="no measurement device answers"):
        _measure(_cands(1), artifacts, [_dead_url(), _dead_url()])


def test_devices_of_two_kinds_give_a_column_each(artifacts, tmp_path):
    from edgeopt.report import Report, ReportContext, ReportTarget
    from edgeopt.report.markdown import to_markdown

    with agent_in_process(tmp_path / "a", target="board-a") as (ua, ca), \
            agent_in_process(tmp_path / "b", target="board-b") as (ub, cb):
        cands = _cands(1)
        env = _measure(cands, artifacts, [ua, ub])
    assert ca.measured == 1 and cb.measured == 1  # every kind measures every candidate
    assert env["kinds"] == ["board-a", "board-b"]
    for c in cands:
        assert set(c.latency_by_device) == {"board-a", "board-b"}
        assert c.latency_by_device["board-b"]["agent"] == ub and c.latency_by_device["board-b"]["p50"] > 0
        assert c.latency_ms.p50 == c.latency_by_device["board-a"]["p50"]  # the first kind is selected on
    report = Report(edgeopt_version="0", context=ReportContext(), target=ReportTarget(name="t"),
                    environment={"device": env}, candidates=cands)
    md = to_markdown(Report.model_validate_json(report.model_dump_json()))  # as read back from report.json
    assert "| p50 ms board-a | p50 ms board-b |" in md
    row = next(line for line in md.splitlines() if line.startswith("| c0 |"))
    assert f"{cands[0].latency_by_device['board-b']['p50']:.3f}" in row


def test_agents_lists_health_including_a_dead_one(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    dead = _dead_url()
    with agent_in_process(tmp_path / "a", target="board-a") as (ua, _):
        p = run("agents", ua, dead, "--token-file", str(tok), "--json", timeout=120)
        table = run("agents", ua, dead, "--token-file", str(tok), timeout=120)
    assert p.returncode == 1, p.stderr  # one agent does not answer
    rows = {r["url"]: r for r in json.loads(p.stdout)}
    assert rows[ua]["reachable"] and rows[ua]["kind"] == "board-a" and rows[ua]["busy"] is False
    assert rows[ua]["version"] and rows[dead]["reachable"] is False and "cannot reach" in rows[dead]["error"]
    assert table.returncode == 1 and ua in table.stdout and "board-a" in table.stdout and "cannot reach" in table.stdout


@pytest.mark.parametrize("args, message", [
    (("agents", "jetson:8765", "--token-file", "t"), "must be a URL like http://HOST:8765"),
    (("optimize", "--device", "http://a:1", "--device", "ftp://b", "--token-file", "t"), "'ftp://b'"),
    (("optimize", "--device", "http://a:1", "--device", "http://a:1/", "--token-file", "t"), "given twice"),
])
def test_bad_device_url_is_a_one_line_error(args, message):
    assert_one_line_error(run(*args, timeout=120), message)
