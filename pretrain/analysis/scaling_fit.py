"""`pretrain analyze scaling-fit`: L(N, D) = E + A / N^alpha + B / D^beta, Chinchilla's approach 3.

Hoffmann et al. (2022), approach 3: minimise the Huber loss (delta 1e-3) between
log L_hat = LSE(a - alpha log N, b - beta log D, e) and log L over the points, with L-BFGS, from
a grid of initialisations (alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
a, b in {0, 5, ..., 25}); A = exp(a), B = exp(b), E = exp(e). Intervals come from refitting
bootstrap resamples of the points. scipy's L-BFGS-B does the minimisation; the objective and its
gradient are written here (a few lines of numpy) because they are the method itself.

Points: a CSV with columns params, tokens, loss (`--points`), or runs (`--runs`): each run gives
one point per row of its `analyze eval` table when there is one (the checkpoints' held-out loss
of the first source against the tokens seen), else its last logged training loss. N counts every
parameter of the model (model_zoo.counting, embeddings included, as Hoffmann et al. count).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from configcore import ConfigError
from model_zoo.counting import count_parameters
from pretrain.analysis.common import load_run, progress, save_figure

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
HUBER_DELTA = 1e-3
GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.01, 5.0),
    "b": np.arange(0.0, 25.01, 5.0),
}


@dataclass
class Fit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """N and D minimising L under C = 6 N D (Hoffmann et al., eq. 4)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        return g * (flops / 6) ** (b / (a + b)), (1 / g) * (flops / 6) ** (a / (a + b))


def _objective(theta, log_n, log_d, log_l):
    """Huber loss of the log-loss residuals and its gradient; theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    t_n, t_d = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t_n, t_d), e)  # log-sum-exp of the three terms, stably
    w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = w_n + w_d + w_e
    r = top + np.log(total) - log_l
    small = np.abs(r) <= HUBER_DELTA
    value = np.where(small, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum()
    dr = np.where(small, r, HUBER_DELTA * np.sign(r)) / total  # d huber / d term, over softmax
    g_n, g_d = dr * w_n, dr * w_d
    grad = [g_n.sum(), g_d.sum(), (dr * w_e).sum(), -(g_n * log_n).sum(), -(g_d * log_d).sum()]
    return value, np.array(grad)


def _lbfgs(theta0, args):
    # scipy's stopping rule is relative to max(|f|, 1): with f ~ 1e-4 (Huber at delta 1e-3) the
    # default stops far from the minimum, so it is made strict here
    opts = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000}
    # L-BFGS-B calls scipy's bundled OpenBLAS for 5x5 algebra: with a thread per core it
    # thrashes (60x slower measured on 2 busy cores), so one BLAS thread
    with threadpool_limits(1):
        res = minimize(_objective, theta0, args=args, jac=True, method="L-BFGS-B", options=opts)
    return res.fun, res.x


def _grid() -> np.ndarray:
    rows = itertools.product(GRID["alpha"], GRID["beta"], GRID["e"], GRID["a"], GRID["b"])
    return np.array([(a, b, e, al, be) for al, be, e, a, b in rows])


def _grid_values(grid: np.ndarray, log_n, log_d, log_l) -> np.ndarray:
    """The Huber objective at every grid point at once (one broadcast numpy expression)."""
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.repeat(e, len(log_n), axis=1)])
    r = np.abs(logsumexp(terms, axis=0) - log_l)
    small = r <= HUBER_DELTA
    return np.where(small, 0.5 * r**2, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)).sum(axis=1)


def fit_points(n, d, loss, starts: int = 8, extra_start: np.ndarray | None = None) -> Fit:
    """The approach-3 fit: the objective is evaluated on the whole initialisation grid, and
    L-BFGS runs from its `starts` best points (and from `extra_start` when given); with the strict
    stopping rule of `_lbfgs` good starts reach the same minimum, so running all 4500 would only
    repeat it at 300x the time."""
    args = (np.log(n), np.log(d), np.log(loss))
    grid = _grid()
    chosen = grid[np.argsort(_grid_values(grid, *args))[:starts]]
    if extra_start is not None:
        chosen = np.vstack([extra_start[None], chosen])
    best_value, best = np.inf, None
    for theta0 in chosen:
        value, theta = _lbfgs(theta0, args)
        if value < best_value:
            best_value, best = value, theta
    a, b, e, alpha, beta = best
    return Fit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)


def _theta(fit: Fit) -> np.ndarray:
    return np.array([np.log(fit.A), np.log(fit.B), np.log(fit.E), fit.alpha, fit.beta])


def bootstrap(n, d, loss, resamples: int, fit: Fit, seed: int = 0) -> dict[str, list]:
    """2.5th and 97.5th percentiles of each parameter over fits to resampled points (each refit
    starts from the full fit: a resample's minimum lies near it)."""
    rng = np.random.default_rng(seed)
    fits = []
    for _ in progress(range(resamples), resamples, "bootstrap", unit="fit"):
        idx = rng.integers(0, len(n), len(n))
        fits.append(asdict(fit_points(n[idx], d[idx], loss[idx], 0, extra_start=_theta(fit))))
    out = {}
    for k in PARAM_NAMES:
        values = [f[k] for f in fits]
        out[k] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return out


def read_points_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"params", "tokens", "loss"}
    if not rows or not need <= set(rows[0]):
        raise ConfigError(f"{path}: needs a header with columns params, tokens, loss")
    cols = [np.array([float(r[c]) for r in rows]) for c in ("params", "tokens", "loss")]
    if any((c <= 0).any() for c in cols):
        raise ConfigError(f"{path}: params, tokens and loss must all be positive")
    return cols[0], cols[1], cols[2]


