"""Documented commands run: every ```bash block of README.md and docs/quickstart.md that follows a
`<!-- runnable -->` line is executed, line by line, as a user would type it, from a scratch folder
that holds the bundled samples at the same relative path as the repository (so the documented
`data_pipeline/samples/...` paths work verbatim).

Small settings are appended to `pretrain train` lines so training takes seconds (the documented
values stay in the command; Hydra's last value wins): SMALL_TRAIN below. Blocks run in document
order, README first, in one folder; a line documented in both runs once (the pipeline's).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]
PRETRAIN = Path(sys.executable).parent / "pretrain"
SMALL_TRAIN = [
    "trainer.max_steps=8",
    "schedule.warmup_steps=2",
    "trainer.seq_len=64",
    "trainer.global_batch_size=4",
    "trainer.micro_batch_size=2",
    "trainer.tensorboard=false",
]
BLOCK = re.compile(r"<!-- runnable -->\s*\n```bash\n(.*?)```", re.S)


def runnable_commands(doc: Path) -> list[str]:
    lines = []
    for body in BLOCK.findall(doc.read_text()):
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def as_argv(line: str) -> list[str]:
    argv = shlex.split(line)
    assert argv[0] == "pretrain", f"a runnable line must be a pretrain command: {line}"
    argv[0] = str(PRETRAIN)
    if argv[1] == "train" and "--dry-run" not in argv:
        argv += SMALL_TRAIN
    return argv


# A command documented twice (the quickstart repeats the README's pipeline line) runs once.
COMMANDS = list(
    {line: (doc.name, line) for doc in DOCS for line in runnable_commands(doc)}.values()
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("docs")
    (work / "data_pipeline").mkdir()
    (work / "data_pipeline" / "samples").symlink_to(ROOT / "data_pipeline" / "samples")
    return work


def test_the_docs_have_runnable_blocks():
    names = {name for name, _ in COMMANDS}
    assert names == {"README.md", "quickstart.md"}
    assert any("pretrain data pipeline=dolma" in line for _, line in COMMANDS)


@pytest.mark.parametrize(
    "doc, line", COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)]
)
def test_documented_command_runs(doc, line, workdir):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["PRETRAIN_WARNINGS_LOG"] = str(workdir / "warnings.log")
    done = subprocess.run(
        as_argv(line), cwd=workdir, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, (
        f"{doc}: `{line}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
