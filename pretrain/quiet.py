"""Known third-party warnings go to a log file, not between the command's own lines.

Each entry point (the `pretrain` console script, the demo) calls `route_known_warnings()`. The
warnings below are known and harmless here; they are appended to $PRETRAIN_WARNINGS_LOG (default
~/.cache/pretrain/warnings.log) so they can still be read. Any other warning prints as usual.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

KNOWN = (
    # megatron-core's optimizer module, imported with its indexed datasets: we use torch's AdamW
    r"Transformer Engine and Apex are not installed",
    # torch's DeviceMesh: slicing a flattened dim; the engine's meshes, nothing to do for a user
    r"Slicing a flattened dim from root mesh will be deprecated",
    # torchao loading its optional C++/CUDA extensions on a machine without them
    r"[Tt]orch[Aa][Oo]",
    r"Skipping import of cpp extensions",
    # megatron-core's inference package re-exports (a DeprecationWarning at import)
    r"imports from `dynamic_context.py` will be removed",
)
_PATTERN = re.compile("|".join(f"(?:{k})" for k in KNOWN))


def warnings_log() -> Path:
    env = os.environ.get("PRETRAIN_WARNINGS_LOG")
    return Path(env) if env else Path.home() / ".cache" / "pretrain" / "warnings.log"


def route_known_warnings() -> None:
    """Known warnings (and log lines, `route_known_logs`) to the log file."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"{filename}:{lineno}: {category.__name__}: {message}"
        if not (_PATTERN.search(str(message)) or "torchao" in filename):
            return default(message, category, filename, lineno, file, line)
        try:
            path = warnings_log()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(text + "\n")
        except OSError:
            pass  # an unwritable log must not break the command

    warnings.showwarning = show
    route_known_logs()


class _ToLogFile(logging.Filter):
    """Known library log lines (torchao's optional-kernel loads, torch's pytree deprecations,
    DTensor's redistribute remark) to the warnings log instead of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            path = warnings_log()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(f"{record.name}: {record.getMessage()}\n")
        except OSError:
            pass
        return False


QUIET_LOGGERS = (
    "torchao",
    "torch.utils._pytree",
    # DTensor's note that a norm over a 2-D mesh takes two all-reduces (the grad norm under
    # TP x FSDP): a performance remark about torch's own collectives, once per rank
    "torch.distributed.tensor._redistribute",
)


def route_known_logs() -> None:
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ToLogFile) for f in logger.filters):
            logger.addFilter(_ToLogFile())
