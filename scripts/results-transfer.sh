#!/usr/bin/env bash
# Reproduces "## Transfer: model patches and TAPS (issues 3, 4)" in RESULTS.md: seed 0, SGD lr 0.01 momentum 0.9
# (the defaults) for every method. One `taskshare run` per method (each under ~15 min on 2 busy CPU cores);
# with --resume, finished runs are kept, so the script can be rerun after a stop. Then it prints the markdown
# tables and writes docs/img/taps_layers_*.png (methods/taps/report.py plot_layers) and docs/img/taps_lambda_sweep.png.
# Nothing is selected on test: TAPS's lambda for the main tables was fixed beforehand (the sweep is a curve).
# Usage: scripts/results-transfer.sh [images|text|textlong|lifelong|sweep|dwlr|tables ...]   (default: all, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
TS=".venv/bin/taskshare run --seed 0 --quiet --resume"
OUT=${OUT:-runs/results/transfer}
# transfer-images: ImageNet MobileNetV2 at 32 px (patches image_size default; TAPS builds it the same way),
# 1000 training samples per task, 3 epochs, batch 64; val/test capped at 1000 per task (stratified, fixed)
IMG="--limit 1000 --epochs 3 --set batch_size=64 --set benchmark.max_eval=1000 --set model=mobilenetv2"
# transfer-text: MiniLM, 800 samples per task (200 test, 60 val), 256 of the 540 training samples, 64 tokens,
# 2 epochs, batch 16
TXT="--limit 256 --epochs 2 --set batch_size=16"
# TAPS: pretrained base frozen (backbone=model), official penalty lambda/52 * sum|s|, penalty on from epoch 1
# (warmup_epochs=1: runs have 2-3 epochs, the default 3 would never switch it on), BN statistics re-estimated
# at each task's end as the patches do (bn_samples)
TAPS="--set taps.backbone=model --set taps.penalty=official --set taps.warmup_epochs=1"
LIFE="--limit 2000 --epochs 3 --set batch_size=64 --set model=cnn"

