"""model_zoo's names for the config core's error type and check helper (configcore/): one type for
the whole project, so a CLI catches one ConfigError whichever package raised it. The rest of the
project imports them from model_zoo.config or configcore."""

from configcore import ConfigError as ConfigError
from configcore import need as need
