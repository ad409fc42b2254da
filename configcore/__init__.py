"""The configuration core every package shares: the one error type, the check helper, and the
Hydra plumbing that turns a folder of YAML plus command-line overrides into typed dataclasses.

It imports none of the project's packages, so model_zoo, parallel, pretrain and data_pipeline
(which stands alone) may all import it (tests/test_import_graph.py). This module itself holds only
what has no dependency (`ConfigError`, `need`): model_zoo raises them without pulling in Hydra.
Hydra composition is in `configcore.compose`, structured-config conversions in
`configcore.structured`.
"""

from configcore.errors import ConfigError, need

__all__ = ["ConfigError", "need"]
