"""The planner on a prepared run: what `edgeopt plan` prints and `optimize` searches. What the plan may assume
(calibration data, training data, class labels for gradient criteria) comes from the resolved data and the
model's outputs (engine/prepare.py), the runtimes from what is installed; the decisions are decide/plan.py's."""

from __future__ import annotations

from edgeopt.decide.plan import Plan
from edgeopt.decide.plan import plan as make_plan
from edgeopt.engine.prepare import Prepared
from edgeopt.formats import BACKENDS, installed_runtimes
from edgeopt.inputs.structure import model_outputs


def plan_for(prep: Prepared, sensitivity: dict | None = None, architectures: list[dict] | None = None) -> Plan:
    """The planner on a prepared run (what `edgeopt plan` prints and `optimize` searches)."""
    return make_plan(prep.context, prep.profile, prep.summary, prep.local, installed_runtimes(),
                     has_calib_data=prep.splits.calib is not None, has_train_data=prep.splits.train is not None,
                     precisions_of_format={n: b.precisions for n, b in BACKENDS.items()}, sensitivity=sensitivity,
                     architectures=architectures, has_class_labels=_class_labels(prep))


def _class_labels(prep: Prepared) -> bool:
    """Labelled training data for a classifier (one (N, classes) output): what gradient criteria need."""
    train = prep.splits.train
    if train is None or not train.labelled:
        return False
    outs = list(model_outputs(prep.loaded.model.eval(), prep.ex).values())
    return len(outs) == 1 and outs[0].dim() == 2
