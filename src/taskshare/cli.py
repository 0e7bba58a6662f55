"""The `taskshare` command line.

    taskshare run [BENCHMARK] --method M[,M2,...] [--epochs N] [--limit N] [--seed S[,S2,...] | --seeds N] [--grid K=V,...]
                  [--out DIR] [--config FILE] [--set key=value ...] [--resume] [--jobs N] [--quiet]
                  [--device cpu|cuda] [--precision fp32|bf16]
    taskshare predict RUN_OR_FOLDER INPUT... --task NAME [--task NAME ...] [--format csv|json] [--out FILE]
    taskshare export RUN_OR_FOLDER --task NAME [--format safetensors|torchscript] [--out FILE]
    taskshare list [--options METHOD]
    taskshare report DIR [DIR ...] [--plots DIR] [--markdown]
    taskshare inspect BACKBONE --patch KINDS [--classes N]
    taskshare relatedness BENCHMARK [--extractor auto|mobilenetv2|raw] [--loo] [--out DIR]

`taskshare run` with no benchmark runs the default comparison (DEFAULT_BENCHMARK with DEFAULT_METHODS).
Data-parallel (gloo on CPU; lifelong and multi-task benchmarks alike; rank 0 writes every file):

    torchrun --nproc_per_node=2 -m taskshare.cli run split-mnist --method finetune,ewc --set batch_size=128

Bad input exits with status 2 and a one-line message; an interrupted run exits with 130 and can be
continued with --resume.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from taskshare.errors import TaskshareError

DEFAULT_BENCHMARK = "split-mnist"
DEFAULT_METHODS = ("finetune", "ewc", "lwf", "expert-per-task", "joint")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskshare", description="Task-aware parameter sharing: multi-task and "
                                "lifelong learning with as few task-specific parameters as possible.")
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _use_parsers(sub)
    lst = sub.add_parser("list", help="benchmarks and methods, with one-line descriptions")
    lst.add_argument("--options", metavar="METHOD", help="METHOD's options: default, type and meaning")

    ins = sub.add_parser("inspect", help="parameters of a backbone and what each task adds per patch kind")
    ins.add_argument("backbone", help="mobilenetv2, minilm, mlp, cnn or resnet18")
    ins.add_argument("--patch", default="scale-bias+head",
                     help="patch kinds joined by +: head, scale-bias, bias, depthwise, full")
    ins.add_argument("--classes", type=int, default=10, help="classes of the task's head (default 10)")

    rel = sub.add_parser("relatedness", help="task-relatedness matrix of a stream (PAR's estimator) + heatmap")
    rel.add_argument("benchmark")
    rel.add_argument("--out", default=None, help="where to write relatedness.png/json (default: runs/<benchmark>)")
    rel.add_argument("--extractor", default="auto", choices=("auto", "mobilenetv2", "raw"),
                     help="features: the ImageNet MobileNetV2 (auto falls back to raw pixels without it)")
    rel.add_argument("--loo", action="store_true", help="leave-one-out prototypes (corrects the sample-size bias)")
    rel.add_argument("--zero-is-unrelated", action="store_true", help="official quirk: s = 0 counts as 1")
    rel.add_argument("--image-size", type=int, default=None)
    rel.add_argument("--seed", type=int, default=0)
    rel.add_argument("--set", dest="sets", action="append", default=[], metavar="benchmark.KEY=VALUE")

    rep = sub.add_parser("report", help="comparison table and PNG plots from result directories")
    rep.add_argument("paths", nargs="+", help="results.json files, run directories or output directories")
    rep.add_argument("--plots", default=None, help="where to write the PNGs (default: next to the results)")
    rep.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    return p


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help="train methods on a benchmark and write OUT/<method>/results.json")
    r.add_argument("benchmark", nargs="?", default=None,
                   help=f"benchmark name (taskshare list); default: {DEFAULT_BENCHMARK} with "
                        f"{','.join(DEFAULT_METHODS)}")
    r.add_argument("--method", "-m", default=None, help="comma-separated methods (default: the baselines)")
    r.add_argument("--epochs", type=int)
    r.add_argument("--limit", type=int, help="cap on training samples per task (quick runs)")
    r.add_argument("--seed", help="S, or S1,S2,... for one run per seed (OUT/seed-S, plus summary.json)")
    r.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (same as --seed 0,1,...,N-1)")
    r.add_argument("--out", default=None, help="output directory (default: runs/<benchmark>)")
    r.add_argument("--config", help="YAML or TOML file of settings")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lr=0.05 --set ewc.lambda=100 --set benchmark.n_tasks=5")
    r.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="choose KEY per method on validation (mean over seeds), e.g. --grid lr=0.1,0.01 "
                        "--grid ewc.lambda=10,100; the choice is recorded in results.json")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    r.add_argument("--jobs", "-j", type=_count, default=1, metavar="N",
                   help="train the run's methods, seeds and --grid settings in N processes (default 1)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-task lines")
    r.add_argument("--device", choices=("cpu", "cuda"))
    r.add_argument("--precision", choices=("fp32", "bf16"))


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give the number of processes, 1 or more")
    return int(text)


def _use_parsers(sub) -> None:
    """predict and export: what a run or a TaskModel.save folder is used for."""
    pr = sub.add_parser("predict", help="labels and probabilities of a trained task for new inputs (CSV or JSON)")
    pr.add_argument("path", help="a run's method folder (OUT/<method>) or a TaskModel.save folder")
    pr.add_argument("inputs", nargs="+", help=".npy/.npz arrays, image files or .txt text lines")
    pr.add_argument("--task", action="append", required=True,
                    help="the task; repeat it once per sample for a mixed batch")
    pr.add_argument("--format", choices=("csv", "json"), default=None, help="default: from --out, else csv")
    pr.add_argument("--out", default=None, help="write here (.csv or .json) instead of printing")

    ex = sub.add_parser("export", help="one task as a standalone model (TAPS merged, patches BN-folded)")
    ex.add_argument("path", help="a run's method folder (OUT/<method>) or a TaskModel.save folder")
    ex.add_argument("--task", required=True)
    ex.add_argument("--format", choices=("safetensors", "torchscript"), default="safetensors")
    ex.add_argument("--out", default=None, help="file to write (default: <run>/exports/<task>.<ext>)")


def _config(args):
    from taskshare.config import build_config, merge, parse_set
    from taskshare.methods import method_options
    from taskshare.methods.multioutput.options import multitask_method_options

    if not hasattr(args, "seed_list"):
        _read_run_section(args)
    raw = merge(dict(args.file_config), parse_set(args.sets))
    for key in ("epochs", "limit", "device", "precision"):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    raw["seed"] = args.seed_list[0]
    return build_config(raw, {**method_options(), **multitask_method_options()})


def _read_run_section(args) -> None:
    """--config FILE: its `run` section (config.yaml) fills the benchmark, methods, seeds and grid not given
    on the command line (`engine.record.run_section`); --seed / --seeds become `args.seed_list`."""
    from taskshare.config import load_file
    from taskshare.engine.record import run_section

    args.file_config = load_file(args.config) if args.config else {}
    args.benchmark, args.method, args.seed_list, args.grid = run_section(
        args.file_config, args.benchmark, args.method, args.seed, args.seeds, args.grid)


def cmd_run(args) -> int:
    import dataclasses

    import torch

    from taskshare.data.multioutput import MULTITASK_BENCHMARKS
    from taskshare.engine import distributed
    from taskshare.methods import METHODS

    _read_run_section(args)
    benchmark = args.benchmark or DEFAULT_BENCHMARK
    if benchmark in MULTITASK_BENCHMARKS:
        return _run_multitask(args, benchmark)
    methods = _methods(args.method, DEFAULT_METHODS, METHODS, "")
    cfg = _config(args)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TaskshareError(f"device {cfg.device}: no CUDA device is available here; use --device cpu")
    di = distributed.init_from_env()  # under torchrun: one process group, the runner shards every batch
    if cfg.device == "cuda" and di.enabled:  # one GPU per process on a multi-GPU machine
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", di.rank)) % torch.cuda.device_count())
    out = _claim_out(args, benchmark, di.is_main)
    if args.jobs != 1:
        _in_parallel(args, benchmark, methods, out, di, multi_output=False)
    if args.grid:
        results = _run_grid(args, benchmark, methods, out, di)
    else:
        results = []
        for seed in args.seed_list:
            seed_out = _seed_out(out, seed, args.seed_list, di.is_main)
            results += _run_lifelong(args, benchmark, methods, dataclasses.replace(cfg, seed=seed), seed_out, di)
    if di.is_main:  # config.yaml once the run is done: a refused or failed run changes nothing
        _write_config(out, cfg, benchmark, methods, args.seed_list, multi_output=False, grid=args.grid)
        _finish(args, out, results, [_seed_out(out, s, args.seed_list, False) / m for s in args.seed_list
                                     for m in methods])
    return 0


def _trial(args, setting: dict[str, str], seed: int):
    """(args, config) of one --grid setting and seed: the setting's values as extra --set items."""
    import argparse
    import dataclasses

    trial = argparse.Namespace(**{**vars(args), "sets": [*args.sets, *(f"{k}={v}" for k, v in setting.items())]})
    return trial, dataclasses.replace(_config(trial), seed=seed)


