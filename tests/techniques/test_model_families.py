"""Structured pruning of the families users deploy (random weights, small inputs): a timm ViT/DeiT loses whole
heads with `num_heads` updated and MLP widths, its Linear layers are reconstructed on unlabelled data; YOLOv8's
C2f blocks are split and its Detect head keeps its outputs; an smp Unet keeps its classes. Each pruned model
exports to ONNX and ONNX Runtime matches PyTorch."""

import copy

import numpy as np
import pytest
import torch

import edgeopt
from edgeopt.inputs.analyze import count_params
from edgeopt.inputs.model_io import Inputs
from edgeopt.techniques.pruning.graph_surgery import output_layers
from edgeopt.techniques.pruning.model_families import SplitHalves, detection_head_outputs, split_chunked_blocks
from edgeopt.techniques.pruning.prune import prune


def _onnx_matches(model, x, path, atol=1e-3):
    import onnxruntime as ort

    out = edgeopt.export(model, x, format="onnx", out=path)
    got = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    assert got.shape == tuple(ref.shape)
    np.testing.assert_allclose(got, ref.numpy(), atol=atol, rtol=1e-3)


def _vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10).eval()


def test_vit_prunes_whole_heads_and_mlp_width_and_matches_onnx(tmp_path):
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    small, rec = prune(model, x, ratio=0.5)
    assert rec["mode"] == "whole"  # the attention no longer breaks whole-model pruning
    for blk in small.blocks:
        attn = blk.attn
        assert attn.num_heads == 2 and attn.head_dim == 16  # half the heads, each head whole
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 96
        assert attn.attn_dim == 32 and attn.proj.in_features == 32
        assert attn.scale == pytest.approx(16 ** -0.5)  # the trained scale of a head stays
        assert blk.mlp.fc1.out_features < 256  # MLP hidden width pruned
    assert any("4 -> 2 heads" in n for n in rec["notes"])
    assert small(x).shape == (2, 10) and count_params(small) < count_params(model) / 2
    _onnx_matches(small, x[:1], tmp_path / "vit.onnx")


def test_a_vits_parameters_outside_its_layers_are_a_note_of_the_record_not_a_warning():
    """Torch-Pruning warns of the cls_token and pos_embed at every trace (once per candidate built, in the CLI's
    output); the record says how they were cut instead."""
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _, rec = prune(_vit(), torch.randn(1, 3, 32, 32), ratio=0.3)
    assert not [w for w in said if "Unwrapped parameters" in str(w.message)]
    note = next(n for n in rec["notes"] if n.startswith("parameters outside its layers"))
    assert "cls_token" in note and "pos_embed" in note


@pytest.mark.parametrize(("ratio", "steps", "heads"), [(0.3, 1, 3), (0.5, 2, 2)])
def test_vit_heads_removed_whole_floor_of_the_ratio(ratio, steps, heads):
    # 0.3 x 4 heads: one head goes (Torch-Pruning alone rounds up, and re-rounds at every step)
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    small, _ = prune(model, x, ratio=ratio, iterative_steps=steps)
    assert [b.attn.num_heads for b in small.blocks] == [heads, heads]
    assert all(b.attn.qkv.out_features == 3 * heads * 16 for b in small.blocks)


def test_linear_reconstruction_lowers_the_output_error_of_a_pruned_vit():
    model = _vit()
    data = [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    test = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(99))
    errors = {}
    for rebuild in (False, True):
        small, rec = prune(model, data[0][:1], ratio=0.5, data=data, reconstruct=rebuild)
        with torch.no_grad():
            ref = model(test)
            errors[rebuild] = float((small(test) - ref).pow(2).sum() / ref.pow(2).sum())
    solved = {layer["layer"] for layer in rec["reconstruction"]["layers"]}
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc2", "head"} <= solved  # token inputs
    assert errors[True] < 0.5 * errors[False]


@pytest.fixture(scope="module")
def yolo():
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is not installed")
    torch.manual_seed(0)
    return ultralytics.YOLO("yolov8n.yaml").model.eval()


