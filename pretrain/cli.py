"""The `pretrain` console script: one entry point, one subcommand per job.

    pretrain zoo [NAME] [overrides]         list the zoo, or print one model's resolved config
    pretrain config [overrides]             print the resolved, validated run config
    pretrain import-hf HF_DIR OUT_DIR       Hugging Face folder -> checkpoint of ours
    pretrain export-hf CKPT --out DIR       checkpoint of ours -> Hugging Face folder
    pretrain data [overrides]               the Dolma-style data pipeline (data_pipeline/)
    pretrain train | launch | analyze | schedule | mixture   (see each one's --help)

Subcommands take Hydra overrides (`key=value`) after their own options. Configuration errors are
reported in one line naming the problem and exit with status 2 before anything is built.

Each subcommand imports its module when it runs: `pretrain zoo` or `pretrain config --help` answer
in a second instead of loading torch.distributed, transformers, megatron-core and the data
pipeline's spaCy/numba for every command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tqdm import tqdm

from configcore import ConfigError
from model_zoo.hf import architectures as hf_architectures
from pretrain.quiet import route_known_warnings


def cmd_zoo(argv: list[str]) -> int:
    from pretrain.config import compose_config, to_yaml
    from pretrain.zoo_table import zoo_table

    ap = argparse.ArgumentParser(
        prog="pretrain zoo",
        description="List the model zoo, or print one model's resolved config "
        "(`pretrain zoo pythia-160m model.n_layers=6`).",
    )
    ap.add_argument("name", nargs="?", help="print this model's resolved config")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to the run config")
    ap.add_argument(
        "--seq-len",
        type=int,
        default=2048,
        help="sequence length for the FLOPs column (default: 2048)",
    )
    args = ap.parse_args(argv)
    if args.name:
        run = compose_config([f"model={args.name}", *args.overrides])
        print(to_yaml(run.model), end="")
        return 0
    print(zoo_table(args.seq_len))
    return 0


def cmd_config(argv: list[str]) -> int:
    from pretrain.config import compose_config, to_yaml

    run = compose_config(argv)
    print(to_yaml(run), end="")
    return 0


def cmd_import_hf(argv: list[str]) -> int:
    from pretrain.export import import_hf_to_checkpoint

    ap = argparse.ArgumentParser(
        prog="pretrain import-hf",
        description="Convert a Hugging Face model folder into a checkpoint of ours that training "
        "can start from. Supported (config.json model_type: architecture): "
        + ", ".join(f"{model_type}: {arch}" for model_type, arch in hf_architectures().items())
        + ".",
    )
    ap.add_argument("hf_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    out = import_hf_to_checkpoint(args.hf_dir, args.out_dir, overwrite=args.overwrite)
    print(f"wrote checkpoint {out}")
    return 0


def cmd_export_hf(argv: list[str]) -> int:
    from pretrain.export import export_checkpoint_to_hf, export_run_steps

    ap = argparse.ArgumentParser(
        prog="pretrain export-hf",
        description="Write a checkpoint of ours as a Hugging Face model folder. CHECKPOINT is a "
        "checkpoint folder, or a run folder with --step N (writes OUT/stepN) or --all (every "
        "series and full checkpoint of the run, OUT/stepN each). Checkpoints of any parallel "
        "layout are consolidated in this one process.",
    )
    ap.add_argument("checkpoint", help="a checkpoint folder, or a run folder with --step/--all")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--step", type=int, help="export this step of the run folder")
    ap.add_argument("--all", action="store_true", help="export every checkpointed step of the run")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokenizer", help="tokenizer.json / tokenizer folder to copy alongside")
    ap.add_argument("--max-shard-gb", type=float, default=5.0)
    ap.add_argument(
        "--verify",
        default="size",
        choices=["size", "checksum"],
        help="check the checkpoint's files against its manifest: sizes (default) or sha256 too",
    )
    args = ap.parse_args(argv)
    kw = dict(
        dtype=args.dtype,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
        verify=args.verify,
    )
    if args.step is not None or args.all:
        steps = None if args.all else [args.step]
        for step, out in export_run_steps(args.checkpoint, args.out, steps, **kw):
            tqdm.write(f"wrote Hugging Face model of step {step}: {out}")  # above the bar
            sys.stdout.flush()
        return 0
    out = export_checkpoint_to_hf(args.checkpoint, args.out, **kw)
    print(f"wrote Hugging Face model {out}")
    return 0


def cmd_train(argv: list[str]) -> int:
    from pretrain.train import main_train

    return main_train(argv)


def cmd_launch(argv: list[str]) -> int:
    from pretrain.launch import main as launch_main

    return launch_main(argv)


def cmd_series(argv: list[str]) -> int:
    # `pretrain schedule`: the checkpoint series (not the LR or the pipeline schedule)
    from pretrain.series import format_bytes, series_steps

    ap = argparse.ArgumentParser(
        prog="pretrain schedule",
        description="Print the steps of a checkpoint-series spec, their count and the disk space "
        "(`pretrain schedule pythia --max-steps 143000 model=pythia-160m`). Terms: pythia, "
        "log2:K, every:N, steps:[a,b,...], first, last; unions with '+'.",
    )
    ap.add_argument("spec")
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--dtype", default=None, help="series dtype (default: checkpoint.series_dtype)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (the model sets the size)")
    args = ap.parse_intermixed_args(argv)
    from model_zoo.counting import count_parameters
    from pretrain.config import compose_config

    run = compose_config(args.overrides)
    steps = series_steps(args.spec, args.max_steps)
    dtype = args.dtype or run.checkpoint.series_dtype
    import torch

    per = (
        count_parameters(run.model).total
        * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    )
    print(" ".join(map(str, steps)))
    print(f"{len(steps)} checkpoints over {args.max_steps} steps")
    print(
        f"model {run.model.name}: {format_bytes(per)} per checkpoint in {dtype}; "
        f"series total about {format_bytes(per * len(steps))}"
    )
    return 0


def cmd_plan(argv: list[str]) -> int:
    from pretrain.plan import main as plan_main

    return plan_main(argv)


def cmd_analyze(argv: list[str]) -> int:
    from pretrain.analysis.cli import main as analyze_main

    return analyze_main(argv)


def cmd_mixture(argv: list[str]) -> int:
    from pretrain.mixture import main as mixture_main

    return mixture_main(argv)


def cmd_data(argv: list[str]) -> int:
    # The one place pretrain/ reaches into data_pipeline/: the console script is the single entry
    # point users know; the pipeline itself stays independent of training code.
    from data_pipeline.cli import main as data_main

    return int(data_main(argv) or 0)


def cmd_demo(argv: list[str]) -> int:
    from pretrain.demo import main as demo_main

    return demo_main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "zoo": (cmd_zoo, "list the model zoo with parameter and FLOP counts"),
    "config": (cmd_config, "print the resolved, validated run config"),
    "import-hf": (cmd_import_hf, "Hugging Face folder -> checkpoint of ours"),
    "export-hf": (cmd_export_hf, "checkpoint of ours -> Hugging Face folder"),
    "data": (cmd_data, "run the Dolma-style data pipeline"),
    "demo": (cmd_demo, "the end-to-end demo on bundled real text"),
    "train": (cmd_train, "train or resume a model (one process, torchrun, srun, mpirun)"),
    "launch": (cmd_launch, "render slurm/train.sbatch, check the layout, submit (sbatch)"),
    "schedule": (cmd_series, "print a checkpoint-series schedule and its disk space"),
    "mixture": (
        cmd_mixture,
        "data-mixture ablations: a swarm of proxy runs (sweep), the fitted mixture (fit)",
    ),
    "plan": (cmd_plan, "rank parallel layouts by memory per GPU and estimated speed"),
    "analyze": (
        cmd_analyze,
        "look back into a run: a step's batch, the series' eval loss, memorization, weights, "
        "run comparison, scaling fit, HTML report",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    route_known_warnings()  # before any subcommand imports torch, megatron-core or torchao
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nsubcommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"pretrain: unknown subcommand {name!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return COMMANDS[name][0](rest)
    except ConfigError as err:  # a damaged checkpoint is one too (its label says so)
        label = getattr(err, "label", "configuration error")
        print(f"pretrain {name}: {label}: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError) as err:
        print(f"pretrain {name}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
