"""Fine-tuning mode: models whose training-mode outputs differ from their deployed ones (detection heads) are
distilled in evaluation mode; per-image detection lists are not distilled, with the reason."""

import pytest
import torch
from torch import nn

from edgeopt.errors import DataError
from edgeopt.training import fit
from edgeopt.training.losses import output_matching_loss
from edgeopt.training.modes import training_mode


class RawInTraining(nn.Module):
    """Like a YOLO head: raw maps while training, decoded (box pixels + class scores) when evaluated."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 6, 1)  # 4 box numbers + 2 class logits per cell

    def forward(self, x):
        raw = self.head(self.body(x))
        if self.training:
            return [raw]
        flat = raw.flatten(2)
        return torch.cat([flat[:, :4] * 32, flat[:, 4:].sigmoid()], 1)  # (N, 6, cells)


class PerImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return [{"boxes": torch.zeros((0, 4)) + y.mean(), "scores": torch.zeros(0)} for _ in y]


def test_modes_are_decided_by_running_the_model():
    x = torch.randn(2, 3, 8, 8)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    plain(x)
    assert training_mode(plain.eval(), x).mode == "train"
    raw = RawInTraining().eval()
    before = raw.body[1].running_mean.clone()
    got = training_mode(raw, x)
    assert got.mode == "eval" and "BatchNorm statistics frozen" in got.reason
    assert torch.equal(raw.body[1].running_mean, before) and not raw.training  # left as it was
    got = training_mode(PerImage().eval(), x)
    assert got.mode == "none" and "non-maximum suppression" in got.reason


def test_a_head_that_changes_in_training_is_distilled_in_evaluation_mode():
    torch.manual_seed(0)
    teacher = RawInTraining().eval()
    student = RawInTraining().eval()  # other weights: something to learn
    images = [torch.rand(8, 3, 8, 8) for _ in range(4)]  # unlabelled, as a data.yaml's training split is read
    stats = student.body[1].running_mean.clone()
    x = images[0]
    with torch.no_grad():
        gap_before = output_matching_loss({"o": student(x)}, {"o": teacher(x)})
    res = fit(student, images, teacher=teacher, epochs=8, lr=0.01)
    with torch.no_grad():
        gap_after = output_matching_loss({"o": student(x)}, {"o": teacher(x)})
    assert res.mode == "eval" and gap_after < 0.5 * gap_before
    assert torch.equal(student.body[1].running_mean, stats)  # BatchNorm statistics frozen


def test_per_image_detections_are_refused_in_one_line():
    with pytest.raises(DataError, match="cannot be fine-tuned by distillation: .*non-maximum suppression"):
        fit(PerImage(), [torch.rand(4, 3, 8, 8)], teacher=PerImage(), epochs=1)


def test_box_pixels_do_not_drown_the_class_scores():
    """The same relative error costs the same whether it is in a box channel (pixels) or a score channel."""
    t = torch.cat([torch.full((2, 4, 10), 80.0), torch.full((2, 2, 10), 0.5)], 1)
    box_off, score_off = t.clone(), t.clone()
    box_off[:, 0] += 8.0  # 10 % of the box scale
    score_off[:, 4] += 0.1  # 0.1 of a 0..1 score
    box_loss = output_matching_loss({"o": box_off}, {"o": t})
    score_loss = output_matching_loss({"o": score_off}, {"o": t})
    assert score_loss > 0.5 * box_loss  # a whole-tensor scale (80²) made the score error ~6000× smaller


def test_ultralytics_yolo_is_distilled_from_unlabelled_images():
    ultralytics = pytest.importorskip("ultralytics")
    from edgeopt.inputs.zoo import deployable

    torch.manual_seed(0)
    teacher = deployable(ultralytics.YOLO("yolov8n.yaml").model).eval()
    student = deployable(ultralytics.YOLO("yolov8n.yaml").model).eval()
    x = torch.rand(2, 3, 64, 64)
    assert training_mode(student, x).mode == "eval"
    res = fit(student, [x], teacher=teacher, epochs=1, lr=0.001)
    assert res.mode == "eval" and len(res.losses) == 1 and res.losses[0] > 0
    with torch.no_grad():
        assert student(x)[0].shape == teacher(x)[0].shape


def test_the_kind_screen_tells_rates_apart_on_a_raw_detector_head():
    """The cosine of a raw head's values barely moves whatever a probe did (YOLOv8n: 99.98 for every rate),
    so the screen could not choose; it scores the scaled error the distillation minimises instead."""
    from edgeopt.training.screen import HeldOut, choose_kind, score

    torch.manual_seed(0)
    teacher = RawInTraining().eval()
    student = RawInTraining().eval()
    with torch.no_grad():
        student.load_state_dict(teacher.state_dict())
        student.head.weight.add_(0.05 * torch.randn_like(student.head.weight))  # close to the teacher
    images = [torch.rand(8, 3, 8, 8) for _ in range(8)]
    held = HeldOut([(x, None) for x in images[-2:]], teacher)
    assert score(teacher, held) == 100.0 > score(student, held)
    calls = []
    teacher.register_forward_pre_hook(lambda module, args: calls.append(args[0]))
    kind, rec = choose_kind(student, teacher, images, rates=(0.001, 1e-6))
    # the teacher's held-out outputs are computed once for the screen's six probes and its start
    assert sum(any(c is x for x in images[-2:]) for c in calls) == 2
    assert rec["metric"] == "output_match_to_teacher"
    assert len(set(rec["rates"].values())) == 3, rec  # the three rates score apart
    assert f"{rec['lr']:g}" == max(rec["rates"], key=rec["rates"].get) and kind == "response"
