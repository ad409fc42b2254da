"""Documented commands run: every ```bash block of README.md and docs/quickstart.md that follows a
`<!-- runnable -->` line is executed, line by line, as a user would type it, from a scratch folder
that holds the bundled samples at the same relative path as the repository (so the documented
`data_pipeline/samples/...` paths work verbatim).

Lines run in this process through `pretrain.cli.main(argv)`, the function the `pretrain` console
script calls, with the scratch folder as the working directory: the same code and exit status as
a subprocess, without a fresh interpreter importing torch for every line. One documented line
(the first `--dry-run`) runs through the installed console script in a subprocess, so the entry
point itself is tested too.

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
import torch

from pretrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]
PRETRAIN = Path(sys.executable).parent / "pretrain"
SMALL_TRAIN = [
    "trainer.seq_len=64",
    "trainer.global_batch_size=4",
    "trainer.micro_batch_size=4",
    "schedule.warmup_steps=2",
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


def as_args(line: str) -> list[str]:
    """The command's arguments after `pretrain`, with SMALL_TRAIN for a training line."""
    argv = shlex.split(line)
    assert argv[0] == "pretrain", f"a runnable line must be a pretrain command: {line}"
    if argv[1] == "train" and "--dry-run" not in argv:
        argv += SMALL_TRAIN
    return argv[1:]


# A command documented twice (the quickstart repeats the README's pipeline line) runs once.
COMMANDS = list(
    {line: (doc.name, line) for doc in DOCS for line in runnable_commands(doc)}.values()
)
# The line that runs through the installed console script (a subprocess): a dry run, cheap.
CONSOLE_LINE = next((line for _, line in COMMANDS if "--dry-run" in line), None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("docs")
    (work / "data_pipeline").mkdir()
    (work / "data_pipeline" / "samples").symlink_to(ROOT / "data_pipeline" / "samples")
    return work


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, as OMP_NUM_THREADS=1 gives the console script (2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_docs_have_runnable_blocks():
    names = {name for name, _ in COMMANDS}
    assert names == {"README.md", "quickstart.md"}
    assert any("pretrain data pipeline=dolma" in line for _, line in COMMANDS)
    assert CONSOLE_LINE is not None, "no documented --dry-run line to run as a subprocess"


@pytest.mark.parametrize(
    "doc, line", COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)]
)
def test_documented_command_runs(doc, line, workdir, one_thread, monkeypatch, capfd):
    monkeypatch.setenv("PRETRAIN_WARNINGS_LOG", str(workdir / "warnings.log"))
    if line == CONSOLE_LINE:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [str(PRETRAIN), *as_args(line)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        rc, out, err = done.returncode, done.stdout, done.stderr
    else:
        monkeypatch.chdir(workdir)
        try:
            rc = main(as_args(line))
        except SystemExit as stop:  # argparse's usage errors exit; so would a user's shell see
            rc = stop.code if isinstance(stop.code, int) else 1
        out, err = capfd.readouterr()
    assert rc == 0, f"{doc}: `{line}` failed (exit {rc}):\n{out[-2000:]}\n{err[-3000:]}"
