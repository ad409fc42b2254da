"""Recipes (configs/recipe/*.yaml): each composes, validates and has a layout on real GPU counts;
the Pythia ones reproduce the paper's setup (Biderman et al. 2023: 1024 x 2048 tokens per step,
143,000 steps, 1% warmup, cosine to 10% of the per-size peak LR of Table 1)."""

import math

import pytest

from pretrain.cli import main
from pretrain.config import compose_config, recipe_names
from pretrain.optim import lr_at
from pretrain.train import plan

# Table 1 of the Pythia paper: peak learning rate per size.
PYTHIA_LR = {
    "70m": 1e-3,
    "160m": 6e-4,
    "410m": 3e-4,
    "1b": 3e-4,
    "1.4b": 2e-4,
    "2.8b": 1.6e-4,
    "6.9b": 1.2e-4,
    "12b": 1.2e-4,
}
EXPECTED = [f"pythia-{s}" for s in PYTHIA_LR] + [
    "olmo2-1b",
    "olmo2-7b",
    "llama3.1-8b",
    "olmoe-1b-7b",
    "deepseek-v3-16b",
]


def pythia_lr(step: int, peak: float) -> float:
    """Warmup over 1% of 143,000 steps, then cosine from the peak to 10% of it (GPT-NeoX)."""
    warmup, total, floor = 1430, 143000, 0.1 * peak
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def test_every_named_recipe_exists():
    assert sorted(EXPECTED) == recipe_names()


@pytest.mark.parametrize("name", EXPECTED)
def test_recipe_validates_and_plans_on_gpu_counts(name):
    run = compose_config([f"recipe={name}"])
    # one node of 8 GPUs (and two for Pythia, whose micro-batches fill 1024 / 16 per rank)
    for world in (8, 16) if name.startswith("pythia") else (8,):
        layout = plan(run, world)
        assert layout.dp * layout.local_batch_size == run.trainer.global_batch_size
    assert run.parallel.precision == "bf16"
    assert run.trainer.max_steps > run.schedule.warmup_steps > 0


@pytest.mark.parametrize("size", PYTHIA_LR)
def test_pythia_recipes_follow_the_paper(size):
    run = compose_config([f"recipe=pythia-{size}"])
    t = run.trainer
    assert run.model.name == f"pythia-{size}"
    assert t.global_batch_size * t.seq_len == 2_097_152
    assert t.global_batch_size * t.seq_len * t.max_steps == 299_892_736_000
    assert (run.optim.beta1, run.optim.beta2, run.optim.eps) == (0.9, 0.95, 1e-8)
    assert run.optim.weight_decay == 0.01
    assert run.checkpoint.series == "pythia"
    peak = PYTHIA_LR[size]
    for step in (1, 1430, 71500, 143000):
        got = lr_at(step, run.optim.lr, run.schedule, t.max_steps)
        # the same closed form in float64, written twice: a few roundings of 1.1e-16
        assert got == pytest.approx(pythia_lr(step, peak), rel=1e-12), step
    # float64 closed form (approx's default rel 1e-6 is far above its rounding)
    assert lr_at(143000, run.optim.lr, run.schedule, t.max_steps) == pytest.approx(0.1 * peak)


def test_overrides_apply_on_top_of_a_recipe():
    run = compose_config(["recipe=pythia-160m", "optim.lr=1e-3", "model=pythia-70m"])
    assert run.optim.lr == 1e-3 and run.model.name == "pythia-70m"
    assert run.trainer.global_batch_size == 1024  # the rest of the recipe stays


def test_dry_runs_print_valid_plans(capsys):
    assert main(["train", "recipe=pythia-160m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1024 sequences x 2048 = 2,097,152 tokens per step" in out
    assert "series steps (154)" in out
    args = ["launch", "recipe=pythia-1b", "--nodes", "2", "--gpus-per-node", "8", "--dry-run"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "#SBATCH --nodes=2" in captured.out and "--gpus-per-node=8" in captured.out
    assert "dp_shard=16" in captured.err and "gradient accumulation 4" in captured.err


def test_unknown_recipe_lists_the_known_ones(capsys):
    assert main(["config", "recipe=pythia-7b"]) == 2
    assert "unknown recipe 'pythia-7b'; known recipes: deepseek-v3-16b" in capsys.readouterr().err
