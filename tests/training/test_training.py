import pytest
import torch

from edgeopt.errors import DataError
from edgeopt.training import fit
from edgeopt.training.losses import hinton_loss


def test_hinton_loss_is_zero_for_identical_logits_without_labels():
    z = torch.randn(8, 10)
    assert hinton_loss(z, z, None).item() == pytest.approx(0.0, abs=1e-6)
    assert hinton_loss(z, -z, None).item() > 0.1


def test_fit_with_teacher_lowers_the_loss(tiny_plain):
    import tinynet

    teacher = tinynet.make_plain()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    res = fit(tiny_plain, data, teacher=teacher, epochs=4, lr=0.05)
    assert res.kind == "response" and len(res.losses) == 4 and res.losses[-1] < res.losses[0]
    assert not tiny_plain.training


def test_fit_needs_data_and_labels(tiny_plain):
    with pytest.raises(DataError, match="empty"):
        fit(tiny_plain, [], epochs=1)
    with pytest.raises(DataError, match="labelled"):
        fit(tiny_plain, [torch.randn(4, 1, 16, 16)], epochs=1)


def test_fine_tuning_stops_at_the_searchs_deadline(tiny_plain):
    """A search's builds run under its deadline: fine-tuning checks it between steps and stops there (the first
    fine-tuning after quick reconstruction builds is one no forecast saw coming), not past the --time-budget."""
    import time

    from edgeopt.errors import TimeBudgetError
    from edgeopt.timeout import run_until

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    before = {k: v.clone() for k, v in tiny_plain.state_dict().items()}
    with run_until(time.perf_counter() - 1), pytest.raises(TimeBudgetError, match="fine-tuning .epoch 1 of 2"):
        fit(tiny_plain, data, epochs=2, lr=0.05)
    with run_until(time.perf_counter() + 3600):
        res = fit(tiny_plain, data, epochs=2, lr=0.05)
    assert len(res.losses) == 2
    assert any(not torch.equal(before[k], v) for k, v in tiny_plain.state_dict().items())


def test_a_fine_tuning_forecast_not_to_end_before_the_deadline_stops_steps_in(tiny_plain):
    """YOLOv8n's prune-recon30-ft ran 104 s of a 300-s budget before the deadline cut it, all of it lost: the
    loop times its first steps and stops there when the rest cannot end before the deadline, saying how long it
    would take, so the search can spend the time on cheaper structures."""
    import time

    from edgeopt.errors import WontFitError
    from edgeopt.timeout import run_until

    class Slow(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            time.sleep(0.05)
            return self.inner(x)

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 1, 16, 16, generator=g), torch.randint(0, 10, (2,), generator=g)) for _ in range(100)]
    t0 = time.perf_counter()
    # 200 steps of at least 0.05 s: 10 s at least, with 5 s left
    with run_until(time.perf_counter() + 5), pytest.raises(WontFitError, match="fine-tuning would take about") as e:
        fit(Slow(tiny_plain), data, epochs=2, lr=0.05)
    assert e.value.need_s >= 10 * 0.9
    assert time.perf_counter() - t0 < 5  # stopped seconds in, not at the deadline
