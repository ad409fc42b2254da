"""The `pretrain` console script."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.cli import main

BIN = Path(sys.executable).parent / "pretrain"


def test_zoo_lists_every_model_with_counts(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in ("pythia-70m", "olmo2-7b", "llama3.1-70b", "llama3-tiny"):
        assert name in out
    assert "18,915,328" in out  # pythia-70m non-embedding


def test_zoo_name_prints_resolved_config_with_overrides(capsys):
    assert main(["zoo", "pythia-160m", "model.n_layers=6"]) == 0
    out = capsys.readouterr().out
    assert "name: pythia-160m" in out and "n_layers: 6" in out and "rotary_fraction: 0.25" in out


def test_unknown_model_exits_2_listing_known(capsys):
    assert main(["zoo", "llama9"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'llama9'" in err and "pythia-160m" in err


def test_bad_config_exits_2_before_anything_runs(capsys):
    assert main(["config", "model=llama3-tiny", "model.n_kv_heads=3"]) == 2
    assert "n_heads=4 is not divisible by n_kv_heads=3" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("train", "data", "export-hf", "import-hf", "launch", "analyze", "zoo", "schedule"):
        assert f"  {sub} " in out


def test_unknown_subcommand_exits_2(capsys):
    assert main(["trian"]) == 2
    assert "unknown subcommand 'trian'" in capsys.readouterr().err


def test_console_script_is_installed():
    assert BIN.exists(), "run `pip install -e .` (make install) to create the pretrain script"
    result = subprocess.run(
        [str(BIN), "zoo", "pythia-14m"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    assert "d_model: 128" in result.stdout


def test_unknown_keys_are_rejected_even_with_plus(capsys):
    assert main(["config", "+trainer.max_stepz=5", "+optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "'trainer.max_stepz' (did you mean trainer.max_steps" in err
    assert "'optim.lrr' (did you mean optim.lr" in err


@pytest.mark.parametrize(
    "spec, steps",
    [("steps:0,10,100", "0 10 100"), ("steps:[0,10]+every:50", "0 10 50 100")],
)
def test_series_specs_need_no_double_quoting(spec, steps, capsys):
    args = ["train", "--dry-run", f"checkpoint.series={spec}", "trainer.max_steps=100"]
    assert main(args) == 0
    assert f"series steps ({len(steps.split())}): {steps}" in capsys.readouterr().out
