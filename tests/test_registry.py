import pytest

from edgeopt.errors import UnknownNameError
from edgeopt.registry import Registry


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
