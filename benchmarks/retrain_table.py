"""The retraining table (issue 8 closing note), on T1: torchvision resnet18 (num_classes=10) on the digits
data upsampled to 64x64, 3 channels. Runs in minutes on 2 CPU cores; the trained base model is cached.

  python benchmarks/retrain_table.py [--epochs 2] [--out retrain_table.json]

Prints markdown tables: accuracy after 50% structured pruning with none / response / feature / relation
distillation; sparsity vs accuracy for IMP with each rewinding; INT8 PTQ vs QAT (PyTorch fake-quant and the
exported Q/DQ ONNX model on ONNX Runtime), and 4-bit-weight PTQ vs QAT (PyTorch fake-quant); the lecture's
techniques (energy criterion, depth pruning, supermasks); the retraining choices made by measurement (Network
Slimming vs plain BN-scale pruning, the distillation kind screen, IMP's rewinding point by linear mode
connectivity, SNIP / GraSP / SynFlow at one sparsity). `--sections lecture,choices` runs only those.
All accuracies are measured top-1 on the held-out split; the choices are made on a slice of the training data."""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's edgeopt, not an installed one
import edgeopt  # noqa: E402
from edgeopt.inputs.data import Batches, batchify, digits_splits  # noqa: E402
from edgeopt.inputs.demo import cache_dir  # noqa: E402
from edgeopt.report import write_atomic  # noqa: E402
from edgeopt.techniques.retraining import qat as Q  # noqa: E402
from edgeopt.training import fit, top1  # noqa: E402

SIZE = 64


def data(batch: int = 64, limit: int | None = None):
    xt, yt, xv, yv = digits_splits()
    if limit:  # smoke runs: a few batches only
        xt, yt, xv, yv = xt[:limit * batch], yt[:limit * batch], xv[:limit * batch], yv[:limit * batch]
    up = [F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
          for x in (xt, xv)]
    return batchify(up[0], yt, batch), batchify(up[1], yv, 128)


def fresh(seed: int = 0):
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10)


def base_model(train, epochs: int, log):
    path = cache_dir() / f"retrain-table-resnet18-digits{SIZE}-e{epochs}-n{len(train)}.pt"
    model = fresh()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"base model from cache {path}")
        return model.eval()
    t0 = time.perf_counter()
    fit(model, train, epochs=epochs, lr=0.05)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_atomic(path, buf.getvalue())
    log(f"base model trained in {time.perf_counter() - t0:.0f} s, cached at {path}")
    return model.eval()


