"""Hugging Face interop: folder I/O (config.json + safetensors) and the code the families'
adapters share. Each family's adapter is in its folder (model_zoo/families/<family>/hf.py) and
found through the registry, model_zoo/families/__init__.py.
"""

from model_zoo.families import adapter_for_family, adapter_for_hf_config, architectures, families
from model_zoo.hf.io import export_hf, import_hf

__all__ = [
    "adapter_for_family",
    "adapter_for_hf_config",
    "architectures",
    "export_hf",
    "families",
    "import_hf",
]