def _run_grid(args, benchmark: str, methods: list[str], out: Path, di) -> list[dict]:
    """--grid: every method's settings chosen on validation (`engine.grid`)."""
    from taskshare.engine.grid import parse_grid, select_on_validation

    def run_one(method, setting, seed, where):
        trial, cfg = _trial(args, setting, seed)
        if di.is_main:
            where.mkdir(parents=True, exist_ok=True)
        return _run_lifelong(trial, benchmark, [method], cfg, where, di)[0]

    return select_on_validation(run_one, methods, parse_grid(args.grid), args.seed_list, out,
                                lambda seed: _seed_out(out, seed, args.seed_list, di.is_main))


def _in_parallel(args, benchmark: str, methods: list[str], out: Path, di, multi_output: bool) -> None:
    """--jobs N: the run's trainings first, in N processes (`engine.parallel`); the serial pass that follows
    resumes them, so it only chooses on validation, tabulates and summarises."""
    import functools

    from taskshare.engine.grid import parse_grid
    from taskshare.engine.parallel import plan_units, run_units

    if di.enabled:
        raise TaskshareError("--jobs does not combine with torchrun (which splits every batch over its "
                             "processes): use one or the other")
    for seed in args.seed_list:
        _seed_out(out, seed, args.seed_list, create=True)
    phases = plan_units(methods, args.seed_list, out, parse_grid(args.grid) if args.grid else None,
                        reference="stl" if multi_output and args.grid else None)
    run_units(functools.partial(_train_unit, args, benchmark, multi_output), phases, args.jobs, args.quiet)
    args.resume = args.quiet = True   # the serial pass only collects the finished units: no line per unit


