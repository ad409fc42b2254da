"""Single-device model definitions: one configurable decoder, the zoo of named configs, parameter
and FLOP counting, and Hugging Face conversion per family. Imports torch only.

`model_zoo.hf` is imported here, first: it imports the family registry (model_zoo/families/), which
fills the family names `ModelConfig.validate` accepts, so every family is known before any config is
validated, whichever module a caller imports. (The registry imports model_zoo.hf.base while
model_zoo.hf is initialising, and model_zoo.hf.io imports the registry once it is complete.)"""

from model_zoo import hf
from model_zoo.config import InitConfig, ModelConfig, RopeScalingConfig
from model_zoo.counting import ParameterCount, count_parameters, training_flops_per_token
from model_zoo.model import Transformer, build_model
from model_zoo.zoo import get_model_config, zoo_names

__all__ = [
    "hf",
    "InitConfig",
    "ModelConfig",
    "RopeScalingConfig",
    "ParameterCount",
    "count_parameters",
    "training_flops_per_token",
    "Transformer",
    "build_model",
    "get_model_config",
    "zoo_names",
]
