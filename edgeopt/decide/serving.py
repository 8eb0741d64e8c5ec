"""What the served load changes in what pays: the planner's rules for a goal's batch and requests in flight.

At batch 1, one request at a time (goal latency), a small model on a CPU spends much of its time on what every
call and every layer costs whatever its width: dispatch, thread wake-ups, memory-bound small ops. Removing
whole residual blocks (depth pruning) saves that, and channel pruning or INT8 save less than their MACs
promise. A server (goal throughput) runs a batch per request and several requests at once: those fixed costs
are shared by the batch's images and overlapped across the streams, so the compute-bound layers, whose
multiply-adds every image pays, dominate. Channel pruning and INT8 then pay about as the MACs they remove or
speed up, and depth pruning has no overhead left to save beyond its blocks' MACs. So per-layer times are
measured at the served batch (the latency table's batch column), and the plan says which regime it planned
for and why.

A leaf like decide/policy.py: it imports nothing of edgeopt, so the technique declarations' proposers read it
as they read the policy. `context` is a DeployContext (goal, serve_batch, streams), read by attribute."""

from __future__ import annotations

from dataclasses import dataclass

# From this batch per request a CPU's convolutions run compute-bound: the fixed cost of a call and of each
# layer (dispatch, synchronisation) is under a few percent of the layer's work shared by the batch.
COMPUTE_BOUND_BATCH = 8


@dataclass(frozen=True)
class Serving:
    """The load the figures and the plan are for: a batch per request and the requests in flight."""

    goal: str = "latency"
    batch: int = 1
    streams: int | None = None  # None: one at a time (goal latency), or the runtime's choice (goal throughput)

    @classmethod
    def of(cls, context) -> Serving:
        if getattr(context, "goal", "latency") != "throughput":
            return cls(goal=getattr(context, "goal", "latency"))
        return cls("throughput", int(getattr(context, "serve_batch", None) or 1), getattr(context, "streams", None))

    @property
    def served(self) -> bool:
        return self.goal == "throughput"

    @property
    def compute_bound(self) -> bool:
        """Whether the served batch makes the layers' multiply-adds dominate over per-call costs."""
        return self.served and self.batch >= COMPUTE_BOUND_BATCH

    @property
    def table_batch(self) -> int:
        """The batch per-layer times are measured at: the served batch under goal throughput, else 1."""
        return self.batch if self.served else 1

    def load(self) -> str:
        """The load in words, with the goal it is for: what a figure measured under it should say."""
        if not self.served:
            return f"batch 1, one request at a time (goal {self.goal})"
        streams = f"{self.streams} requests" if self.streams else "the runtime's choice of requests"
        return f"batch {self.batch}, {streams} in flight (goal throughput)"


def depth_pruning(serving: Serving, target_kind: str, model_batch: int = 1) -> tuple[bool, str]:
    """Whether removing whole residual blocks is worth proposing, and why (not)."""
    if target_kind != "cpu":
        return False, (f"proposed for CPUs, where per-layer dispatch weighs on small models (here: {target_kind}, "
                       f"{serving.load()})")
    if serving.goal == "size":
        return False, "goal size: depth pruning is proposed to save per-layer dispatch time, not bytes"
    batch = serving.batch if serving.served else model_batch
    if batch != 1:
        return False, (f"at batch {batch} ({serving.load()}) the per-call and per-layer overhead depth pruning saves "
                       f"is shared by the {batch} images of a request and the compute-bound layers dominate: a "
                       "removed block saves only its MACs, which channel pruning and INT8 cut at less accuracy")
    if serving.served:
        return True, ("batch 1 with several requests in flight: each image still pays every layer's dispatch, so "
                      "removing whole residual blocks saves it")
    return True, "batch 1, one request: per-layer dispatch dominates small models, removing whole blocks saves it"


def channel_pruning_pays(serving: Serving, target_kind: str) -> str:
    """Why thinner layers pay under this load (a clause for the pruning decision)."""
    if serving.compute_bound:
        return (f"at batch {serving.batch} the compute-bound layers dominate, so images/s grows about as the MACs "
                f"fall ({serving.load()})")
    if serving.goal == "size":
        return "smaller weights and fewer MACs"
    return f"dense {target_kind.upper()} kernels run faster"


def int8_pays(serving: Serving) -> str:
    """Why INT8 pays (or may not) under this load (a clause for the plan's serving decision)."""
    if serving.compute_bound:
        return (f"INT8 pays about its full compute gain: the quantize/dequantize and per-call costs that eat it "
                f"at batch 1 are shared by {serving.batch} images")
    return ("INT8's gain at batch 1 is cut by quantize/dequantize and per-call costs: it must measure faster "
            "than its fp32 twin")


def latency_rules_out_precisions(serving: Serving) -> tuple[bool, str]:
    """Whether the original's batch-1 latency may rule a (format, precision) out of the compressed structures
    (decide/select.py `cannot_win`), and why (not). Under goal throughput it may not: which runtime serves the
    most images/s at the served batch and streams is not which answers one image soonest (measured on
    resnet18 at 224, 2 cores: OpenVINO INT8 1.3x slower than ONNX Runtime INT8 at batch 1, 1.8x more images/s
    at batch 32), so a pair slow at batch 1 may be the one that wins."""
    if not serving.served:
        return True, f"ranked by latency at {serving.load()}: the original's ratios carry over"
    return False, (f"the original's batch-1 latency does not rank runtimes at {serving.load()}: every "
                   "(format, precision) stays a candidate, ranked by images/s measured under the load")


def decision(context, target_kind: str) -> str | None:
    """The reason of the plan's `serving` decision under goal throughput: the load planned for and what it
    changes (None under the other goals: batch 1, one request, as every figure says)."""
    s = Serving.of(context)
    if not s.served:
        return None
    depth_ok, depth_why = depth_pruning(s, target_kind)
    regime = "compute-bound" if s.compute_bound else "overhead-bound (small batch)"
    return (f"planned for {s.load()}, {regime}: candidates are ranked by images/s measured under this load; "
            f"per-layer latency tables are measured at batch {s.table_batch}; channel pruning: "
            f"{channel_pruning_pays(s, target_kind)}; {int8_pays(s)}; depth pruning "
            f"{'proposed' if depth_ok else 'not proposed'}: {depth_why}")