def _train_unit(args, benchmark: str, multi_output: bool, unit) -> None:
    """One unit of a --jobs run, in a worker process: what the serial run trains for it, where it trains it."""
    import dataclasses

    from taskshare.engine import distributed
    from taskshare.engine.multioutput import run_multitask

    trial, cfg = _trial(args, dict(unit.setting), unit.seed)
    trial.quiet = True
    unit.where.mkdir(parents=True, exist_ok=True)
    if not multi_output:
        _run_lifelong(trial, benchmark, [unit.method], cfg, unit.where, distributed.init_from_env())
        return
    stl = None if unit.reference is None else run_multitask(   # the seed's Δm reference, trained in phase 1
        benchmark, "stl", dataclasses.replace(_config(args), seed=unit.seed), unit.reference, resume=True)
    run_multitask(benchmark, unit.method, cfg, unit.where, resume=args.resume, quiet=True, stl=stl)


def _seed_out(out: Path, seed: int, seeds: list[int], create: bool) -> Path:
    """Where one seed's run goes (`engine.outdir.seed_dir`), checked writable when `create`."""
    from taskshare.engine.outdir import prepare_out, seed_dir

    path = seed_dir(out, seed, seeds)
    if create and path != out:
        prepare_out(path)
    return path


def _write_config(out: Path, cfg, benchmark: str, methods: list[str], seeds: list[int], multi_output: bool,
                  grid: list[str] = ()):
    from taskshare.engine.grid import parse_grid
    from taskshare.engine.record import effective_config, write_config

    config = effective_config(cfg, benchmark, methods, seeds, multi_output)
    if grid:
        config["run"]["grid"] = parse_grid(list(grid))
    write_config(out / "config.yaml", config)