images() {
  for m in head scale-bias+head depthwise+head scale-bias+depthwise+head full; do
    $TS transfer-images --method $m $IMG --out $OUT/images
  done
  $TS transfer-images --method taps $IMG $TAPS --set taps.lambda=2 --set taps.bn_samples=1000 --out $OUT/images
}
text() {
  for m in head scale-bias+head full; do
    $TS transfer-text --method $m $TXT --out $OUT/text
  done
  $TS transfer-text --method taps $TXT $TAPS --set taps.lambda=4 --out $OUT/text
}
textlong() {  # the same with all 540 training samples per task and 3 epochs; TAPS lambda 2 as on images
  for m in head scale-bias+head full; do
    $TS transfer-text --method $m --epochs 3 --set batch_size=16 --out $OUT/text-long
  done
  $TS transfer-text --method taps --epochs 3 --set batch_size=16 $TAPS --set taps.lambda=2 --out $OUT/text-long
}
lifelong() {  # domain-stream, SmallCNN: patches on the frozen random CNN; TAPS trains its base on task 1
  for m in head scale-bias+head full; do
    $TS domain-stream --method $m $LIFE --out $OUT/lifelong
  done
  $TS domain-stream --method taps $LIFE --set taps.backbone=first-task --set taps.penalty=official \
    --set taps.warmup_epochs=1 --set taps.lambda=2 --set taps.bn_samples=2000 --out $OUT/lifelong
}
dwlr() {  # depthwise+head diverged at the default lr 0.01 (chance accuracy): lower lrs for it, chosen on val
  for lr in 0.003 0.001; do
    $TS transfer-images --method depthwise+head $IMG --set lr=$lr --out $OUT/images-lr-$lr
  done
}
sweep() {  # lambda 2 is in $OUT/images/taps
  for lam in 0.5 8; do
    $TS transfer-images --method taps $IMG $TAPS --set taps.lambda=$lam --set taps.bn_samples=1000 \
      --out $OUT/images-taps-lambda-$lam
  done
}
tables() {
  mkdir -p docs/img
  OUT=$OUT .venv/bin/python - <<'EOF'
import json, os
from pathlib import Path

import torch
from taskshare.core.artifacts import read_sidecar
from taskshare.core.serialize import load_tensors
from taskshare.config import RunConfig, check_options
from taskshare.methods.taps import Taps, import_task
from taskshare.methods.taps.report import format_summary, plot_layers, summary

out = Path(os.environ["OUT"])
load = lambda d: json.load(open(d / "results.json"))


def active(run, task):
    info = read_sidecar(run / "artifacts" / task)["meta"].get("taps")
    return f"{len(info['active_layers'])}/{len(info['layers'])}" if info else ""


def table(title, runs, majority=None):
    runs = [(m, d) for m, d in runs if (d / "results.json").exists()]
    if not runs:
        return
    rs = {m: load(d) for m, d in runs}
    tasks = next(iter(rs.values()))["tasks"]
    full = rs.get("full")
    print(f"\n{title}\n")
    print("| method | " + " | ".join(tasks) + " | avg | val avg | params added/task | % of full | artifact KB/task "
          "| TAPS active layers | time (s) |")
    print("|---" * (len(tasks) + 8) + "|")
    if majority:
        print("| majority class of the training split | " + " | ".join(f"{100 * a:.1f}" for a in majority)
              + f" | {100 * sum(majority) / len(majority):.1f} | | 0 | | | | |")
    for m, d in runs:
        r = rs[m]
        added = sum(r["params"]["added_per_task"]) / len(tasks)
        pct = f"{100 * added / (sum(full['params']['added_per_task']) / len(tasks)):.2f}%" if full else ""
        kb = sum(r["artifact_bytes"].values()) / len(tasks) / 1024
        acts = " ".join(active(d, t) for t in tasks) if m.startswith("taps") else ""
        print(f"| {m} | " + " | ".join(f"{100 * a:.1f}" for a in r["acc_matrix"][-1])
              + f" | **{100 * r['avg_acc']:.1f}** | {100 * r['val_avg']:.1f} | {added:,.0f} | {pct} | {kb:,.0f} "
              f"| {acts} | {r['time_s']:.0f} |")


def majority(bench, limit):
    from taskshare.data import build_benchmark
    accs = []
    for t in build_benchmark(bench, seed=0):
        y = t.limit(limit, seed=0).train.y
        accs.append(float((t.test.y == torch.bincount(y).argmax()).float().mean()))
    return accs


def taps_png(run, shape, png, title):
    if not (run / "results.json").exists():
        return
    r = load(run)
    cfg = RunConfig(**r["config"])
    learner = Taps(cfg, check_options(Taps.Options, cfg.methods.get("taps", {}), "taps"), shape)
    base, _ = load_tensors(run / "artifacts" / "base.safetensors")
    with torch.no_grad():
        for name, t in learner.tt.shared_named_tensors().items():
            t.copy_(base[name])
    for task in r["tasks"]:
        import_task(learner, run / "artifacts" / task)
    plot_layers(learner, png, title=title)
    print(f"\n{png} ({run}):\n\n```\n{format_summary(summary(learner))}\n```")


patch_methods = ["head", "scale-bias+head", "depthwise+head", "scale-bias+depthwise+head", "full", "taps"]
rows = lambda bench: [(m, out / bench / m) for m in patch_methods]  # noqa: E731
table("transfer-images (MobileNetV2 ImageNet, 32 px; lr 0.01 unless stated)", rows("images")
      + [(f"depthwise+head, lr {lr}", out / f"images-lr-{lr}" / "depthwise+head") for lr in ("0.003", "0.001")]
      + [(f"taps, lambda {lam}", out / f"images-taps-lambda-{lam}" / "taps") for lam in ("0.5", "8")])
table("transfer-text (MiniLM, 64 tokens), 256 training samples per task, 2 epochs", rows("text"),
      majority("transfer-text", 256))
table("transfer-text (MiniLM, 64 tokens), all 540 training samples per task, 3 epochs", rows("text-long"),
      majority("transfer-text", 540))
table("domain-stream (SmallCNN; patches on the frozen random CNN, TAPS's base trained on mnist)", rows("lifelong"))
taps_png(out / "images" / "taps", (1, 28, 28), "docs/img/taps_layers_transfer-images.png",
         "TAPS, ImageNet MobileNetV2 (32 px), lambda 2: task-specific conv layers (dark)")
taps_png(out / "text-long" / "taps", (2, 64), "docs/img/taps_layers_transfer-text.png",
         "TAPS, MiniLM (540 samples, 3 epochs), lambda 2: task-specific linear layers (dark)")
taps_png(out / "lifelong" / "taps", (1, 28, 28), "docs/img/taps_layers_domain-stream.png",
         "TAPS, SmallCNN (base trained on mnist), lambda 2: task-specific layers (dark)")

# lambda sweep: average accuracy vs parameters added per task (transfer-images)
sweep = {lam: out / ("images/taps" if lam == 2 else f"images-taps-lambda-{lam:g}/taps") for lam in (0.5, 2, 8)}
pts = {lam: load(d) for lam, d in sweep.items() if (d / "results.json").exists()}
if pts:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    print("\n| TAPS lambda | avg acc | val avg | params added/task | active layers per task |\n|---|---|---|---|---|")
    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for lam, r in pts.items():
        added = sum(r["params"]["added_per_task"]) / len(r["tasks"])
        acts = " ".join(active(sweep[lam], t) for t in r["tasks"])
        print(f"| {lam:g} | {100 * r['avg_acc']:.1f} | {100 * r['val_avg']:.1f} | {added:,.0f} | {acts} |")
        ax.plot(added, 100 * r["avg_acc"], "o", color="#3b4cc0")
        ax.annotate(f"λ={lam:g}", (added, 100 * r["avg_acc"]), textcoords="offset points", xytext=(5, 5))
    for m, style in (("full", "s"), ("scale-bias+head", "^"), ("head", "v")):
        d = out / "images" / m
        if (d / "results.json").exists():
            r = load(d)
            ax.plot(sum(r["params"]["added_per_task"]) / 4, 100 * r["avg_acc"], style, color="#999999")
            ax.annotate(m, (sum(r["params"]["added_per_task"]) / 4, 100 * r["avg_acc"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=8, color="#555555")
    ax.set_xscale("log")
    ax.set_xlabel("parameters added per task (log)")
    ax.set_ylabel("average test accuracy (%)")
    ax.set_title("transfer-images: TAPS lambda sweep (seed 0)", fontsize=9)
    fig.savefig("docs/img/taps_lambda_sweep.png", dpi=110, bbox_inches="tight")
    print("\nwrote docs/img/taps_lambda_sweep.png")
EOF
}
for step in "${@:-images text textlong lifelong sweep dwlr tables}"; do
  for s in $step; do "$s"; done
done
