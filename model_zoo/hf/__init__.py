"""Hugging Face interop: per-family adapters and folder I/O (config.json + safetensors)."""

from model_zoo.hf.adapters import ADAPTERS, adapter_for_family, adapter_for_hf_config
from model_zoo.hf.io import export_hf, import_hf

__all__ = ["ADAPTERS", "adapter_for_family", "adapter_for_hf_config", "export_hf", "import_hf"]
