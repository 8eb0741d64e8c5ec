"""The decision policy: every ladder, threshold, margin and tolerance edgeopt decides with, in one place.

Each value says why it is what it is and where it comes from. The planner (decide/plan.py and the
techniques' proposers), the search (engine/search.py), the selection (decide/select.py) and the verification
(formats/verify.py) read these names; none of them keeps a literal of its own.

This module imports nothing, on purpose: it is data, not code. That makes it a leaf every layer may read
(tests/test_layers.py treats it as base layer), so the verification in formats/ (layer 2) reads its
tolerances here without importing the decision layer (layer 3) above it."""

# ---- accuracy budget classes -----------------------------------------------------------------------------
# A budget of <= 0.5 pp is "tight" (a few misclassified samples on a typical held-out set), >= 2 pp "loose".
# The class picks the ladders below. Source: the usual deployment targets of 0.5-1 pp (MLPerf's "99%"
# quality targets are about 1 pp on ImageNet-class tasks).
TIGHT_PP = 0.5
LOOSE_PP = 2.0
# float comparisons of accuracy drops against the budget: a drop equal to the budget is within it
EPS_PP = 1e-9
# a compressed structure removing less than this share of the original's MACs and of its parameters is not
# exported or measured: no runtime would show the difference through the timing noise
MIN_GAIN = 0.05
# the structures that rule judges: only those whose every step's whole effect is fewer MACs and parameters
# (a technique declares it: `shrinks=True` in its declaration, edgeopt/techniques/declare.py)


def budget_kind(max_drop: float) -> str:
    return "tight" if max_drop <= TIGHT_PP else "loose" if max_drop >= LOOSE_PP else "normal"


