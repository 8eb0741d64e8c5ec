"""Training precision: bfloat16 autocast where a timed step of the model runs faster with it."""

import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.training import fit
from edgeopt.training import mixed_precision as precision_mod
from edgeopt.training.mixed_precision import bf16_unsupported, choose_precision

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(bf16_unsupported(CPU) is not None,
                                reason="this CPU has no bfloat16 arithmetic (AMX, AVX-512 BF16 or Arm BF16)")


def _data(n=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def test_fit_in_bf16_keeps_fp32_weights_lowers_the_loss_and_refuses_an_unknown_precision(tiny_plain):
    import tinynet

    res = fit(tiny_plain, _data(), teacher=tinynet.make_plain(), epochs=4, lr=0.05, precision="bf16")
    assert res.losses[-1] < res.losses[0]
    assert all(p.dtype == torch.float32 for p in tiny_plain.parameters())  # autocast: master weights stay fp32
    assert tiny_plain(torch.randn(2, 1, 16, 16)).dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown training precision 'fp16': use fp32 or bf16"):
        fit(tiny_plain, _data(), epochs=1, precision="fp16")


def test_a_processor_without_bf16_arithmetic_trains_in_fp32_and_says_why(tiny_plain, monkeypatch):
    import edgeopt.targets

    monkeypatch.setattr(edgeopt.targets, "cpu_flags", lambda: {"avx2", "avx512f"})
    choice = choose_precision(tiny_plain, None, torch.randn(8, 1, 16, 16), CPU)
    assert choice == {"precision": "fp32", "why": "this processor has no bfloat16 arithmetic (AMX, AVX-512 BF16 "
                                                  "or Arm BF16)"}


@needs_bf16
def test_bf16_is_chosen_only_when_the_timed_step_gains_enough(tiny_plain, monkeypatch):
    import tinynet

    teacher, x = tinynet.make_plain(), torch.randn(16, 1, 16, 16)
    before = {k: v.clone() for k, v in tiny_plain.state_dict().items()}
    monkeypatch.setattr(precision_mod, "BF16_GAIN", 1e9)  # no step is a billion times faster
    slow = choose_precision(tiny_plain, teacher, x, CPU)
    assert slow["precision"] == "fp32" and slow["fp32_step_s"] > 0 and slow["bf16_step_s"] > 0
    assert "under the 1000000000.0x that turns it on" in slow["why"]
    monkeypatch.setattr(precision_mod, "BF16_GAIN", 0.0)  # any step gains enough
    fast = choose_precision(tiny_plain, teacher, x, CPU)
    assert fast["precision"] == "bf16" and "in bfloat16 autocast" in fast["why"]
    # the timing ran on a copy: the student is untouched
    assert all(torch.equal(v, tiny_plain.state_dict()[k]) for k, v in before.items())


def test_fine_tuning_measures_its_precision_once_per_run_and_takes_a_given_one(tiny_plain, monkeypatch):
    import tinynet

    from edgeopt.inputs.data.batches import Batches
    from edgeopt.techniques import FineTuneConfig
    from edgeopt.techniques.retraining import finetune

    calls = []

    def timed(student, teacher, x, device):
        calls.append(x.shape)
        return {"precision": "fp32", "fp32_step_s": 0.2, "bf16_step_s": 0.19,
                "why": "a step took 0.190 s in bfloat16 autocast, 0.200 s in fp32 (1.05x)"}

    monkeypatch.setattr("edgeopt.training.mixed_precision.choose_precision", timed)
    teacher, data = tinynet.make_plain(), Batches(_data())
    x = torch.randn(1, 1, 16, 16)
    _, rec = finetune.apply_finetune(tiny_plain, x, FineTuneConfig(epochs=1), teacher=teacher, train_data=data)
    assert rec["precision"] == "fp32" and rec["precision_choice"]["fp32_step_s"] == 0.2
    _, again = finetune.apply_finetune(tiny_plain, x, FineTuneConfig(epochs=1), teacher=teacher, train_data=data)
    assert len(calls) == 1 and again["precision_choice"] == rec["precision_choice"]  # timed once per run
    _, given = finetune.apply_finetune(tiny_plain, x, FineTuneConfig(epochs=1, precision="bf16"), teacher=teacher,
                                       train_data=data)
    assert given["precision"] == "bf16" and given["precision_choice"]["why"] == "given" and len(calls) == 1
    with pytest.raises(ValueError, match="precision"):
        FineTuneConfig(precision="fp16")


def test_the_report_decision_says_which_precision_the_run_trained_at():
    from edgeopt.techniques.retraining.fine_tune_technique import kind_decision

    choice = {"precision": "bf16", "fp32_step_s": 2.2, "bf16_step_s": 0.95,
              "why": "a step took 0.950 s in bfloat16 autocast, 2.200 s in fp32 (2.32x)"}
    d = kind_decision([("prune-recon50-ft", {"precision": "bf16", "precision_choice": choice})])
    assert "trained in bfloat16 autocast: a step took 0.950 s in bfloat16 autocast, 2.200 s in fp32 (2.32x)" \
        in d.reason
    given = kind_decision([("prune-recon50-ft", {"precision": "fp32", "precision_choice": {
        "precision": "fp32", "why": "given"}})])
    assert given is None  # a precision given is the user's, not a decision of the run


@needs_bf16
def test_a_model_that_cannot_step_in_bf16_trains_in_fp32_with_the_reason(monkeypatch):
    class NoBf16(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.fc(x)
            if y.dtype == torch.bfloat16:  # as an operation with no bfloat16 kernel would
                raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'\nmore")
            return y

    choice = choose_precision(NoBf16(), None, torch.randn(8, 4), CPU)
    assert choice == {"precision": "fp32", "why": "a step could not run in bfloat16 autocast: \"addmm_impl_cpu_\" "
                                                  "not implemented for 'BFloat16'"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA (none here)")
def test_on_a_gpu_the_choice_is_timed_there_and_a_bf16_fit_trains(tiny_plain):
    import tinynet

    gpu = torch.device("cuda")
    choice = choose_precision(tiny_plain, tinynet.make_plain(), torch.randn(16, 1, 16, 16), gpu)
    assert choice["precision"] in ("fp32", "bf16")
    assert torch.cuda.is_bf16_supported(including_emulation=False) == ("bf16_step_s" in choice)
    res = fit(tiny_plain, _data(), teacher=tinynet.make_plain(), epochs=3, lr=0.05, precision="bf16")
    assert res.device.startswith("cuda") and res.losses[-1] < res.losses[0]
