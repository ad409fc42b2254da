"""The one error type of model_zoo (kept apart so that every module can raise it, the family
registry included, without importing the config module)."""


class ConfigError(ValueError):
    """A configuration that cannot be built. The message names the problem and the fix."""


def need(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless `cond`: the one check helper of every config dataclass's
    validation (model_zoo, parallel, pretrain; data_pipeline stands alone with its own error)."""
    if not cond:
        raise ConfigError(msg)