def ort_top1(model, example, val, tmp: Path) -> float:
    import onnxruntime as ort

    path = edgeopt.export(model, example, format="onnx", out=tmp, verify=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in val.items:
        for i in range(len(x)):
            correct += int(np.argmax(sess.run(None, {name: x[i:i + 1].numpy()})[0]) == int(y[i]))
            total += 1
    return 100.0 * correct / total


def lecture_rows(base, train, val, example, epochs: int, log) -> list[dict]:
    """Energy vs L2 criterion at 50% structured pruning, depth pruning (1 and 2 residual blocks), supermasks on
    a fresh random resnet18. Held-out costs (energy, depth) use the last training batches, never `val`."""
    held = train.items[-4:]
    rows = []
    for crit in ("l2", "energy"):
        small = edgeopt.prune(base, example, ratio=0.5, method=crit, data=[x for x, _ in held]).model
        rows.append({"technique": f"prune 50% {crit}", "top1": top1(small, val), "note": "no fine-tuning"})
        log(f"{rows[-1]}")
    for blocks in (1, 2):
        depth = edgeopt.depth_prune(base, example, held, blocks=blocks)
        small = depth.model
        rows.append({"technique": f"depth: {blocks} block(s)", "top1": top1(small, val),
                     "note": f"removed {', '.join(depth.record['removed'])}, BN re-estimated"})
        edgeopt.distill(small, base, train, epochs=epochs, lr=0.01)
        rows.append({"technique": f"depth: {blocks} block(s) + KD", "top1": top1(small, val),
                     "note": f"{epochs} epochs response distillation"})
        log(f"{rows[-2]} / {rows[-1]}")
    for method in ("edge_popup", "large_final", "magnitude_increase"):
        rec = edgeopt.supermask(fresh(), train, ratio=0.5, epochs=max(2, epochs), method=method, eval_data=val).record
        rows.append({"technique": f"supermask {method} 50%", "top1": rec["top1"],
                     "note": f"random weights alone: {rec['init_top1']:.1f}%" + (
                         f"; trained dense: {rec['trained_dense_top1']:.1f}%" if "trained_dense_top1" in rec else "")})
        log(f"{rows[-1]}")
    return rows


def choice_rows(base, train, val, example, epochs: int, log) -> list[dict]:
    """The retraining choices, each made the way the planner makes it (on training data only), scored on `val`."""
    from edgeopt.techniques import FineTuneConfig, IMPConfig, PruneAtInitConfig, PruneConfig, SlimmingConfig
    from edgeopt.techniques.pruning.prune import apply_prune
    from edgeopt.techniques.pruning.slimming import apply_slimming
    from edgeopt.techniques.retraining.finetune import apply_finetune
    from edgeopt.techniques.sparsity.lottery import apply_imp
    from edgeopt.techniques.sparsity.prune_at_init import apply_prune_at_init

    ft = FineTuneConfig(epochs=epochs)
    rows = []
    plain, _ = apply_prune(base, example, PruneConfig(ratio=0.5, importance="bn_scale", scope="global"))
    tuned, _ = apply_finetune(plain, example, ft, teacher=base, train_data=train)
    rows.append({"technique": "BN-scale 50% (global) + KD", "top1": top1(tuned, val),
                 "note": f"no sparsity training; before KD {top1(plain, val):.1f}%"})
    slim, rec = apply_slimming(base, example, SlimmingConfig(ratio=0.5, epochs=max(2, epochs)), teacher=base,
                               train_data=train)
    tuned, _ = apply_finetune(slim, example, ft, teacher=base, train_data=train)
    rows.append({"technique": "slimming 50% + KD", "top1": top1(tuned, val),
                 "note": f"mean |gamma| {rec['gamma_before']['mean_abs_gamma']} -> "
                         f"{rec['gamma_after']['mean_abs_gamma']}; before KD {top1(slim, val):.1f}%"})
    log(f"{rows[-2]} / {rows[-1]}")
    imp_cfg = IMPConfig(sparsity=0.8, rounds=2, epochs=max(2, epochs), rewind="auto")
    for name, start in (("trained", base), ("fresh init", fresh())):
        sparse, rec = apply_imp(start, example, imp_cfg, train_data=train)
        barriers = ", ".join(f"epoch {k}: {b['barrier_pp']} pp" for k, b in rec["rewind_auto"]["barriers"].items())
        rows.append({"technique": f"IMP 80% rewind=auto ({name}) -> {rec['rewind']}"
                                  + (f" {rec['rewind_epoch']}" if rec["rewind"] == "epoch" else ""),
                     "top1": top1(sparse, val), "note": f"LMC barriers: {barriers}"})
        log(f"{rows[-1]}")
    pruned, _ = apply_prune(base, example, PruneConfig(ratio=0.5))
    tuned, rec = apply_finetune(pruned, example, ft.model_copy(update={"kind": "auto"}), teacher=base,
                                train_data=train)
    scores = ", ".join(f"{k} {v:.1f}" for k, v in rec["kind_screen"]["scores"].items())
    rows.append({"technique": f"L2 50% + KD kind=auto -> {rec['distillation']}", "top1": top1(tuned, val),
                 "note": f"screen (held-out slice of train, %): {scores}; {rec['seconds']} s full fine-tune"})
    log(f"{rows[-1]}")
    for method in ("snip", "grasp", "synflow"):
        cfg = PruneAtInitConfig(method=method, sparsity=0.8, epochs=max(2, 2 * epochs), lr=0.05)
        masked, rec = apply_prune_at_init(fresh(), example, cfg, train_data=train)
        rows.append({"technique": f"{method} 80% from scratch", "top1": top1(masked, val),
                     "note": f"{cfg.epochs} epochs, {rec['train_seconds']} s"})
        log(f"{rows[-1]}")
    return rows


def render_lecture(r: dict) -> str:
    out = ["| technique | top-1 % | note |", "|---|---|---|"]
    rows = r.get("lecture", []) + r.get("choices", [])
    return "\n".join(out + [f"| {x['technique']} | {x['top1']:.1f} | {x['note']} |" for x in rows])


def main() -> None:
    global SIZE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-epochs", type=int, default=10, help="a well-trained teacher")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per run")
    ap.add_argument("--imp-rounds", type=int, default=2)
    ap.add_argument("--imp-sparsity", type=float, default=0.8)
    ap.add_argument("--out", default="retrain_table.json")
    ap.add_argument("--size", type=int, default=SIZE, help="input resolution (T1: 64)")
    ap.add_argument("--limit-batches", type=int, default=None, help="smoke test: use only this many batches")
    ap.add_argument("--only-lecture", action="store_true",
                    help="only the energy-criterion, depth-pruning and supermask rows (= --sections lecture)")
    ap.add_argument("--rows-batches", type=int, default=None,
                    help="lecture/choices rows retrain on only the first N training batches (the base model "
                         "and the held-out split stay whole): a quicker table on a loaded machine")
    ap.add_argument("--sections", default="structured50,imp,quant,lecture,choices",
                    help="comma list of structured50, imp, quant, lecture, choices")
    args = ap.parse_args()
    SIZE = args.size
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    train, val = data(limit=args.limit_batches)
    example = train.items[0][0][:1]
    base = base_model(train, args.base_epochs, log)
    base_acc = top1(base, val)
    log(f"base top-1 {base_acc:.1f}%")
    results: dict = {"model": f"resnet18 (num_classes=10) on digits {SIZE}x{SIZE}", "base_top1": base_acc,
                     "epochs": args.epochs}
    sections = {"lecture"} if args.only_lecture else set(args.sections.split(","))
    if args.rows_batches:
        train = Batches(train.items[:args.rows_batches])
        results["rows_train_samples"] = len(train)
    if "lecture" in sections:
        results["lecture"] = lecture_rows(base, train, val, example, args.epochs, log)
    if "choices" in sections:
        results["choices"] = choice_rows(base, train, val, example, args.epochs, log)
    if not sections & {"structured50", "imp", "quant"}:
        results["seconds"] = round(time.perf_counter() - t_start, 1)
        write_atomic(Path(args.out), json.dumps(results, indent=2))
        print(render_lecture(results))
        return

    pruned = edgeopt.prune(base, example, ratio=0.5).model
    rows = [{"distillation": "(no fine-tuning)", "top1": top1(pruned, val), "seconds": 0.0}]
    for kind in ("none", "response", "feature", "relation"):
        student = copy.deepcopy(pruned)
        if kind == "none":
            res = fit(student, train, epochs=args.epochs, lr=0.01)
            rows.append({"distillation": "none (plain fine-tuning)", "top1": top1(student, val),
                         "seconds": res.seconds})
        else:
            r = edgeopt.distill(student, base, train, kind=kind, epochs=args.epochs, eval_data=val, lr=0.01)
            rows.append({"distillation": kind, "top1": r.after_top1, "seconds": r.seconds,
                         "recovered": r.recovered, "feature_layers": r.feature_layers})
        log(f"50% pruned + {kind}: {rows[-1]['top1']:.1f}%")
    results["structured50"] = rows

    imp_rows = []
    for rewind in ("init", "epoch", "lr"):
        start = fresh() if rewind != "lr" else base
        res = edgeopt.imp(start, train, ratio=args.imp_sparsity, rounds=args.imp_rounds,
                          epochs=max(2, args.epochs), rewind=rewind, rewind_epoch=1, eval_data=val, lr=0.05).record
        for r in res["rounds"]:
            imp_rows.append({"rewind": rewind, **r})
        log(f"IMP rewind={rewind}: {res['rounds']}")
    results["imp"] = imp_rows

    tmp = Path(args.out).with_suffix("")
    calib = [x for x, _ in train.items]
    ptq = Q.ptq(base, calib)
    qat = edgeopt.qat(base, train, epochs=args.epochs)
    results["quant"] = [
        {"method": "fp32", "torch_top1": base_acc},
        {"method": "INT8 PTQ", "torch_top1": top1(ptq, val),
         "onnxruntime_top1": ort_top1(ptq, example, val, tmp.with_name(tmp.name + "-ptq.onnx"))},
        {"method": "INT8 QAT", "torch_top1": top1(qat, val),
         "onnxruntime_top1": ort_top1(qat, example, val, tmp.with_name(tmp.name + "-qat.onnx"))}]
    # where QAT pays off: 4-bit weights lose accuracy after PTQ (PyTorch fake-quant; no 4-bit runtime here)
    ptq4 = Q.ptq(base, calib, weight_bits=4)
    qat4 = Q.qat(base, train, fit, epochs=args.epochs, weight_bits=4, teacher=base)
    results["quant"] += [{"method": "4-bit weights PTQ", "torch_top1": top1(ptq4, val)},
                         {"method": "4-bit weights QAT", "torch_top1": top1(qat4, val)}]
    log(f"quantization: {results['quant']}")
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    write_atomic(Path(args.out), json.dumps(results, indent=2))
    print(render(results))


def render(r: dict) -> str:
    out = [f"## {r['model']} — base top-1 {r['base_top1']:.1f}%, {r['epochs']} fine-tuning epochs", "",
           "| 50% structured pruning + | top-1 % | gap recovered | train s |", "|---|---|---|---|"]
    for row in r["structured50"]:
        rec = row.get("recovered")
        out.append(f"| {row['distillation']} | {row['top1']:.1f} | {'—' if rec is None else f'{rec:.0%}'} | "
                   f"{row['seconds']} |")
    out += ["", "| IMP rewinding | round | sparsity | top-1 % |", "|---|---|---|---|"]
    out += [f"| {row['rewind']} | {row['round']} | {row['sparsity']:.2f} | {row['top1']:.1f} |" for row in r["imp"]]
    out += ["", "| quantization | PyTorch (fake-quant) top-1 % | ONNX Runtime top-1 % |", "|---|---|---|"]
    out += [f"| {row['method']} | {row['torch_top1']:.1f} | "
            f"{'—' if row.get('onnxruntime_top1') is None else format(row['onnxruntime_top1'], '.1f')} |"
            for row in r["quant"]]
    if r.get("lecture") or r.get("choices"):
        out += ["", render_lecture(r)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
