"""The checkpoint-series schedule language and `pretrain schedule`."""

import pytest

from configcore import ConfigError
from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.series import retained_full_steps, series_steps


def test_pythia_is_154_checkpoints_for_143000_steps():
    steps = series_steps("pythia", 143000)
    assert len(steps) == 154
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-1] == 143000 and steps[-2] == 142000
    # written out the way the Pythia paper describes it
    expected = {0} | {2**i for i in range(10)} | set(range(1000, 143001, 1000))
    assert set(steps) == expected


def test_terms_and_unions():
    assert series_steps("log2:512", 10_000) == [2**i for i in range(10)]
    assert series_steps("every:250", 1000) == [250, 500, 750, 1000]
    assert series_steps("steps:[0,10,100]", 50) == [0, 10]  # past max_steps dropped
    assert series_steps("steps:[5, 3]+every:4+first+last", 10) == [0, 3, 4, 5, 8, 10]
    assert series_steps("log2:4+log2:8", 100) == [1, 2, 4, 8]  # a union, not a concatenation
    assert series_steps("", 100) == []


@pytest.mark.parametrize(
    "bad", ["fibonacci", "every:0", "every:x", "steps:[1,a]", "log2:", "steps:[]"]
)
def test_bad_spec_rejected_with_the_terms(bad):
    with pytest.raises(ConfigError) as err:
        series_steps(bad, 100)
    assert bad.split(":")[0] in str(err.value) or "steps" in str(err.value)


def test_bad_spec_rejected_by_config_before_anything_runs(capsys):
    assert main(["config", "checkpoint.series=every:ten"]) == 2
    assert "every:ten" in capsys.readouterr().err


def test_retention_counts():
    assert retained_full_steps(100, 1000, keep_last=2, keep_every=0) == [900, 1000]
    assert retained_full_steps(100, 1000, keep_last=1, keep_every=500) == [500, 1000]
    assert retained_full_steps(300, 1000, keep_last=2, keep_every=0) == [900, 1000]  # final save


def test_schedule_command_prints_steps_count_and_disk(capsys):
    assert main(["schedule", "pythia", "--max-steps", "143000", "model=pythia-160m"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["0", "1", "2", "4"] and len(out[0].split()) == 154
    assert out[1] == "154 checkpoints over 143000 steps"
    # pythia-160m: 162,322,944 parameters x 2 bytes (bf16) x 154
    assert "324.65 MB per checkpoint in bfloat16" in out[2] and "50.00 GB" in out[2]


def test_global_batch_in_tokens_is_converted_and_checked():
    run = compose_config(
        ["trainer.seq_len=64", "trainer.global_batch_tokens=1024", "trainer.micro_batch_size=2"]
    )
    assert run.trainer.global_batch_size == 16
    with pytest.raises(ConfigError, match="not a multiple of trainer.seq_len=64"):
        compose_config(["trainer.seq_len=64", "trainer.global_batch_tokens=1000"])