def points_of_runs(runs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pts = []
    for run_dir in map(Path, runs):
        n = count_parameters(load_run(run_dir).model).total
        table = run_dir / "analysis" / "eval" / "eval.csv"
        if table.exists():
            with open(table, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("tokens") and float(r["tokens"]) > 0]
            key = next(k for k in rows[0] if k.startswith("loss/")) if rows else None
            pts += [(n, float(r["tokens"]), float(r[key])) for r in rows]
            continue
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        last = [json.loads(x) for x in lines if x.strip() and '"loss"' in x][-1]
        pts.append((n, float(last["tokens"]), float(last.get("loss_avg", last["loss"]))))
    arr = np.array(pts, dtype=float)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def plot_fit(fit: Fit, n, d, loss, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = np.unique(n)
    cmap = plt.get_cmap("viridis", max(len(sizes), 2))
    for i, size in enumerate(sizes):
        sel = n == size
        ax.scatter(d[sel], loss[sel], color=cmap(i), s=14, label=f"N={size:.3g}")
        dd = np.geomspace(d[sel].min(), d[sel].max(), 100)
        ax.plot(dd, fit.loss(size, dd), color=cmap(i), lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("tokens D")
    ax.set_ylabel("loss")
    ax.set_title(f"L = {fit.E:.3g} + {fit.A:.4g}/N^{fit.alpha:.3f} + {fit.B:.4g}/D^{fit.beta:.3f}")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    if bool(args.points) == bool(args.runs):
        raise ConfigError("give exactly one of --points CSV or --runs RUN...")
    n, d, loss = read_points_csv(args.points) if args.points else points_of_runs(args.runs)
    if len(n) < 5:
        raise ConfigError(f"{len(n)} points cannot determine 5 parameters; give at least 5")
    fit = fit_points(n, d, loss)
    intervals = bootstrap(n, d, loss, args.bootstrap, fit, args.seed) if args.bootstrap else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_opt, d_opt = fit.compute_optimal(args.flops)
    result = {
        **asdict(fit),
        "intervals": intervals,
        "points": len(n),
        "flops": args.flops,
        "optimal_params": n_opt,
        "optimal_tokens": d_opt,
    }
    (out / "scaling_fit.json").write_text(json.dumps(result, indent=1))
    png = plot_fit(fit, n, d, loss, out / "scaling_fit.png")
    if args.json:
        print(json.dumps(result))
        return 0
    for k in PARAM_NAMES:
        ci = intervals.get(k)
        band = f"  [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
        print(f"{k:>6} = {result[k]:.4g}{band}")
    print(
        f"compute-optimal for C = {args.flops:.3g} FLOPs: N = {n_opt:.4g} parameters, "
        f"D = {d_opt:.4g} tokens ({len(n)} points; fit {out / 'scaling_fit.json'}, plot {png})"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("scaling-fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla 3)")
    p.add_argument("--points", help="CSV with columns params, tokens, loss")
    p.add_argument("--runs", nargs="+", help="run folders (one point per evaluated checkpoint)")
    p.add_argument("--flops", type=float, default=1e21, help="budget for the compute-optimal N, D")
    p.add_argument("--bootstrap", type=int, default=100, help="resamples for intervals (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="analysis/scaling-fit", help="folder for the JSON and PNG")
    p.add_argument("--json", action="store_true", help="print the fit as one JSON object")
    p.set_defaults(func=main)
