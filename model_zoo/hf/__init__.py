"""Hugging Face interop: one adapter module per family, registered with
`model_zoo.families.register_family`, and folder I/O (config.json + safetensors).

The imports below are the registry's contents: importing a family's module registers it. Adding a
family is one new module here (see qwen3.py) and its line below.
"""

from model_zoo.families import adapter_for_family, adapter_for_hf_config, architectures, families
from model_zoo.hf import deepseek, gpt_neox, llama, mixtral, olmo2, olmoe, qwen3  # noqa: F401
from model_zoo.hf.io import export_hf, import_hf

__all__ = [
    "adapter_for_family",
    "adapter_for_hf_config",
    "architectures",
    "export_hf",
    "families",
    "import_hf",
]
