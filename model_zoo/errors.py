"""The one error type of model_zoo (kept apart so that every module can raise it, the family
registry included, without importing the config module)."""


class ConfigError(ValueError):
    """A configuration that cannot be built. The message names the problem and the fix."""
