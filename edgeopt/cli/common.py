"""Shared CLI pieces: rich progress sink, candidate table, option parsing helpers, the model and data a
single-step command loads."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

INPUT_SHAPE_HELP = ("example input shape, batch first, e.g. 1,3,224,224; for several inputs repeat it with names: "
                    "--input-shape image:1,3,224,224 --input-shape mask:1,1,224,224")

console = Console(stderr=True)
# A pipe or CI log has no width: give tables room instead of folding every cell to 80 columns.
out = Console() if Console().is_terminal else Console(width=200)


class RichProgress:
    """Adapter from the pipeline's progress events to a rich progress display (on stderr)."""

    def __init__(self):
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                  # in a log (no terminal) the bars would only add noise around errors
                                  transient=not console.is_terminal)
        self._task = None
        self._started = False

    def __enter__(self):
        return self  # started by the first stage: bad input refused before any work prints its one line alone

    def __exit__(self, *exc):
        if self._task is not None:
            self._finish()
        if self._started:
            self._progress.stop()

    def _finish(self):
        t = self._progress.tasks[-1]
        self._progress.update(self._task, completed=t.total or 1, total=t.total or 1)

    def stage(self, name: str, total: int | None = None) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        if self._task is not None:
            self._finish()
        self._task = self._progress.add_task(name, total=total or 1)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def log(self, message: str) -> None:
        if self._task is not None:
            desc = self._progress.tasks[-1].description.split(" — ")[0]
            self._progress.update(self._task, description=f"{desc} — {message}")


def candidates_table(report) -> Table:
    from edgeopt.report.markdown import TABLE_FIGURES_NOTE, candidate_row, device_kinds, table_header

    table = Table(title=f"edgeopt — target {report.target.get('name')}, goal {report.context['goal']}")
    kinds = device_kinds(report)
    for h in table_header(kinds):
        table.add_column(h, overflow="fold", max_width=48 if h == "reason" else None)
    hidden = 0
    for c in [report.baseline, *report.candidates]:
        if c is None:
            continue
        if c.status == "rejected" and c.reason.startswith("not tried"):
            hidden += 1  # listed in report.md/json; the table shows what was built and measured
            continue
        style = "bold green" if c.id == report.chosen else ("dim" if c.status != "ok" else None)
        table.add_row(*candidate_row(c, report, kinds), style=style)
    notes = [f"{hidden} more candidates not tried (search pruned them; see report.md)"] if hidden else []
    if report.model.latency_check is not None:
        notes.append(TABLE_FIGURES_NOTE)
    if notes:
        table.caption = "\n".join(notes)
    return table


def parse_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def refuse_overwriting_inputs(model: str | None, weights=None, data: str | None = None, format: str | None = None,
                              out_file=None, record_file=None) -> None:
    """Before anything is loaded: no file a command writes (every file of its artifact, its record) is one it
    reads (the model's file, the weights, the data)."""
    from pathlib import Path

    from edgeopt.report.outputs import refuse_overwrite

    outputs = [record_file]
    if out_file is not None and format is not None:
        from edgeopt.formats import backend_for

        backend = backend_for(format)
        outputs += backend.artifact_files(Path(out_file).with_suffix(backend.suffix))
    refuse_overwrite(outputs, {"--model": model, "--weights": weights, "--data": data})


def load_model_and_example(model: str, weights=None, input_shape: list[str] | str | None = None,
                           trust_pickle: bool = False):
    """(LoadedModel, random example inputs in PyTorch's form) for --model/--weights/--input-shape."""
    from edgeopt.inputs.model_io import Inputs
    from edgeopt.inputs.models import load_model, parse_input_shape

    loaded = load_model(model, weights=weights, input_shape=parse_input_shape(input_shape),
                        trust_pickle=trust_pickle)
    return loaded, Inputs.random(loaded.input_shapes or loaded.input_shape, keyword=True).example()


def calibration_data(data: str | None, calib: str | None, model: str, sample_shape):
    """--calib random | --data in any form the one resolver reads (digits, inputs.npy, an image folder,
    module:function): its calibration split; the demo defaults to its own digits data."""
    from edgeopt.errors import ConfigError
    from edgeopt.inputs.data import resolve_data

    if calib is not None and calib != "random":
        raise ConfigError(f"--calib takes only 'random' (use --data for real calibration data), got {calib!r}")
    splits = resolve_data(model, data, None, None, None, sample_shape, None)
    if splits.calib is None:
        return "random" if calib == "random" else None
    return splits.calib
