"""`pretrain plan`: rank every parallel layout of a model on N nodes x G GPUs by estimated speed,
with exact per-GPU memory (parallel/planner/); `--launch` hands the best one to `pretrain launch`.

    pretrain plan model=llama3.1-8b trainer.seq_len=8192 trainer.global_batch_size=32 \\
        --nodes 1 --gpus-per-node 8 --gpu H100 --top 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from configcore import ConfigError
from model_zoo.counting import count_parameters
from parallel.axes import AXIS, INNER_FIRST, axis_settings, options_in_use
from parallel.planner.hardware import GPUS, get_gpu
from parallel.planner.search import PlannedLayout, plan
from parallel.planner.validate import TOLERANCE, compare, launch_validation
from pretrain.config import compose_config

GIB = 2**30


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="pretrain plan",
        description="Enumerate the layouts the engine accepts (tp within a node, cp with tp "
        "within a node from seq_len 8192 on with >= 2048 tokens per cp rank, pp x schedule, "
        "dp_shard/dp_replicate, ep, micro-batch 1-8, checkpointing none/selective/full, bf16/FP8), "
        "with exact parameter/gradient/optimizer bytes per GPU from the real parallelize "
        "functions, activations measured on fake tensors, and a step-time estimate; print the "
        "fastest that fit. Overrides are the run config's (model=..., trainer.seq_len=...).",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=llama3.1-8b")
    ap.add_argument("--nodes", "-N", type=int, required=True)
    ap.add_argument("--gpus-per-node", type=int, required=True)
    ap.add_argument("--gpu", required=True, help=f"one of {', '.join(GPUS)}")
    ap.add_argument(
        "--gpu-set", action="append", default=[], help="override a GPU field, e.g. net_gbps=25"
    )
    ap.add_argument("--efficiency", type=float, default=0.5, help="achieved / peak FLOP/s")
    ap.add_argument("--top", type=int, default=10, help="rows of the table (default 10)")
    ap.add_argument("--json", action="store_true", help="print every layout as JSON")
    ap.add_argument("--launch", action="store_true", help="pretrain launch the best layout")
    ap.add_argument(
        "--validate",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="K",
        help="run one real step of the K best layouts (default 3) here with gloo processes "
        "(a tiny model, nodes x gpus-per-node <= 8 ranks) and print estimate vs measurement "
        "per rank",
    )
    args = ap.parse_intermixed_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise ConfigError("--nodes and --gpus-per-node must be >= 1")
    if not 0 < args.efficiency <= 1:
        raise ConfigError(f"--efficiency={args.efficiency} must be in (0, 1]")
    return args


# The axis columns, innermost axis first, then the axes' own options (parallel/axes.py): each as
# wide as its header or 3, an option's value shown where its axis is on.
AXIS_COLUMNS = tuple((AXIS[name], max(3, len(AXIS[name].column))) for name in INNER_FIRST)
OPTION_COLUMNS = tuple(
    (o, max(len(o.column), *(len(c) for c in o.choices())))
    for name in INNER_FIRST
    for o in AXIS[name].options
)


def _header() -> str:
    axes = " ".join(f"{a.column:>{w}}" for a, w in AXIS_COLUMNS)
    options = " ".join(f"{o.column:<{w}}" for o, w in OPTION_COLUMNS)
    return (
        f"  # {axes} {options} mbs ac        precision      GiB/GPU fits  tok/s/GPU   MFU "
        "dominant   (>: a lower bound)"
    )


def _row(i: int, p: PlannedLayout) -> str:
    lay = p.layout
    on = options_in_use(lay)
    axes = " ".join(f"{getattr(lay, a.name):>{w}}" for a, w in AXIS_COLUMNS)
    options = " ".join(f"{on.get(o.name, '-'):<{w}}" for o, w in OPTION_COLUMNS)
    # memory of a layout whose parameters alone do not fit: a lower bound (activations not probed)
    gib = f"{'>' if not p.activations_measured else ''}{p.total / GIB:.1f}"
    return (
        f"{i:>3} {axes} {options} {lay.micro_batch_size:>3} {lay.activation_checkpointing:<9} "
        f"{lay.precision:<14} {gib:>8} {'yes' if p.fits else 'no':<4} "
        f"{p.tokens_per_s_per_gpu:>9.0f} {p.mfu * 100:>5.1f} {p.time.dominant}"
    )


def main(argv: list[str]) -> int:
    args = _args(argv)
    run = compose_config(args.overrides)
    gpu = get_gpu(args.gpu, args.gpu_set)
    if args.validate:
        _check_validation(args, run)
    bar = lambda items: tqdm(items, desc="layouts", unit="layout", file=sys.stderr)  # noqa: E731
    ranked = plan(
        run.model,
        args.nodes,
        args.gpus_per_node,
        gpu,
        run.trainer.global_batch_size,
        run.trainer.seq_len,
        args.efficiency,
        progress=bar,
    )
    if args.json:
        print(json.dumps([p.as_json() for p in ranked], indent=1))
        return 0
    world = args.nodes * args.gpus_per_node
    print(
        f"model {run.model.name} on {args.nodes} x {args.gpus_per_node} {gpu.name} "
        f"({gpu.hbm_gib:.0f} GiB): global batch {run.trainer.global_batch_size} x "
        f"{run.trainer.seq_len}; {len(ranked)} layouts, "
        f"{sum(p.fits for p in ranked)} fit"
    )
    print(_header())
    for i, p in enumerate(ranked[: args.top], 1):
        print(_row(i, p))
    best = ranked[0]
    if not best.fits:
        print(f"no layout fits {world} x {gpu.name}; the smallest needs {best.total / GIB:.1f} GiB")
        return 1
    print("best layout overrides: " + " ".join(best.overrides()))
    if args.validate:
        return _validate(args, run, ranked[: args.validate])
    if args.launch:
        from pretrain.launch import main as launch_main  # the launcher only when asked

        return launch_main(
            [
                *args.overrides,
                *best.overrides(),
                "--nodes",
                str(args.nodes),
                "--gpus-per-node",
                str(args.gpus_per_node),
            ]
        )
    return 0


MAX_VALIDATION_RANKS = 8
MAX_VALIDATION_PARAMS = 50_000_000


def _check_validation(args, run) -> None:
    """--validate runs every rank here: refuse, before planning, what this machine cannot run."""
    world = args.nodes * args.gpus_per_node
    n_params = count_parameters(run.model).total
    if world > MAX_VALIDATION_RANKS or n_params > MAX_VALIDATION_PARAMS:
        raise ConfigError(
            f"--validate runs every rank on this machine: it needs at most "
            f"{MAX_VALIDATION_RANKS} ranks (got {world}) and a tiny model (got "
            f"{n_params / 1e6:.0f}M parameters); use e.g. model=llama3-tiny --nodes 1 "
            "--gpus-per-node 4"
        )


def _validate(args, run, layouts: list[PlannedLayout]) -> int:
    """One real step of each layout on this machine; a table of estimate vs measurement."""
    world = args.nodes * args.gpus_per_node
    runs = []
    for spec in (
        dict(
            model=run.model.name,
            n_layers=run.model.n_layers,
            global_batch_size=run.trainer.global_batch_size,
            micro_batch_size=p.layout.micro_batch_size,
            seq_len=run.trainer.seq_len,
            parallel=_validation_parallel(p),
        )
        for p in layouts
    ):
        if spec not in runs:  # FP8 twins run as the same bf16 layout: once
            runs.append(spec)
    with tempfile.TemporaryDirectory(prefix="plan-validate-") as tmp:
        results = launch_validation(world, runs, Path(tmp))
    all_ok = True
    for spec, measured in zip(runs, results):
        print(f"\nvalidation of {' '.join(f'{k}={v}' for k, v in spec['parallel'].items())}:")
        print(f"  rank {'what':<12} {'estimate':>12} {'measured':>12}  error  within")
        for row in compare(spec, measured):
            tol = TOLERANCE[row["what"]]
            all_ok &= row["ok"]
            print(
                f"  {row['rank']:>4} {row['what']:<12} {row['estimate']:>12} "
                f"{row['measured']:>12} {row['rel_error'] * 100:5.1f}%  "
                f"{'yes' if row['ok'] else 'NO'} ({tol * 100:.0f}%)"
            )
    return 0 if all_ok else 1


def _validation_parallel(p: PlannedLayout) -> dict:
    """The layout's parallel settings for a CPU run: FP8 recipes need a GPU, so they are run
    as bf16 (the same sharding, bytes and collectives; only the linear kernels differ)."""
    lay = p.layout
    out = dict(
        **axis_settings(lay),
        activation_checkpointing=lay.activation_checkpointing,
        precision="bf16" if lay.precision.startswith("fp8") else lay.precision,
    )
    if lay.activation_checkpointing == "selective":
        out["ac_every_n"] = lay.ac_every_n
    return out
