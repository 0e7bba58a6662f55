#!/usr/bin/env bash
# Reproduces the transfer-text tables of RESULTS.md ("## Transfer: model patches and TAPS", seed 0, SGD lr 0.01
# momentum 0.9 for every method; one `taskshare run` per method, --resume keeps finished runs), then `tables`
# prints them and draws docs/img/taps_layers_*.png (methods/taps/report.py plot_layers) and
# docs/img/taps_lambda_sweep.png from the 3-seed runs of scripts/results-taps-lambda.sh,
# scripts/results-patches-transfer.sh and scripts/results-smallcnn-stream.sh (run those first).
# Nothing is selected on test: TAPS's lambda for the text tables was fixed beforehand.
# Usage: scripts/results-transfer.sh [text|textlong|tables ...]   (default: all, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TS=".venv/bin/taskshare run --seed 0 --quiet --resume"
OUT=${OUT:-runs/results/transfer}
# transfer-text: MiniLM, 800 samples per task (200 test, 60 val), 256 of the 540 training samples, 64 tokens,
# 2 epochs, batch 16
TXT="--limit 256 --epochs 2 --set batch_size=16"
# TAPS: pretrained base frozen (backbone=model), official penalty lambda/52 * sum|s|, penalty on from epoch 1
# (warmup_epochs=1, as these tables were first run)
TAPS="--set taps.backbone=model --set taps.penalty=official --set taps.warmup_epochs=1"

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
tables() {
  mkdir -p docs/img
  OUT=$OUT .venv/bin/python - <<'EOF'
import json, os, statistics as st
from pathlib import Path

import torch
from taskshare.core.artifacts import read_sidecar
from taskshare.core.serialize import load_tensors
from taskshare.config import RunConfig, check_options
from taskshare.methods.taps import Taps, import_task
from taskshare.methods.taps.report import format_summary, plot_layers, summary

out = Path(os.environ["OUT"])
results = Path("runs/results")
load = lambda d: json.load(open(d / "results.json"))  # noqa: E731


def active(run, task):
    info = read_sidecar(run / "artifacts" / task)["meta"].get("taps")
    return f"{len(info['active_layers'])}/{len(info['layers'])}" if info else ""


def table(title, runs, baseline=None):
    runs = [(m, d) for m, d in runs if (d / "results.json").exists()]
    if not runs:
        return
    majority = baseline and baseline_accuracies(*baseline)
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


def baseline_accuracies(bench, limit):  # the majority class of each task's training split, on its test split
    from taskshare.data import build_benchmark
    accs = []
    for t in build_benchmark(bench, seed=0):
        y = t.limit(limit, seed=0).train.y
        accs.append(float((t.test.y == torch.bincount(y).argmax()).float().mean()))
    return accs


def taps_png(run, shape, png, title):
    if not (run / "results.json").exists():
        print(f"\n{png}: skipped, {run} has no results.json")
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


rows = lambda bench: [(m, out / bench / m) for m in ("head", "scale-bias+head", "full", "taps")]  # noqa: E731
table("transfer-text (MiniLM, 64 tokens), 256 training samples per task, 2 epochs", rows("text"),
      ("transfer-text", 256))
table("transfer-text (MiniLM, 64 tokens), all 540 training samples per task, 3 epochs", rows("text-long"),
      ("transfer-text", 540))
taps_png(results / "taps-lambda/grid/taps/taps.lambda_2/seed-0/taps", (1, 28, 28),
         "docs/img/taps_layers_transfer-images.png",
         "TAPS, ImageNet MobileNetV2 (32 px), lambda 2, seed 0: task-specific conv layers (dark)")
taps_png(out / "text-long" / "taps", (2, 64), "docs/img/taps_layers_transfer-text.png",
         "TAPS, MiniLM (540 samples, 3 epochs), lambda 2: task-specific linear layers (dark)")
taps_png(results / "smallcnn-stream-taps/seed-0/taps", (1, 28, 28), "docs/img/taps_layers_domain-stream.png",
         "TAPS, SmallCNN (base trained on mnist), chosen lambda, seed 0: task-specific layers (dark)")

# lambda sweep on transfer-images, 3 seeds: mean average accuracy (± std) against parameters added per task,
# with the patches and full fine-tuning at their validation-chosen lr
def seeds(pattern):
    runs = [json.load(open(f)) for f in sorted(results.glob(pattern))]
    if not runs:
        return None
    accs = [100 * r["avg_acc"] for r in runs]
    added = st.mean(sum(r["params"]["added_per_task"]) / len(r["tasks"]) for r in runs)
    return added, st.mean(accs), st.stdev(accs) if len(accs) > 1 else 0.0


pts = {lam: seeds(f"taps-lambda/grid/taps/taps.lambda_{lam}/seed-*/taps/results.json") for lam in ("0.5", "2", "8")}
refs = {m: seeds(f"{d}/seed-*/{m}/results.json") for m, d in (("full", "taps-lambda"), ("head", "patches-transfer"),
        ("scale-bias+head", "patches-transfer"), ("scale-bias+depthwise+head", "patches-transfer"))}
if all(pts.values()):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for lam, (added, mean, std) in pts.items():
        ax.errorbar(added, mean, yerr=std, fmt="o", color="#3b4cc0", capsize=3)
        ax.annotate(f"TAPS λ={lam}", (added, mean), textcoords="offset points", xytext=(5, 5))
    short = {"full": "full FT", "head": "head", "scale-bias+head": "S/B+head",
             "scale-bias+depthwise+head": "S/B+DW+head"}
    for (m, p), style in zip(refs.items(), ("s", "v", "^", "D")):
        if p:
            ax.errorbar(p[0], p[1], yerr=p[2], fmt=style, color="#999999", capsize=3)
            above = m == "full"  # TAPS at lambda 0.5 sits just left of full fine-tuning
            ax.annotate(short[m], (p[0], p[1]), textcoords="offset points", xytext=(0, 8) if above else (-5, -12),
                        ha="center" if above else "right", fontsize=8, color="#555555")
    ax.set_xscale("log")
    ax.set_xlabel("parameters added per task (log)")
    ax.set_ylabel("average test accuracy (%), mean ± std")
    ax.set_title("transfer-images: TAPS lambda against patches and full fine-tuning (3 seeds)", fontsize=9)
    fig.savefig("docs/img/taps_lambda_sweep.png", dpi=110, bbox_inches="tight")
    print("\nwrote docs/img/taps_lambda_sweep.png")
EOF
}
for step in "${@:-text textlong tables}"; do
  for s in $step; do "$s"; done
done
