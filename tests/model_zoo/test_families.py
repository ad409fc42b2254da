"""The family registry (model_zoo/families/): one FamilySpec per family, read by the zoo, by
config validation and by Hugging Face export/import."""

from __future__ import annotations

from dataclasses import replace

import pytest

from configcore import ConfigError
from model_zoo import get_model_config, zoo_names
from model_zoo.families import SPECS, adapter_for_family, architectures, families
from model_zoo.families.llama.hf import LlamaAdapter
from model_zoo.families.qwen3 import QWEN3
from model_zoo.families.spec import FamilySpec


def test_each_family_is_one_spec_that_the_zoo_validation_and_hf_read():
    assert families() == tuple(spec.name for spec in SPECS)
    assert zoo_names() == [name for spec in SPECS for name in spec.sizes]
    assert len(set(zoo_names())) == len(zoo_names())
    for spec in SPECS:
        assert adapter_for_family(spec.name) is spec.hf_adapter
        assert architectures()[spec.hf_adapter.model_type] == spec.hf_adapter.architecture
        for name in spec.sizes:
            cfg = get_model_config(name)
            assert (cfg.name, cfg.family) == (name, spec.name)


def test_sizes_are_fresh_copies():
    # the sizes share nested configs (MoEConfig, RopeScalingConfig) with the spec's data
    first = get_model_config("llama3-tiny")
    expected = (first.rope_scaling.factor, first.init.std)
    first.rope_scaling.factor, first.init.std = 99.0, 99.0
    moe = get_model_config("mixtral-tiny")
    moe.moe.n_experts = 99
    again = get_model_config("llama3-tiny")
    assert (again.rope_scaling.factor, again.init.std) == expected
    assert get_model_config("mixtral-tiny").moe.n_experts == 8


def test_a_spec_whose_adapter_or_template_is_another_family_is_refused():
    with pytest.raises(TypeError, match="must be 'qwen3'"):
        FamilySpec(name="qwen3", base=QWEN3, sizes={}, hf_adapter=LlamaAdapter())


def test_validation_accepts_exactly_the_registered_families():
    with pytest.raises(ConfigError, match="family='qwen4' is not one of gpt_neox, olmo2, llama"):
        replace(get_model_config("qwen3-tiny"), family="qwen4").validate()
