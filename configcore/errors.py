"""The one error type of every configuration check in the project."""


class ConfigError(ValueError):
    """A configuration that cannot be built or run. The message names the problem and the fix;
    the CLIs print it in one line and exit with status 2, before any work starts."""


def need(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless `cond`: the one check helper of every config dataclass's
    `validate()` (model_zoo, parallel, pretrain and data_pipeline alike)."""
    if not cond:
        raise ConfigError(msg)