def _run_lifelong(args, benchmark: str, methods: list[str], cfg, out: Path, di) -> list[dict]:
    import functools

    from taskshare.data import build_benchmark
    from taskshare.engine import distributed
    from taskshare.engine.lifelong import run_method

    quiet = args.quiet or not di.is_main  # the same training steps on every rank; rank 0 prints and writes

    @functools.cache
    def stream():  # built on first need: methods kept by --resume never load the data
        if di.enabled and not di.is_main:
            distributed.barrier()  # rank 0 builds first (fills data caches), the others then read them
        built = build_benchmark(benchmark, seed=cfg.seed, options=cfg.benchmark)
        if di.enabled and di.is_main:
            distributed.barrier()
        if not quiet:
            print(f"{benchmark}: {len(built.tasks)} tasks ({', '.join(built.task_names)}); "
                  f"methods {', '.join(methods)}; seed {cfg.seed}; writing to {out}", file=sys.stderr)
        return built

    return [run_method(stream, m, cfg, out, benchmark=benchmark, resume=args.resume, quiet=quiet)
            for m in methods]


def _finish(args, out: Path, results: list[dict], run_dirs: list[Path]) -> None:
    """The table (mean ± std over seeds when there are several), summary.json and the report's plots."""
    from taskshare.core.serialize import atomic_write_json
    from taskshare.results.report import comparison_table, report
    from taskshare.results.summary import summarize

    print(comparison_table(results))
    if len(args.seed_list) > 1:
        atomic_write_json(out / "summary.json", summarize(results))
    if len(results) > 1 or not args.quiet:
        print(report(run_dirs, out_dir=out).split("\n\n", 1)[-1])


def _methods(text: str | None, default: tuple[str, ...], known, kind: str) -> list[str]:
    """--method a,b,c -> ['a', 'b', 'c'] (default when the flag is absent); empty or unknown: one line."""
    if text is None:
        return list(default)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise TaskshareError(f"--method {text!r} names no method: give one or more of {', '.join(known)}, "
                             "comma-separated (taskshare list)")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise TaskshareError(f"unknown {kind}method {unknown[0]!r}{_setting_hint(unknown[0])}: choose from "
                             f"{', '.join(known)} (taskshare list)")
    return methods


def _setting_hint(method: str) -> str:
    """' (a multi-output method: ...)' when `method` exists in the other setting."""
    from taskshare.methods import METHODS
    from taskshare.data.multioutput import MULTITASK_BENCHMARKS
    from taskshare.methods.multioutput.options import MULTITASK_METHODS

    if method in MULTITASK_METHODS and method not in METHODS:
        return f" here (it is a multi-output method: run it on {', '.join(MULTITASK_BENCHMARKS)})"
    if method in METHODS and method not in MULTITASK_METHODS:
        return " here (it is a lifelong method: run it on a task stream such as split-mnist)"
    return ""


_LOCKS: list = []  # the run's folder lock, held until the process exits


def _claim_out(args, benchmark: str, is_main: bool = True) -> Path:
    """The run's output folder, checked writable and locked for this process (rank 0 under torchrun)
    before any data is loaded; temporary files of an interrupted earlier run there are removed."""
    from taskshare.engine.outdir import RunLock, default_out, prepare_out, remove_orphans

    out = Path(args.out) if args.out else default_out(benchmark)
    if is_main:
        prepare_out(out)
        _LOCKS.append(RunLock(out).acquire())
        remove_orphans(out)
    return out


DEFAULT_MULTITASK_METHODS = ("stl", "ew", "adatask")


def _run_multitask(args, benchmark: str) -> int:
    """One input, several outputs: AdaTask and the weighting baselines (works under torchrun too)."""
    import dataclasses

    from taskshare.core.serialize import atomic_write_json
    from taskshare.engine import distributed
    from taskshare.engine.multioutput import MULTITASK_METHODS, multitask_table, run_multitask
    from taskshare.results.summary import summarize

    methods = _methods(args.method, DEFAULT_MULTITASK_METHODS, MULTITASK_METHODS, "multi-task ")
    cfg = _config(args)
    di = distributed.init_from_env()
    out = _claim_out(args, benchmark, di.is_main)
    if args.jobs != 1:
        _in_parallel(args, benchmark, methods, out, di, multi_output=True)
    if args.grid:
        results = _multitask_grid(args, benchmark, methods, cfg, out, di)
    else:
        results = []
        for seed in args.seed_list:
            seed_out = _seed_out(out, seed, args.seed_list, di.is_main)
            results += [run_multitask(benchmark, m, dataclasses.replace(cfg, seed=seed), seed_out,
                                      resume=args.resume, quiet=args.quiet) for m in methods]
    if distributed.is_main():
        _write_config(out, cfg, benchmark, methods, args.seed_list, multi_output=True, grid=args.grid)
        print(multitask_table(results))
        if len(args.seed_list) > 1:
            atomic_write_json(out / "summary.json", summarize(results))
    return 0


