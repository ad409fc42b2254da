"""What the parity tests share (tests/parallel/test_parity*.py): the batch, the float64 bound,
the run spec, the parity and precision checks.

A parallel run computes what one process computes (CPU, gloo, processes launched here). Same seed,
same real-text data (Debian man pages, byte-level ids), AdamW, gradient clipping at 1.0, all in
float64 (parallel.precision=fp64; the reference's parameters float64 too): the loss and gradient
norm of every step must equal the single-process run within TOL relative, and the parameters after
training, gathered, too. Each test launches one process group and runs several layouts in it, to
keep the suite fast on a 2-core machine. The bf16/FP8 runs, whose claim is the precision itself,
are held to a noise floor measured in the same test (check_precision). The tests are split over
files by topic (one worker of `make test` runs them all, tests/conftest.py); the single-process
references they compare with are computed once per session (tests/parallel/conftest.py).
"""

import contextlib
import dataclasses
import itertools

import torch

from model_zoo.zoo import get_model_config
from pretrain.parity.harness import FP64_TOL, launch, max_rel_param_diff, rel

# float64 parity: the harness's bound (its comment derives it from float64's roundoff)
TOL = FP64_TOL
# Five steps: in float64 a wrong layout (a missing reduction, a shard applied twice, a stale
# gradient) is off by far more than TOL at its first step; steps 2 to 5 carry what one step
# cannot show (AdamW's moments and bias correction, clipping of a gradient computed from updated
# weights, parameters after several updates). Every step costs one forward-backward on every
# rank of a 2-core machine, which is what the suite's time goes to.
STEPS = 5
GBS, SEQ = 8, 32


def dense_cfg():
    # 4 layers so a ZBV pipeline of pp=2 has one layer per stage (4 stages)
    return dataclasses.replace(get_model_config("llama3-tiny"), n_layers=4)


# Every run starts from seed 0: in float64 no seed is calmer than another.
SEED = 0


def spec(model, runs, micro_batch=2, steps=STEPS, overrides=None, seed=SEED):
    return {
        "model": model,
        "model_overrides": overrides or {},
        "steps": steps,
        "seed": seed,
        "global_batch": GBS,
        "micro_batch": micro_batch,
        "seq_len": SEQ,
        "runs": runs,
    }


def check_parity(result, ref, steps=STEPS):
    loss = max(rel(a, b) for a, b in zip(result["losses"], ref["losses"][:steps]))
    gnorm = max(rel(a, b) for a, b in zip(result["grad_norms"], ref["grad_norms"][:steps]))
    ref_params = ref["params"] if steps == len(ref["losses"]) else ref["params_at"][steps]
    params = max_rel_param_diff(result["params"], ref_params)
    print(
        f"{result['name']:<28} loss {loss:.1e}  grad-norm {gnorm:.1e}  params {params:.1e}  "
        f"[{result['layout']}]"
    )
    assert len(result["losses"]) == steps
    assert loss < TOL, (result["name"], result["losses"], ref["losses"])
    assert gnorm < TOL, (result["name"], result["grad_norms"], ref["grad_norms"])
    assert params < TOL, (result["name"], params)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# Reduced precision (bf16, FP8): here the precision itself is the claim, so no constant bounds a
# layout's difference to one process; the bound is measured in the same test, on the same machine.
# ------------------------------------------------------------------------------------------------
# The single process of a precision, with the global batch of 8 accumulated in micro-batches of 2,
# 4 and 8: equally valid runs that differ only in the order of sums (and, for FP8 tensorwise, in
# the tensors its scales are taken over). How far they sit from the float64 run is the
# precision's floor (check_precision).
MICRO_BATCHINGS = (2, 4, 8)


def single_process(tmp_path, steps_by_precision):
    """{precision: {micro_batch: run}}: the engine on one rank (bf16/fp8 with the same FSDP2
    mixed-precision policy there as on many ranks), one launch for all."""
    runs = [
        {"name": f"single {p} mb{mb}", "parallel": {"precision": p}, "steps": n, "micro_batch": mb}
        for p, n in steps_by_precision.items()
        for mb in MICRO_BATCHINGS
    ]
    results = iter(launch(1, spec("llama3-tiny", runs, overrides={"n_layers": 4}), tmp_path))
    return {p: {mb: next(results) for mb in MICRO_BATCHINGS} for p in steps_by_precision}


def check_precision(par, singles, fp64_ref, micro_batch):
    """A layout's run of a reduced precision against that precision's single-process runs.

    The floor is how far the precision's rounding takes a valid run from the exact math: the
    largest distance of the single process (micro-batches of 2, 4, 8) from the float64 run. The
    layout is one more rounding of the same math; if it is as accurate as those runs (within the
    floor of float64), the triangle inequality puts it within 2 x floor of the single process with
    its own micro-batch size, which is what is asserted. (The spread of the single-process runs
    among themselves is printed too: a layout adds roundings they do not, e.g. tensor-parallel
    partial sums reduced in bf16, so it may exceed that spread.)"""
    steps = len(par["losses"])

    def worst(a, b):
        return max(rel(x, y) for x, y in zip(a["losses"][:steps], b["losses"][:steps]))

    floor = max(worst(single, fp64_ref) for single in singles.values())
    spread = max(worst(singles[a], singles[b]) for a, b in itertools.combinations(singles, 2))
    track = worst(par, singles[micro_batch])
    vs_fp64 = worst(par, fp64_ref)
    print(
        f"{par['name']}: vs single process (micro-batches of {micro_batch}) {track:.2e}, "
        f"bound {2 * floor:.2e} (single vs fp64 up to {floor:.2e}; their spread {spread:.2e}); "
        f"layout vs fp64 {vs_fp64:.2e} over {steps} steps"
    )
    assert steps == len(singles[micro_batch]["losses"]) <= len(fp64_ref["losses"])
    # the precision path was taken: a run that silently computed in float64 would equal the
    # float64 reference within the float64 parity bound
    assert floor > FP64_TOL, (par["name"], floor)
    assert track <= 2 * floor, (par["losses"], singles[micro_batch]["losses"], floor)
    # The precision claim itself (docs/parallel.md, "Precision"): a bf16 or FP8 run trains like
    # full precision, its loss within 2% of the float64 run's at every step. It is the claim's
    # threshold, not a noise bound (measured here: 1e-4 to 1e-3 over 3 to 20 steps).
    assert vs_fp64 < 0.02, (par["losses"], fp64_ref["losses"])