def test_split_chunked_blocks_computes_the_same(yolo):
    x = torch.randn(1, 3, 64, 64)
    split = copy.deepcopy(yolo)
    names = split_chunked_blocks(split)
    assert len(names) == 8 and all(isinstance(split.get_submodule(n), SplitHalves) for n in names)
    with torch.no_grad():
        torch.testing.assert_close(split(x)[0], yolo(x)[0], atol=1e-5, rtol=1e-5)


def test_yolov8_keeps_its_detect_outputs_and_matches_onnx(yolo, tmp_path):
    x = torch.randn(1, 3, 64, 64)
    head = yolo.model[-1]
    kept = {id(m): m.out_channels for m in detection_head_outputs(yolo)}
    assert len(kept) == 7  # 3 box + 3 class convs + the DFL decoder
    small, rec = prune(yolo, x, ratio=0.4, timeout_s=600)
    assert rec["mode"] == "whole" and rec["layers_changed"] > 20
    assert sum("chunked first conv split" in n for n in rec["notes"]) == 8  # the C2f blocks, said so
    new_head = small.model[-1]
    for old, new in zip([*head.cv2, *head.cv3], [*new_head.cv2, *new_head.cv3], strict=True):
        assert new[-1].out_channels == old[-1].out_channels  # boxes (4 x reg_max) and classes kept
    assert new_head.cv2[0][0].conv.out_channels < head.cv2[0][0].conv.out_channels  # inside the head: pruned
    assert new_head.dfl.conv.in_channels == head.dfl.conv.in_channels
    assert torch.equal(new_head.stride, head.stride)
    with torch.no_grad():
        assert small(x)[0].shape == yolo(x)[0].shape == (1, 84, 84)
    assert count_params(small) < 0.7 * count_params(yolo)
    _onnx_matches(small, x, tmp_path / "yolo.onnx")


def _smp(cls):
    smp = pytest.importorskip("segmentation_models_pytorch", reason="segmentation_models_pytorch is not installed")
    torch.manual_seed(0)
    return getattr(smp, cls)("resnet18", encoder_weights=None, encoder_depth=3, classes=3,
                             **({"decoder_channels": (32, 16, 8)} if cls == "Unet" else {})).eval()


def test_smp_unet_keeps_its_classes_and_matches_onnx(tmp_path):
    model, x = _smp("Unet"), torch.randn(1, 3, 64, 64)
    small, rec = prune(model, x, ratio=0.4)
    assert rec["mode"] == "whole" and not any("attention" in n for n in rec["notes"])  # identity "attention"
    assert small.segmentation_head[0].out_channels == 3
    assert small.decoder.blocks[0].conv1[0].out_channels < model.decoder.blocks[0].conv1[0].out_channels
    assert small.encoder.layer1[0].conv1.out_channels < 64
    assert small(x).shape == (1, 3, 64, 64) and count_params(small) < count_params(model)
    _onnx_matches(small, x, tmp_path / "unet.onnx")


def test_output_layers_follow_upsampling_to_the_segmentation_conv():
    model, x = _smp("FPN"), torch.randn(1, 3, 64, 64)
    # FPN's head conv runs at 1/4 size and is upsampled: its output is not the model's output tensor
    assert output_layers(model, Inputs.of(x, model)) == [model.segmentation_head[0]]


@pytest.mark.slow
def test_latency_allocation_on_yolov8_plans_the_split_halves_and_keeps_the_detect_outputs(yolo):
    from edgeopt.techniques.pruning.allocate import prune_to_latency

    x = torch.randn(1, 3, 64, 64)
    head = yolo.model[-1]
    small, rec = prune_to_latency(yolo, x, 0.6, runtime="onnxruntime")
    assert rec["layers_changed"] > 0
    outputs = {n for n, m in yolo.named_modules() if m in set(detection_head_outputs(yolo))}
    assert not outputs & set(rec["layer_ratios"])  # the head's contract is never given a width
    new_head = small.model[-1]
    for old, new in zip([*head.cv2, *head.cv3], [*new_head.cv2, *new_head.cv3], strict=True):
        assert new[-1].out_channels == old[-1].out_channels
    with torch.no_grad():
        assert small(x)[0].shape == yolo(x)[0].shape
