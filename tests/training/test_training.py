import pytest
import torch

from edgeopt.errors import ConfigError, DataError
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


def test_fit_trains_with_adamw_at_its_own_weight_decay_and_names_an_unknown_optimizer(tiny_plain):
    import tinynet

    from edgeopt.training.loop import make_optimizer

    opt = make_optimizer("adamw", tiny_plain.parameters(), 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    assert make_optimizer("sgd", tiny_plain.parameters(), 0.01).defaults["weight_decay"] == 5e-4
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    res = fit(tiny_plain, data, teacher=tinynet.make_plain(), epochs=4, lr=1e-3, optimizer="adamw")
    assert res.losses[-1] < res.losses[0]
    with pytest.raises(ConfigError, match="unknown optimizer 'adam': use sgd or adamw"):
        fit(tiny_plain, data, epochs=1, optimizer="adam")


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


class _Slow(torch.nn.Module):
    """A model whose every step takes at least `seconds` (a forecast has something to see on a fast machine)."""

    def __init__(self, inner, seconds=0.05):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x):
        import time

        time.sleep(self.seconds)
        return self.inner(x)


def _steps_data(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 1, 16, 16, generator=g), torch.randint(0, 10, (2,), generator=g)) for _ in range(n)]


def _warmed(model):
    """`model` after a few steps of training in this process: a process's first backward pass sets up for about
    a second, a time the tests below would otherwise read as their budget's."""
    import copy

    fit(copy.deepcopy(model), _steps_data(3), epochs=1, lr=0.05)
    return _Slow(model)


def test_a_fine_tuning_that_cannot_end_in_time_is_shortened_to_the_steps_that_can(tiny_plain):
    """YOLOv8n's first fine-tuning was forecast at 321 s with 287 s left and stopped: nothing was fine-tuned in
    a 600-s run. Asked to (`shorten_to_fit`), the loop runs the steps that end in time, its cosine schedule ending
    there, and says so; the whole is never run past the time it was given."""
    import time

    from edgeopt.timeout import run_until

    slow = _warmed(tiny_plain)
    data = _steps_data(50)  # 100 steps of at least 0.05 s: 5 s at least; 4 s given
    t0 = time.perf_counter()
    with run_until(t0 + 4.0):
        res = fit(slow, data, epochs=2, lr=0.05, shorten_to_fit=True)
    took = time.perf_counter() - t0
    assert res.planned_steps == 100 and 40 <= res.steps < 100, res
    assert res.shortened and f"{res.steps} of its 100 planned steps" in res.shortened
    assert took < 4.0  # ended in time, not cut by the deadline
    assert len(res.losses) == 2  # the second epoch ran part-way and says so in its loss


def test_the_cosine_schedule_of_a_shortened_fine_tuning_ends_at_its_shortened_length(tiny_plain, monkeypatch):
    """A shortened run decays its rate to zero at its last step, as a whole run does at its own: the rates the
    optimizer stepped with, read at every step, fall to about nothing on the last one."""
    import time

    from edgeopt.timeout import run_until

    rates = []
    original_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return original_step(self, *a, **k)

    slow = _warmed(tiny_plain)
    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    with run_until(time.perf_counter() + 4.0):
        res = fit(slow, _steps_data(50), epochs=2, lr=0.05, shorten_to_fit=True)
    assert res.shortened and len(rates) == res.steps
    assert rates[-1] < 0.05 * 0.01, rates[-5:]  # a whole-length schedule would still be near 0.05 * 0.1 here


def test_a_fine_tuning_aims_at_the_time_left_for_what_follows_it(tiny_plain):
    """Within a search, a fine-tuning must leave time to screen and export what it trained: it ends by `fit_by`
    (the deadline less that), not at the deadline."""
    import time

    from edgeopt.timeout import run_until

    slow = _warmed(tiny_plain)
    t0 = time.perf_counter()
    with run_until(t0 + 60.0, fit_by=t0 + 4.0):
        res = fit(slow, _steps_data(50), epochs=2, lr=0.05, shorten_to_fit=True)
    assert res.shortened and res.steps < 100
    assert time.perf_counter() - t0 < 4.0


def test_a_fine_tuning_of_which_not_half_fits_still_stops_steps_in(tiny_plain):
    """Shortening has a floor (MIN_FIT_SHARE): with too little time for half the steps the run stops seconds in,
    as without shortening, and the time goes to cheaper work."""
    import time

    from edgeopt.errors import WontFitError
    from edgeopt.timeout import run_until

    slow = _warmed(tiny_plain)
    t0 = time.perf_counter()
    with run_until(t0 + 2.0), pytest.raises(WontFitError, match="fine-tuning would take about"):
        fit(slow, _steps_data(50), epochs=2, lr=0.05, shorten_to_fit=True)
    assert time.perf_counter() - t0 < 2.0