def _multitask_grid(args, benchmark: str, methods: list[str], cfg, out: Path, di) -> list[dict]:
    """--grid on a multi-output benchmark: STL once per seed at the run's settings (the shared Δm reference),
    then every method's setting chosen on validation Δm against it (`engine.grid`)."""
    import dataclasses

    from taskshare.engine.grid import parse_grid, select_on_validation
    from taskshare.engine.multioutput import run_multitask

    stl = {seed: run_multitask(benchmark, "stl", dataclasses.replace(cfg, seed=seed),
                               _seed_out(out, seed, args.seed_list, di.is_main), resume=args.resume,
                               quiet=args.quiet) for seed in args.seed_list}

    def run_one(method, setting, seed, where):
        return run_multitask(benchmark, method, _trial(args, setting, seed)[1], where, resume=args.resume,
                             quiet=args.quiet, stl=stl[seed])

    chosen = select_on_validation(run_one, [m for m in methods if m != "stl"], parse_grid(args.grid),
                                  args.seed_list, out, lambda seed: _seed_out(out, seed, args.seed_list, False),
                                  score="val_delta_m")
    return ([stl[s] for s in args.seed_list] if "stl" in methods else []) + chosen


def cmd_list(args) -> int:
    from taskshare.engine.catalog import catalog_text, options_text

    print(options_text(args.options) if args.options else catalog_text())
    return 0


def cmd_inspect(args) -> int:
    from taskshare.methods.patches.inspect import inspect_backbone

    if not 1 <= args.classes <= 1_000_000:
        raise TaskshareError(f"--classes must be between 1 and 1000000, got {args.classes}")
    print(inspect_backbone(args.backbone, args.patch, args.classes))
    return 0


def cmd_relatedness(args) -> int:
    from taskshare.data import build_benchmark
    from taskshare.config import parse_set
    from taskshare.engine.outdir import default_out, prepare_out
    from taskshare.methods.par.relatedness import relatedness_report

    if args.image_size is not None and not 1 <= args.image_size <= 1024:
        raise TaskshareError(f"--image-size must be between 1 and 1024, got {args.image_size}")
    if not 0 <= args.seed <= 2**32 - 1:
        raise TaskshareError(f"--seed must be between 0 and {2**32 - 1}, got {args.seed}")
    raw = parse_set(args.sets)
    if set(raw) - {"benchmark"}:
        raise TaskshareError("taskshare relatedness takes only benchmark options: --set benchmark.KEY=VALUE")
    stream = build_benchmark(args.benchmark, seed=args.seed, options=raw.get("benchmark", {}))
    out = prepare_out(Path(args.out) if args.out else default_out(args.benchmark))
    relatedness_report(stream, out, extractor=args.extractor, loo=args.loo,  # prints the matrix itself
                       zero_is_unrelated=args.zero_is_unrelated, image_size=args.image_size)
    return 0


def cmd_predict(args) -> int:
    from taskshare.engine.predict import predict_files

    fmt = args.format or ("json" if args.out and args.out.endswith(".json") else "csv")
    text = predict_files(args.path, args.task, args.inputs, args.out, fmt)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(args) -> int:
    from taskshare.engine.predict import export_run_task

    print(export_run_task(args.path, args.task, args.format, args.out))
    return 0


def cmd_report(args) -> int:
    from taskshare.engine.outdir import prepare_out
    from taskshare.results.report import report

    if args.plots is not None:
        prepare_out(args.plots, "--plots")
    print(report(args.paths, out_dir=args.plots, markdown=args.markdown))
    return 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    from taskshare import progress

    args = _parser().parse_args(argv)
    was_quiet = progress.is_quiet()
    progress.set_quiet(getattr(args, "quiet", False))
    try:
        commands = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "relatedness": cmd_relatedness,
                    "inspect": cmd_inspect, "predict": cmd_predict, "export": cmd_export}
        return commands[args.command](args)
    except TaskshareError as e:
        print(f"taskshare: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (taskshare list | head): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the OS refused mid-run (disk full, read-only, ...): what was written is kept
        where = f" writing {e.filename}" if e.filename else ""
        print(f"taskshare: error: {_one_line(e.strerror or e)}{where}: free space or choose another --out; "
              "the last good checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taskshare: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    finally:
        while _LOCKS:
            _LOCKS.pop().release()
        progress.set_quiet(was_quiet)


if __name__ == "__main__":
    sys.exit(main())
