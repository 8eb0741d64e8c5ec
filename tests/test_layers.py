"""The import direction of docs/design.md: lower layers never import higher ones; nothing imports the CLI;
techniques and formats never import each other; the decision layer imports no backend."""

import ast
from pathlib import Path

import pytest
from paths import ROOT

PKG = ROOT / "edgeopt"
# by package (the first name under edgeopt/); everything not listed is a mechanism (layer 2): inputs, measure,
# formats, techniques, training, remote
LAYER = {"errors": 0, "registry": 0, "timeout": 0, "yamlfile": 0, "config": 1, "targets": 1, "report": 1,
         "decide": 3, "engine": 4, "cli": 5, "__init__": 5, "__main__": 5, "api": 5}
HEAVY = {"torch", "torch_pruning", "tensorly", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "numpy"}


def _module_key(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def _imports(path: Path, top_only: bool = False):
    tree = ast.parse(path.read_text())
    for node in (tree.body if top_only else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, node
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node


FILES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_import_direction(path):
    me = _module_key(path)
    my_layer = LAYER.get(me, 2)
    for mod, _ in _imports(path):
        if not mod.startswith("edgeopt"):
            continue
        parts = mod.split(".")
        if len(parts) == 1:
            assert me in ("__init__", "cli", "__main__") or my_layer >= 4 or mod == "edgeopt", (
                f"{path}: imports the top-level API")
            continue
        target = parts[1]
        if mod in ("edgeopt.decide.policy", "edgeopt.decide.serving"):
            continue  # the policy and the serving rules import nothing: every layer may read them
        assert target != "cli" or me == "cli" or me == "__main__", f"{path} imports the CLI"
        assert LAYER.get(target, 2) <= my_layer, f"{path} (layer {my_layer}) imports {mod}"
        if me == "techniques":
            assert target != "formats", f"{path}: techniques must not import formats"
        if me == "formats":
            assert target != "techniques", f"{path}: formats must not import techniques"


@pytest.mark.parametrize("path", sorted((PKG / "decide").glob("*.py")), ids=lambda p: p.name)
def test_decision_layer_imports_no_backend(path):
    for mod, _ in _imports(path):
        assert mod.split(".")[0] not in HEAVY, f"{path.name} imports {mod}"


DECLARATIONS = sorted(["techniques/__init__", "techniques/declare", "techniques/planning"] +
                      [str(p.relative_to(PKG).with_suffix("")) for p in (PKG / "techniques").rglob("*_technique.py")])


@pytest.mark.parametrize("dep", ["config", "report/__init__", "targets/__init__", *DECLARATIONS])
def test_what_the_decision_layer_uses_imports_no_backend_at_module_level(dep):
    # module-level imports only: a lazy import inside a function (a handler's implementation) runs only when
    # that function does
    for mod, _node in _imports(PKG / f"{dep}.py", top_only=True):
        assert mod.split(".")[0] not in HEAVY, f"{dep} (used by the planner) imports {mod}"


def test_planning_imports_no_torch():
    """The planner with every technique declared (configs, handlers, proposers) runs without torch."""
    import subprocess
    import sys

    code = "import sys, edgeopt.decide.plan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PKG.parent).returncode == 0, "planning imported torch"


def test_policy_imports_nothing():
    """decide/policy.py is read by every layer (formats' verification too), so it must stay a leaf."""
    mods = [m for m, _ in _imports(PKG / "decide" / "policy.py") if m != "__future__"]
    assert mods == []


def test_serving_rules_import_nothing_of_edgeopt():
    """decide/serving.py is read by the technique declarations' proposers, like the policy: a leaf."""
    mods = [m for m, _ in _imports(PKG / "decide" / "serving.py") if m not in ("__future__", "dataclasses")]
    assert mods == []
