"""Config composition and validation: errors name the problem and the fix, before any build."""

import pytest

from configcore import ConfigError
from model_zoo import ModelConfig
from pretrain.config import compose_config


def test_overrides_select_zoo_model_and_edit_it():
    run = compose_config(
        [
            "model=pythia-160m",
            "model.n_layers=4",
            "parallel.tp=2",
            "trainer.seq_len=512",
            "optim.lr=1e-3",
            "data.paths=[a,b]",
            "run_dir=/tmp/x",
        ]
    )
    assert run.model.name == "pythia-160m" and run.model.n_layers == 4
    assert run.model.rotary_fraction == 0.25
    assert run.parallel.tp == 2 and run.trainer.seq_len == 512 and run.optim.lr == 1e-3
    assert run.data.paths == ["a", "b"] and run.run_dir == "/tmp/x"
    assert isinstance(run.model, ModelConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=llama3-tiny", "model.n_kv_heads=3"], "n_heads=4 is not divisible by n_kv_heads=3"),
        (["model=llama3-tiny", "model.d_model=65"], "d_model=65 is not divisible by n_heads=4"),
        (
            ["model=pythia-tiny", "model.norm_position=post"],
            "parallel_residual=true needs norm_position=pre",
        ),
        (["model=llama3-tiny", "model.activation=relu"], "activation='relu' is not one of"),
        (["model=pythia-tiny", "model.rotary_fraction=0.01"], "RoPE needs an even number"),
        (["model=llama3-tiny", "trainer.seq_len=4096"], "exceeds model.max_seq_len=256"),
        (
            ["trainer.global_batch_size=10", "trainer.micro_batch_size=4"],
            "not divisible by trainer.micro_batch_size=4",
        ),
        (["schedule.name=exp"], "schedule.name='exp' is not one of"),
        (["data.paths=[a,b]", "data.weights=[1.0]"], "give one weight per path"),
        (["model=gpt5"], "unknown model 'gpt5'; known models: pythia-14m"),
        (["trainer.bogus=1"], "trainer.bogus"),
        (["model=olmo2-tiny", "model.rope_theta=-1"], "rope_theta=-1.0 must be positive"),
        (["parallel.tp=0"], "parallel.tp=0 must be >= 1"),
        (
            ["parallel.cp=2", "parallel.cp_style=ring", "data.intra_doc_mask=true"],
            "data.intra_doc_mask=true cannot reach its kernel",
        ),
    ],
)
def test_bad_configs_are_rejected_with_the_reason(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert message in str(err.value)