# ---- structured pruning ------------------------------------------------------------------------------------
# Prune ratio ladders (retraining allowed?, budget class) -> ratios, bisected against measured accuracy.
# Without retraining only mild pruning holds accuracy (Li et al. 2017, "Pruning filters for efficient
# ConvNets": 10-30% of filters removable with little loss); with distillation fine-tuning far more
# (Hinton et al. 2015; Torch-Pruning's benchmarks reach 50-70% with retraining). A tight budget starts lower
# and climbs in smaller steps; a loose one reaches further.
RATIOS = {
    (False, "tight"): (0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    (False, "normal"): (0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    (False, "loose"): (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
    (True, "tight"): (0.2, 0.3, 0.4, 0.5, 0.6),
    (True, "normal"): (0.3, 0.4, 0.5, 0.6, 0.7),
    (True, "loose"): (0.3, 0.5, 0.6, 0.7, 0.8),
}
# Pruning criteria, proposed as far as the data allows and screened by measurement (see "screening" below):
# which criterion keeps a given model's accuracy is not known in advance (Li et al. 2017 find L1/L2 magnitude
# as good as costlier criteria on VGG/ResNet; He et al. 2019 find FPGM better on ResNets; Liu et al. 2017
# prune BN scales; Molchanov et al. 2019 prefer Taylor with labels). Listed cheapest/simplest first: the order
# breaks ties in the screening.
CRITERIA_NO_DATA = ("l2", "l1", "fpgm", "bn_scale")  # weights only (bn_scale needs BatchNorm layers)
CRITERIA_INPUTS = ("energy", "hrank")  # + activations on unlabeled calibration inputs
CRITERIA_LABELS = ("taylor",)  # + gradients of the loss: labelled training data
# Scope and schedule are screened like the criteria, as variants of the default criterion: global ranking
# (Torch-Pruning's global_pruning) lets robust layers give more channels; iterative pruning re-scores the
# criterion between steps (Molchanov et al. 2017), which helps criteria that depend on the remaining channels.
DEFAULT_CRITERION = "l2"
ITERATIVE_STEPS = 3
# BatchNorm re-estimation after pruning: batches of calibration data (256 images at the default batch of 32).
# Re-estimated statistics settle within a few hundred samples (Li et al. 2016, AdaBN; Schneider et al. 2020
# adapt BN on a single batch); more only slows every screened structure down.
BN_RECAL_BATCHES = 8
# Channel rounding: a pruned layer keeps whole blocks of the target's channel multiple (blocked CPU kernels and
# tensor cores pad a partial block: on AVX-512, 56 or 52 channels cost what 64 do, measured with OpenVINO FP32,
# BF16 and INT8; ResNet-18 FP32 cut 25 %, to multiples of 16, ran 1.71x, cut 23 %, off the blocks, 1.31x),
# rounded up so that no layer loses more than asked. A layer narrower than ROUNDING_MIN_STEPS blocks rounds to a
# halved multiple, so that it can still be cut in steps of at most 1/ROUNDING_MIN_STEPS of its width.
ROUNDING_MIN_STEPS = 4

# ---- low-rank factorization ----------------------------------------------------------------------------------
# Energy (sum of squared singular values) kept per layer by Tucker-2/SVD, mildest first. Energy-preserving
# truncation loses little accuracy above ~0.9 without retraining (Kim et al. 2016, "Compression of deep
# CNNs for fast and low power mobile applications"); with fine-tuning it may go lower.
ENERGIES = {False: (0.98, 0.95, 0.9, 0.8), True: (0.95, 0.9, 0.8, 0.6)}
# Factorization methods screened at one energy: Tucker-2 convs (Kim et al. 2016), the same with ranks from
# VBMF (Nakajima et al. 2013: ranks estimated from the noise level, one level, no energy ladder), CP convs
# (Lebedev et al. 2015: fewer MACs, harder to keep accurate), SVD of linear layers only (Denil et al. 2013).
# (method, rank selection), simplest first.
FACTORIZE_METHODS = (("tucker", "energy"), ("tucker", "vbmf"), ("cp", "energy"), ("svd", "energy"))
# Without retraining only Tucker by energy and SVD are tried: VBMF picks ranks meant to be recovered by
# fine-tuning (Kim et al. 2016), and CP layers lose most of their accuracy until fine-tuned (Lebedev et al.
# 2015). Measured on resnet18 at 224 trained on digits, no retraining: CP at 95 % energy -86 pp, VBMF -84 pp,
# Tucker at 95 % 0 pp; together they were 40 s of a 6-minute search.
RETRAIN_ONLY_FACTORIZATIONS = (("tucker", "vbmf"), ("cp", "energy"))

# ---- weight sparsity ------------------------------------------------------------------------------------------
# Sparsity ladders (retraining allowed?) bisected like the prune ratios. One-shot magnitude masks hold to
# ~50-80% on over-parameterised nets; with retraining 90%+ (Han et al. 2015; Frankle & Carbin 2019).
SPARSITIES = {False: (0.3, 0.5, 0.7, 0.8, 0.9), True: (0.5, 0.7, 0.8, 0.9, 0.95)}
SCRATCH_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)  # SNIP (Lee et al. 2019) reports 90-95% at small cost
IMP_ROUNDS = 2  # each round prunes, then retrains with the learning rate rewound (Renda et al. 2020)


# Fine-tuning length. Recovery follows optimizer steps, not passes over the data: ConvNeXt-atto with half its
# channels cut and reconstructed (1.51 pp below the original on 600 held-out digits) fine-tuned on 600 images
# (19 steps an epoch) lost 2.02 pp after 2 epochs (38 steps), 1.01 after 209 steps, 0.00 after 608. So the
# planned epochs (FINETUNE_EPOCHS unless the user gives --epochs) are raised on a small training split to about
# FINETUNE_STEPS steps, at most FINETUNE_MAX_EPOCHS (a handful of samples would otherwise be passed over
# hundreds of times).
FINETUNE_EPOCHS = 2
FINETUNE_STEPS = 300
FINETUNE_MAX_EPOCHS = 16


def planned_epochs(given: int | None, steps_per_epoch: int | None) -> int:
    """The epochs each fine-tuning of a run trains: `given` (--epochs) as given; else FINETUNE_EPOCHS, raised to
    about FINETUNE_STEPS optimizer steps where an epoch is `steps_per_epoch` steps (None: not known)."""
    if given is not None:
        return given
    if not steps_per_epoch:
        return FINETUNE_EPOCHS
    return max(FINETUNE_EPOCHS, min(FINETUNE_MAX_EPOCHS, round(FINETUNE_STEPS / steps_per_epoch)))


def scratch_epochs(epochs: int) -> int:
    """Training from scratch needs more epochs than a fine-tune: twice as many, at least 5."""
    return max(5, 2 * epochs)


# ---- search ------------------------------------------------------------------------------------------------------
# A latency/size budget counts as "met with margin" at 80% of it: run-to-run noise on a shared CPU is a few
# percent, device-to-device variation ~10%, so a candidate at 80% stays inside the budget when measured again.
MARGIN = 0.8
# The bisection keeps the most aggressive level within the accuracy budget AND the next milder one: reduced
# precisions lose some accuracy on top of the structure's, and the milder level leaves room for it.
MARGIN_LEVELS = 1
# A settled level that used more than this share of the accuracy budget on the selection split gets the next
# milder level finished too, even where no precision loses accuracy on top: the choice is judged again on the
# test split, and the two differ by sampling noise (YOLOv8n, 420 and 180 images: a level at 0.69 pp on the one
# lost 1.05 pp on the other, and with no milder level built the original was shipped).
NEAR_BUDGET_SHARE = 0.5
# A fine-tuned family's near miss (its mildest level over the accuracy budget) is trained on in blocks of the
# planned epochs, at most this many more: each block continues only where the last one's gain, repeated for the
# blocks left, would close the gap (engine/train_longer.py). Three: up to four times the planned fine-tuning,
# while a block costs a fine-tuned build (85-320 s on 2 cores for the benchmark's models).
TRAIN_LONGER_BLOCKS = 3
# Screening: families that answer the same question (which pruning criterion, scope and schedule? which
# factorization method?) are first measured at ONE common level, the middle of the ladder (the bisection's
# first probe, so the screening's build is reused by it), ranked by PyTorch accuracy drop on the held-out
# data, and only the best SCREEN_KEEP are bisected. Two, not one: criteria that tie at the middle level can
# part further up the ladder, and bisecting each costs log2(levels) builds, where a full search of every
# family would cost that many per criterion.
SCREEN_KEEP = 2
# Families planned elsewhere that answer a group's question. None today: uniform pruning with least-squares
# reconstruction was screened with the criteria at their common (mild) ratio, where every criterion holds
# the budget and ties broke for the simpler l2/l1; its advantage shows only further up the ladder (measured on
# a 5-conv CNN trained on digits: at 20 % recon and l2 both lose 0.4 pp, at 30 % l2 loses 4.8 pp, while recon
# holds 50 % within 0.3 pp at INT8). So it is bisected on its own.
SCREEN_GROUP_OF: dict[str, str] = {}
# drops closer than this (pp) tie and the simpler family (listed first) wins: below one sample in a few hundred
SCREEN_TIE_PP = 0.01


def screen_index(levels: int) -> int:
    """Index of the common screening level in a ladder of `levels` levels (mildest first): the middle, which
    is where a bisection over the ladder makes its first probe."""
    return (levels - 1) // 2


# Each probe of a bisection is checked at the precision the structure will win with, not only in PyTorch:
# a structure within the budget in fp32 whose INT8 candidate breaks it would otherwise settle the bisection
# and leave the INT8 winner to the milder margin level. So, where the plan measures INT8, a probe within
# the budget in PyTorch has its INT8 candidates finished (exported, calibrated, evaluated on the selection
# split) and its drop is the worse of the two; such a family keeps no margin level (the settled level's
# INT8 is already known to hold the budget).
CHECK_PRECISION = "int8"
# ... but only where INT8 is the precision a structure will win with: the original's INT8 on that format measured
# faster than every float conversion of the original by this factor (the precision screen's figures). Where it
# is not, an INT8 drop vetoed levels whose float candidates held the budget and would have run as fast, and
# each check cost an INT8 export: on the 2-core AMX Xeon the originals' OpenVINO INT8 against their fastest float
# ran ConvNeXt-atto 2.67 vs 2.78 ms (BF16), DeiT-tiny 3.95 vs 3.99, SSDlite 3.00 vs 2.53, and ConvNeXt's
# `depth2` (0.96 pp in PyTorch, 2.41 at INT8) was dropped for it; the Unet's 5.93 vs 10.86 ms keeps its check.
CHECK_INT8_LEAD = 1.10
# NNCF accuracy control (an OpenVINO INT8 retry) is forecast to take this many times its candidate's PTQ
# (export, quantize, verify, evaluate), and not started when the search's share has less left: it ranks every
# quantized layer group with a compile and an evaluation each, and cannot be interrupted. Measured: 25x on a
# DeiT-tiny at 96 px (9 s PTQ, 233 s accuracy control capped at 8 layers) on a loaded 2-core machine.
AC_COST_FACTOR = 25.0
# A (format, precision) of the original measured more than this factor slower than another of the original
# at least as exact (fp32 before bf16/fp16 before int8) cannot win on a compressed structure either: every
# structure shrinks the same graph, so the ratio carries over within the timing noise of a shared CPU (a
# few %). It is not finished on any compressed structure, which saves an export per structure.
CANNOT_WIN_FACTOR = 1.2
# ... in every one of this many interleaved quick measurements of the original's conversions
CANNOT_WIN_ROUNDS = 2

# The quick start (`edgeopt optimize` on the built-in demo, no --time-budget and no --config) runs with this
# time budget: the unbounded search of every family takes about 5 minutes on 2 quiet cores, and far longer on
# a loaded one. The search tries the families that reach furthest first (reconstruction, then the latency
# table). Measured on a 2-core Xeon shared with other jobs (load 8-10): 60 s and 90 s ended with the original
# (the first reconstruction build alone took 40-54 s there), 120 s with a 30 % reconstruction-pruned INT8
# model, 1.65x the original's best INT8, in 95 s of wall time.
DEMO_TIME_BUDGET_S = 120.0

# Quick latency probe used for the early stop (the final numbers come from the full benchmark).
QUICK_BENCH = {"warmup_runs": 3, "warmup_s": 0.0, "min_runs": 10, "max_time_s": 0.3}

# ---- QAT trigger ------------------------------------------------------------------------------------------------
# Quantization-aware training is tried per format only when measurement says PTQ is not enough: the most
# compressed structure whose fp32 candidate holds the budget has an INT8 twin that breaks it (accuracy or
# verification), and no structure at least as small holds the budget with PTQ. Retraining costs minutes;
# PTQ costs seconds, so PTQ always goes first (Krishnamoorthi 2018, "Quantizing deep convolutional networks").
# NNCF accuracy-controlled INT8 (OpenVINO): retried on a broken INT8 candidate when labelled data exists;
# layers are reverted to float until the drop is within the budget. Its own validation set is capped so the
# retry stays within seconds on small data.
ACCURACY_CONTROL_MAX_SAMPLES = 300

# ---- held-out data: selection part and test part ------------------------------------------------------------
# The search picks among dozens of candidates by their accuracy on the held-out data (screening, bisection,
# accuracy control, the choice); the winner's figure on those same images is biased upwards, the more so the
# more candidates were compared (adaptive overfitting of a holdout: Cawley & Talbot 2010, Dwork et al. 2015).
# So the held-out data is split once, by a seeded shuffle (per class when there are class labels): the search
# sees only the selection part; the test part is touched once, at the end, for the baseline, the chosen
# candidate and the best plain conversion, and the accuracy budget of the final choice is judged there.
# 30 % for the test: the search makes many decisions and needs most of the images to tell levels apart; the
# test makes one pass/fail call per candidate (on ~360 demo images: 108 test images, a Wilson 95 % interval of
# about +-3 pp at 97 %).
HOLDOUT_TEST_FRACTION = 0.3
# Below this many held-out images a split leaves too few on either side to mean anything (a single image
# would be 5 pp of a 20-image test part): the data stays whole, and the report says loudly that the accuracy
# it shows is the one the search optimized on.
HOLDOUT_MIN_IMAGES = 20
# A stratified split needs every class on both sides: a class with fewer images keeps the data whole.
HOLDOUT_MIN_PER_CLASS = 2
# Without held-out data the fidelity inputs are random: the test part is a second, independent draw of as many
# inputs as the search's (engine/holdout.py: fidelity_inputs draws 256).
FIDELITY_TEST_INPUTS = 256
# A task metric on which the original itself scores no better than chance means the data does not fit the
# model (other classes, other preprocessing) or its weights are untrained: a budget of points on it protects
# nothing (every candidate drops 0 against 0). Candidates are then judged by fidelity to the original. Chance:
# mAP at most DEGENERATE_MAP %, top-1 at most DEGENERATE_CHANCE_FACTOR x 100/classes (a random 10-class network
# scores 8-13 % on a few hundred images), mIoU at most 100/classes.
DEGENERATE_MAP = 1.0
DEGENERATE_CHANCE_FACTOR = 1.3
# z of the two-sided 95 % interval (Wilson score interval for a proportion; Wilson 1927), for test figures
# that are a share of images (top-1, class agreement)
CI95_Z = 1.959964

# ---- selection -----------------------------------------------------------------------------------------------
# A reduced precision must earn its place: it is rejected when measured no faster (p50) than its fp32 twin of
# the same structure and runtime, whatever its size.
REDUCED_PRECISION_MUST_BE_FASTER = True
# Ranking among the survivors: goal -> sort key order (first smallest wins; images_s ranks the most first).
# Goal throughput compares images/s under the served load, and its latency budget bounds the p99 of one
# request under that load: at a large batch compute-bound layers dominate, and a candidate faster at batch 1
# need not serve more images.
RANK_BY = {"latency": ("p50", "size"), "size": ("size", "p50"), "throughput": ("images_s", "p50")}
# Measured speed within this share of the best is a tie, settled by the more accurate candidate: two
# structures of identical layer shapes (a uniform 70 % cut by two criteria) are one network to the runtime, and
# which of them measured faster flipped between a serial and a Ray run of one search. Sizes are exact: no tie.
MEASURED_TIE = 0.02

# ---- verification -------------------------------------------------------------------------------------------
# Executed precision -> (max relative output error, min top-1 agreement with PyTorch). fp32 differs from
# PyTorch only by kernel summation order (~1e-6 relative; 1e-3 leaves room for fused ops). fp16 has an
# 11-bit mantissa (~5e-4 per op, compounding over depth), bf16 an 8-bit one (~4e-3); INT8 PTQ errors of
# 10-25% of the output range are normal, so it is judged mainly by top-1 agreement.
TOLERANCES = {"fp32": (1e-3, 1.0), "fp16": (3e-2, 0.9), "bf16": (6e-2, 0.8), "int8": (0.25, 0.7)}
VERIFY_INPUTS_FP32 = 4  # exactness: a few inputs show a wrong graph
VERIFY_INPUTS_REDUCED = 24  # agreement is a rate: enough inputs for one flip not to decide
AGREEMENT_MIN_SAMPLES = 20  # below this, top-1 agreement is noise and only the relative error is judged


def tolerance(precision: str) -> tuple[float, float]:
    """The tolerance of an executed precision ("int8_weights" counts as int8, "fp32+bf16" as bf16...)."""
    for key in ("int8", "bf16", "fp16"):
        if key in precision:
            return TOLERANCES[key]
    return TOLERANCES["fp32"]


# Retraining-free pruning with layer-wise reconstruction reaches further than naive pruning (measured on a small
# CNN: 30 % of channels cost 0 pp with reconstruction, 26 pp with BN re-estimation alone), so its ladder goes
# further than the no-retraining RATIOS.
RECON_RATIOS = {"tight": (0.1, 0.2, 0.3, 0.4, 0.5), "normal": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                "loose": (0.2, 0.3, 0.4, 0.5, 0.6)}
# Latency targets (fractions of the layers' latency, predicted by a table measured on the runtime), each
# pruned with channels allocated where they cost the most time, then reconstructed. Reconstruction holds
# accuracy far below the no-retraining RATIOS (a uniform 50 % cut of a 5-conv CNN trained on digits: 0.3 pp
# at INT8, 2.7x the original's INT8), so the ladder reaches 30 % of the time: the bisection, checked at the
# precision the structure will run at (below), finds where accuracy gives out; 6 levels cost 3 probes.
LATENCY_TARGETS = (0.9, 0.75, 0.6, 0.5, 0.4, 0.3)
# Layer-level pruning: residual blocks removed, bisected like the other families. Removing more than two
# blocks of a small model without retraining rarely holds a 1 pp budget.
DEPTH_LEVELS = (1, 2)  # blocks removed when the model's removable blocks were not counted
# with the count known: this ladder up to half of them (a transformer's 12 blocks reach 6; a resnet18's 5 reach 2)
DEPTH_LADDER = (1, 2, 3, 4, 6, 8)


def depth_levels(removable: int | None) -> tuple[int, ...]:
    """Blocks removed at each depth-pruning level, mildest first, for a model with `removable` blocks."""
    if removable is None:
        return DEPTH_LEVELS
    return tuple(b for b in DEPTH_LADDER if b <= max(1, removable // 2)) if removable else ()

# ---- efficient architecture ---------------------------------------------------------------------------------
# A family is worth training from scratch when its measured latency is under ARCH_FASTER of the user's model's
# and it keeps at least ARCH_MIN_CAPACITY of its parameters (a far smaller net would be fast but unable to learn
# the task as well); the ARCH_TOP fastest such families are trained by distillation and measured like any
# candidate.
ARCH_FASTER = 0.9
ARCH_MIN_CAPACITY = 0.1
ARCH_TOP = 2


def faster_families(rows: list[dict], top: int = ARCH_TOP) -> list[str]:
    """Rows of a measured latency table (the user's model first: name, params, p50_ms): the faster families
    at comparable capacity, the fastest first."""
    mine = rows[0]
    fast = [r for r in rows[1:] if r["p50_ms"] < ARCH_FASTER * mine["p50_ms"]
            and r["params"] >= ARCH_MIN_CAPACITY * mine["params"]]
    return [r["name"] for r in sorted(fast, key=lambda r: r["p50_ms"])][:top]
