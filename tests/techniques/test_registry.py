import pytest

from edgeopt.errors import UnknownNameError
from edgeopt.registry import Registry
from edgeopt.techniques import TECHNIQUES


def test_duplicate_names_are_loud():
    reg = Registry("thing")
    reg.register("a", 1, aliases=("alpha",))
    with pytest.raises(ValueError):
        reg.register("a", 2)
    with pytest.raises(ValueError):
        reg.register("b", 2, aliases=("alpha",))


def test_unknown_name_suggests_the_close_one():
    reg = Registry("target")
    reg.register("jetson-orin-nano", 1, aliases=("jetson",))
    assert reg.get("JETSON") == 1
    with pytest.raises(UnknownNameError, match="did you mean 'jetson'"):
        reg.get("jetsn")


def test_techniques_and_formats_are_registered():
    from edgeopt.formats import BACKENDS
    from edgeopt.techniques import TECHNIQUES

    assert {"prune", "bn_recalibrate", "quantize"} <= set(TECHNIQUES.names())
    assert {"onnx", "openvino"} <= set(BACKENDS.names())
    with pytest.raises(UnknownNameError, match="did you mean 'prune'"):
        TECHNIQUES.get("prnue")


@pytest.mark.parametrize("name", [name for name, _ in TECHNIQUES.items()])
def test_every_technique_declares_its_config_and_handler(name):
    """Each declared handler takes (model, example, config, data=...) (retraining ones also the teacher, the
    training data and the progress display) and imports its implementation on use: what it imports exists and
    takes the same arguments. Its config names the technique (the discriminator of planned steps) and validates
    its defaults."""
    import ast
    import importlib
    import inspect
    import textwrap

    from edgeopt.errors import ConfigError
    from edgeopt.techniques import parse_step

    tech = TECHNIQUES.get(name)
    config = tech.make_config()
    assert config.technique == name and parse_step({"technique": name}) == config
    if tech.stage == "export":
        with pytest.raises(ConfigError, match="realised at export"):
            tech.apply_fn()
        return
    handler = tech.apply_fn()
    params = list(inspect.signature(handler).parameters)
    assert params[:3] == ["model", "example", "config"] and "data" in params, params
    if tech.needs_retraining:
        assert {"teacher", "train_data", "progress"} <= set(params), params
    body = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    lazy = [(node.module, a.name) for node in ast.walk(body) if isinstance(node, ast.ImportFrom) for a in node.names]
    assert lazy, f"{name}: the handler imports no implementation"
    for module, fn in lazy:
        impl = list(inspect.signature(getattr(importlib.import_module(module), fn)).parameters)
        assert impl[:3] == ["model", "example", "config"] and set(params[3:]) <= set(impl), (module, fn, impl)


def test_a_registered_item_can_be_unregistered_with_its_aliases():
    reg = Registry("thing")
    reg.register("a", 1, aliases=("alpha",))
    assert reg.unregister("alpha") == 1
    assert "a" not in reg and "alpha" not in reg
    reg.register("a", 2, aliases=("alpha",))  # registrable again


def test_planned_steps_are_a_discriminated_union_on_the_technique_name():
    from edgeopt.errors import ConfigError
    from edgeopt.techniques import PruneConfig, parse_step

    step = parse_step({"technique": "structured_pruning", "ratio": 0.25})  # aliases resolve
    assert isinstance(step, PruneConfig) and step.ratio == 0.25
    with pytest.raises(ConfigError, match="prune: field .ratio."):
        parse_step({"technique": "prune", "ratio": 2})
    with pytest.raises(ConfigError, match="ratoi"):
        parse_step({"technique": "prune", "ratoi": 0.2})
    with pytest.raises(UnknownNameError, match="did you mean 'prune'"):
        parse_step({"technique": "prnue"})
