"""`pretrain mixture`: choose data-mixture weights from a swarm of small proxy runs (RegMix).

    pretrain mixture sweep [overrides] --source NAME=DIR ... --val NAME=DIR ... --target NAME
                           --n N --concentration A --seed S --out SWEEP [--local | --slurm ...]
    pretrain mixture fit --sweep SWEEP --target NAME[,NAME...] [--min-weight NAME=W]
                         [--max-weight NAME=W] [--max-epochs E] [--tokens T]

The method is RegMix's (Liu et al. 2024, arXiv 2407.01492): draw N mixtures from a Dirichlet
around the natural token proportions p of the sources (alpha = concentration x p, so a small
concentration spreads the draws to the corners of the simplex and a large one keeps them near p),
train one small proxy per mixture with everything else equal (model, tokens, LR schedule, seed),
regress the target validation loss on the weights, and take the weights the regression predicts
best among many Dirichlet candidates that satisfy the constraints (RegMix averages the top
candidates; so does `fit`). docs/data_mixing.md walks the whole loop and its cost.

Sweep (SWEEP/):
  sweep.json    the sources (path, tokens), the draws, each proxy's overrides and realised weights
  weights.csv   one row per proxy: the drawn and the realised weight of every source
  runs/proxy-K  the proxies' run folders (config.yaml, metrics.jsonl with eval/<source>/loss)
  array.sbatch  with --slurm: the job array (slurm/train.sbatch rendered by `pretrain launch`'s
                code: USR1 -> checkpoint -> requeue -> resume=auto, per array task)

Each proxy trains exactly `trainer.max_steps x trainer.global_batch_size` samples and mixes them in
one block of that size (data.mix_block), so its data order holds each source's share of the run
exactly up to the largest-remainder rounding of one block (under one sample per source). A source
whose rounded share is zero samples is left out of that proxy's data.paths (a weight of 0).

Fit (SWEEP/fit/ or --out):
  fit.json       cross-validated Spearman of both regressions, the chosen one, the optimum with
                 bootstrap intervals, the constraints, the proxies' target losses
  fit.csv        observed target loss and each model's out-of-fold prediction per proxy
  fit.png        predicted against observed (out of fold), both models
  sensitivity.png / .csv   predicted target loss as one source's weight moves, the rest rescaled
  mixture.yaml   the chosen mixture: `pretrain train mixture=FILE` and `pretrain data mixture=FILE`
                 both read it as it is (data.paths/weights for training, mixer.sources for the
                 pipeline)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from configcore import ConfigError

SWEEP_FILE = "sweep.json"
WEIGHTS_FILE = "weights.csv"
MIXTURE_FILE = "mixture.yaml"


# ---------------------------------------------------------------------------------------------
# sweep


@dataclass
class SweepSource:
    name: str
    path: str  # token data folder (absolute)
    tokens: int  # tokens of one epoch of the packed stream (EOS included)
    match: str  # the documents' `source` value (fnmatch) for the data pipeline's mixer


def parse_named(items: list[str], flag: str) -> dict[str, str]:
    """['a=x', 'b=y'] -> {'a': 'x', 'b': 'y'}, refusing a missing '=' or a repeated name."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise ConfigError(f"{flag} {item!r}: write {flag} NAME=VALUE")
        if name in out:
            raise ConfigError(f"{flag} names {name!r} twice; give each source once")
        out[name] = value
    return out


_SWEEP_OWNS = (
    "data.paths",
    "data.weights",
    "data.mix_block",
    "eval.paths",
    "eval.names",
    "run_dir",
)


def base_run(overrides: list[str], sources: dict[str, str]):
    """The base config every proxy shares (validated), with all sources as its data."""
    from pretrain.config import compose_config

    owned = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in _SWEEP_OWNS]
    if owned:
        raise ConfigError(
            f"{owned[0].split('=', 1)[0]} is set by the sweep for each proxy; drop it "
            "(sources: --source NAME=DIR, validation: --val NAME=DIR, folders: --out)"
        )
    paths = "[" + ",".join(sources.values()) + "]"
    return compose_config([*overrides, f"data.paths={paths}"])


def source_tokens(run, paths: list[str]) -> list[int]:
    """Tokens of each source as training reads it (one epoch of its packed stream)."""
    from pretrain.data.loader import resolve_eos, resolve_npy_dtype
    from pretrain.data.sources import open_source

    eos, dtype = resolve_eos(run), resolve_npy_dtype(run)
    return [open_source(p, run.data.format, eos, dtype).n_tokens for p in paths]


def draw_mixtures(natural: np.ndarray, n: int, concentration: float, seed: int) -> np.ndarray:
    """n draws from Dirichlet(concentration x natural) (RegMix's prior), one row per mixture."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(concentration * np.asarray(natural, dtype=np.float64), size=n)


def proxy_overrides(
    base: list[str],
    sources: list[SweepSource],
    quotas: np.ndarray,
    block: int,
    val: dict[str, str],
    run_dir: Path,
) -> list[str]:
    """One proxy's overrides: the base, its sources and weights (sources with no sample left
    out), one mixing block for the whole run, the validation sources, its run folder."""
    keep = [i for i, q in enumerate(quotas) if q > 0]
    paths = "[" + ",".join(sources[i].path for i in keep) + "]"
    # the realised share q/block as the weight: block_quotas gives back exactly q (largest
    # remainder of q/block x block, whose fractional parts are roundoff)
    weights = "[" + ",".join(repr(float(quotas[i]) / block) for i in keep) + "]"
    out = [*base, f"data.paths={paths}", f"data.weights={weights}", f"data.mix_block={block}"]
    if val:
        out += [f"eval.paths=[{','.join(val.values())}]", f"eval.names=[{','.join(val)}]"]
    return [*out, f"run_dir={run_dir}"]


def plan_sweep(
    overrides: list[str],
    sources: dict[str, str],
    val: dict[str, str],
    target: list[str],
    n: int,
    concentration: float,
    seed: int,
    out: Path,
    match: dict[str, str] | None = None,
) -> dict:
    """Draw the mixtures and write sweep.json and weights.csv; nothing is trained here."""
    from pretrain.data.loader import block_quotas

    if len(sources) < 2:
        raise ConfigError("a mixture needs at least two --source NAME=DIR")
    if n < 2:
        raise ConfigError(f"--n={n}: a sweep needs at least two proxies (RegMix used 512)")
    if not concentration > 0:
        raise ConfigError(f"--concentration={concentration} must be positive")
    for t in target:
        if t not in val:
            raise ConfigError(
                f"--target {t!r} is not a validation source; give it with --val {t}=DIR "
                f"(validation sources: {', '.join(val) or 'none'})"
            )
    unknown = sorted(set(match or {}) - set(sources))
    if unknown:
        raise ConfigError(f"--match {unknown[0]!r} names no --source")
    sources = {k: str(Path(v).expanduser().resolve()) for k, v in sources.items()}
    val = {k: str(Path(v).expanduser().resolve()) for k, v in val.items()}
    out = Path(out).expanduser().resolve()
    if (out / SWEEP_FILE).exists():
        raise FileExistsError(
            f"{out / SWEEP_FILE} exists: a sweep is already planned there; run it with "
            f"`pretrain mixture sweep --resume {out} --local|--slurm`, or choose another --out"
        )
    run = base_run(overrides, sources)
    tokens = source_tokens(run, list(sources.values()))
    srcs = [
        SweepSource(name, path, tok, (match or {}).get(name, name))
        for (name, path), tok in zip(sources.items(), tokens)
    ]
    natural = np.asarray(tokens, dtype=np.float64) / sum(tokens)
    block = run.trainer.max_steps * run.trainer.global_batch_size
    if block < 1:
        raise ConfigError("trainer.max_steps must be positive for a sweep's proxies")
    draws = draw_mixtures(natural, n, concentration, seed)
    proxies = []
    for k, w in enumerate(draws):
        q = block_quotas(list(w), block)
        run_dir = out / "runs" / f"proxy-{k:03d}"
        proxies.append(
            {
                "id": k,
                "run_dir": str(run_dir),
                "drawn": w.tolist(),
                "quotas": q.tolist(),
                "weights": (q / block).tolist(),
                "overrides": proxy_overrides(overrides, srcs, q, block, val, run_dir),
            }
        )
    sweep = {
        "method": "RegMix: Dirichlet(concentration x natural proportions)",
        "sources": [s.__dict__ for s in srcs],
        "val": val,
        "target": target,
        "n": n,
        "concentration": concentration,
        "seed": seed,
        "natural": natural.tolist(),
        "base_overrides": list(overrides),
        "samples_per_proxy": block,
        "seq_len": run.trainer.seq_len,
        "tokens_per_proxy": block * run.trainer.seq_len,
        "proxies": proxies,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps(sweep, indent=1))
    names = [s.name for s in srcs]
    with open(out / WEIGHTS_FILE, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["proxy", "run_dir", *names, *[f"drawn_{s}" for s in names]])
        for p in proxies:
            w.writerow([p["id"], p["run_dir"], *p["weights"], *p["drawn"]])
    return sweep


def load_sweep(sweep_dir: str | Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: {sweep_dir} is not a sweep (run `pretrain mixture sweep` first)"
        )
    return json.loads(path.read_text())


def final_eval(run_dir: str | Path) -> dict[str, float] | None:
    """The proxy's last logged validation losses {source: loss}, if it finished."""
    from pretrain.analysis.common import load_run

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    max_steps = load_run(run_dir).trainer.max_steps
    last: dict[str, float] = {}
    done = False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        losses = {
            k.split("/")[1]: float(v)
            for k, v in rec.items()
            if k.startswith("eval/") and k.endswith("/loss")
        }
        if losses:
            last = losses
            done = done or rec.get("step") == max_steps
    return last if done and last else None


def run_local(sweep: dict, log=print) -> list[int]:
    """Train the proxies one after another in this process; finished ones are skipped and an
    interrupted one resumes (resume=auto). Returns the ids trained now."""
    from pretrain.config import compose_config
    from pretrain.train import train

    ran = []
    bar = tqdm(sweep["proxies"], desc="proxies", unit="run", disable=None)
    for p in bar:
        if final_eval(p["run_dir"]) is not None:
            continue
        bar.set_postfix_str(f"proxy-{p['id']:03d}")
        run = compose_config([*p["overrides"], "resume=auto"])
        train(run, log=lambda *_: None)
        losses = final_eval(p["run_dir"]) or {}
        tqdm.write(
            f"proxy-{p['id']:03d} weights "
            + " ".join(f"{s['name']}={w:.3f}" for s, w in zip(sweep["sources"], p["weights"]))
            + " | "
            + " ".join(f"val {k} {v:.4f}" for k, v in losses.items())
        )
        ran.append(p["id"])
    return ran


def submit_array(sweep: dict, sweep_dir: Path, spec, max_parallel: int = 0) -> tuple[str, Path]:
    """Render the proxies as one Slurm job array with `pretrain launch`'s script and submit it."""
    from pretrain.launch import render_array, submit

    script = render_array(spec, [p["overrides"] for p in sweep["proxies"]], sweep_dir, max_parallel)
    path = Path(sweep_dir) / "array.sbatch"
    path.write_text(script)
    job = submit(script, Path(sweep_dir))
    return job, path


# ---------------------------------------------------------------------------------------------
# fit


def parse_bounds(items: list[str], names: list[str], default: float, flag: str) -> np.ndarray:
    """--min-weight 0.05 (every source) or NAME=0.05 (one source) -> one bound per source."""
    out = np.full(len(names), default, dtype=np.float64)
    for item in items:
        name, eq, value = item.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            raise ConfigError(f"{flag} {item!r}: write {flag} W or {flag} NAME=W") from None
        if not 0 <= v <= 1:
            raise ConfigError(f"{flag} {item!r}: a weight is in [0, 1]")
        if not eq:
            out[:] = v
        elif name in names:
            out[names.index(name)] = v
        else:
            raise ConfigError(f"{flag} {item!r}: no source {name!r}; sources: {', '.join(names)}")
    return out


def make_model(kind: str, n_samples: int, seed: int):
    if kind == "linear":
        # RegMix's linear regression on the weights (scikit-learn: the standard, well-kept one)
        from sklearn.linear_model import LinearRegression

        return LinearRegression()
    # LightGBM, as RegMix: gradient-boosted trees capture the interactions between domains that
    # a linear model cannot. min_child_samples is LightGBM's 20 by default, which on a small
    # swarm allows no split at all (a constant model): a fifth of the proxies, at least 2.
    from lightgbm import LGBMRegressor

    return LGBMRegressor(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=max(2, min(20, n_samples // 5)),
        min_data_in_bin=1,
        subsample=1.0,
        random_state=seed,
        n_jobs=1,  # deterministic, and the swarm is small
        verbose=-1,
    )


MODELS = ("linear", "lightgbm")


def cv_predictions(kind: str, X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold predictions: leave-one-out up to 50 proxies, 10-fold beyond."""
    from sklearn.model_selection import KFold, LeaveOneOut, cross_val_predict

    cv = LeaveOneOut() if len(y) <= 50 else KFold(10, shuffle=True, random_state=seed)
    return cross_val_predict(make_model(kind, len(y) - 1, seed), X, y, cv=cv)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant prediction ranks nothing
        return float("nan")
    return float(spearmanr(a, b).statistic)


def feasible(
    cands: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    source_tokens: np.ndarray,
    tokens: int,
    max_epochs: float,
) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of the candidates within the bounds and the token budget (weight x tokens <=
    max_epochs x the source's tokens), and how many each constraint removed."""
    budget = np.minimum(hi, max_epochs * source_tokens / tokens) if max_epochs > 0 else hi
    low = (cands < lo).any(1)
    high = (cands > hi).any(1)
    over = (cands > budget).any(1) & ~high
    return ~(low | high | over), {
        "below --min-weight": int(low.sum()),
        "above --max-weight": int(high.sum()),
        "over the --max-epochs budget": int(over.sum()),
    }


def optimum(model, cands: np.ndarray, top_k: int) -> tuple[np.ndarray, float]:
    """RegMix's choice: the mean of the top_k candidates by predicted loss (a mean of feasible
    points is feasible: every constraint is a box). Returns it and its predicted loss."""
    pred = model.predict(cands)
    top = np.argsort(pred, kind="stable")[:top_k]
    w = cands[top].mean(0)
    return w, float(model.predict(w[None])[0])


@dataclass
class FitResult:
    names: list[str]
    X: np.ndarray
    y: np.ndarray
    proxies: list[int]
    cv: dict[str, np.ndarray]
    spearman: dict[str, float]
    model: str
    weights: np.ndarray
    predicted: float
    lo_ci: np.ndarray
    hi_ci: np.ndarray
    n_feasible: int
    sensitivity: list[dict]


def fit_sweep(
    sweep: dict,
    target: list[str],
    lo: np.ndarray,
    hi: np.ndarray,
    max_epochs: float,
    tokens: int,
    model: str = "auto",
    n_candidates: int = 100_000,
    top_k: int = 100,
    n_boot: int = 200,
    seed: int = 0,
) -> FitResult:
    names = [s["name"] for s in sweep["sources"]]
    missing = [t for t in target if t not in sweep["val"]]
    if missing:
        raise ConfigError(
            f"--target {missing[0]!r} is not a validation source of the sweep; it has "
            f"{', '.join(sweep['val'])}"
        )
    rows, ys, ids, absent = [], [], [], []
    for p in sweep["proxies"]:
        ev = final_eval(p["run_dir"])
        if ev is None or any(t not in ev for t in target):
            absent.append(p["id"])
            continue
        rows.append(p["weights"])
        ys.append(float(np.mean([ev[t] for t in target])))  # several targets: their mean loss
        ids.append(p["id"])
    if absent:
        print(
            f"pretrain mixture fit: {len(absent)} of {len(sweep['proxies'])} proxies have no final "
            f"validation loss yet (e.g. proxy-{absent[0]:03d}); fitting the {len(ids)} finished",
            file=sys.stderr,
        )
    if len(ids) < 4:
        raise ConfigError(
            f"only {len(ids)} proxies have finished; a fit needs at least 4 (run the sweep first)"
        )
    X, y = np.asarray(rows), np.asarray(ys)
    cv = {k: cv_predictions(k, X, y, seed) for k in MODELS}
    rho = {k: spearman(cv[k], y) for k in MODELS}
    if model == "auto":  # the regression whose out-of-fold ranking of the proxies is best
        model = max(MODELS, key=lambda k: -math.inf if math.isnan(rho[k]) else rho[k])
    elif model not in MODELS:
        raise ConfigError(f"--model={model!r}: choose auto, {', '.join(MODELS)}")
    natural = np.asarray(sweep["natural"])
    rng = np.random.default_rng([seed, 0x6F7074])
    cands = rng.dirichlet(sweep["concentration"] * natural, size=n_candidates)
    src_tokens = np.asarray([s["tokens"] for s in sweep["sources"]], dtype=np.float64)
    ok, removed = feasible(cands, lo, hi, src_tokens, tokens, max_epochs)
    if not ok.any():
        worst = max(removed, key=removed.get)
        raise ConfigError(
            f"no candidate mixture of {n_candidates} meets the constraints (most fail as "
            f"{worst}: {removed[worst]}); loosen --min-weight/--max-weight, raise --max-epochs or "
            "lower --tokens"
        )
    cands = cands[ok]
    k = max(1, min(top_k, len(cands)))
    reg = make_model(model, len(y), seed).fit(X, y)
    w, pred = optimum(reg, cands, k)
    boots = []
    boot_rng = np.random.default_rng([seed, 0x626F6F])
    for _ in tqdm(range(n_boot), desc="bootstrap", unit="fit", disable=None, leave=False):
        idx = boot_rng.integers(0, len(y), len(y))
        boots.append(optimum(make_model(model, len(y), seed).fit(X[idx], y[idx]), cands, k)[0])
    boots = np.asarray(boots) if boots else w[None]
    sens = []
    for i, name in enumerate(names):  # one source's weight moved, the others keep their ratios
        for g in np.linspace(0, 1, 21):
            rest = np.delete(w, i)
            rest = rest / rest.sum() * (1 - g) if rest.sum() > 0 else rest
            v = np.insert(rest, i, g)
            sens.append(
                {"source": name, "weight": float(g), "predicted": float(reg.predict(v[None])[0])}
            )
    return FitResult(
        names=names,
        X=X,
        y=y,
        proxies=ids,
        cv=cv,
        spearman=rho,
        model=model,
        weights=w,
        predicted=pred,
        lo_ci=np.percentile(boots, 2.5, axis=0),
        hi_ci=np.percentile(boots, 97.5, axis=0),
        n_feasible=int(ok.sum()),
        sensitivity=sens,
    )


def plot_fit(res: FitResult, target: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from pretrain.analysis.common import save_figure

    fig, axes = plt.subplots(1, len(MODELS), figsize=(5 * len(MODELS), 4.5))
    lo, hi = (
        min(res.y.min(), *(p.min() for p in res.cv.values())),
        max(res.y.max(), *(p.max() for p in res.cv.values())),
    )
    for ax, kind in zip(axes, MODELS):
        ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
        ax.scatter(res.y, res.cv[kind], s=18)
        chosen = " (chosen)" if kind == res.model else ""
        ax.set_title(f"{kind}{chosen}: out-of-fold Spearman {res.spearman[kind]:.3f}")
        ax.set_xlabel(f"observed loss on {'+'.join(target)}")
        ax.set_ylabel("predicted (model fitted without this proxy)")
    return save_figure(fig, path)


def plot_sensitivity(res: FitResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from pretrain.analysis.common import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, name in enumerate(res.names):
        pts = [(r["weight"], r["predicted"]) for r in res.sensitivity if r["source"] == name]
        (line,) = ax.plot(*zip(*pts), "-", label=name)
        ax.axvline(res.weights[i], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("weight of the source (the others keep the optimum's ratios)")
    ax.set_ylabel(f"predicted target loss ({res.model})")
    ax.set_title("weight sensitivity around the fitted optimum (dotted: optimum)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def chosen_weights(weights: np.ndarray, min_share: float) -> np.ndarray:
    """The optimum as a mixture to train: shares under min_share become 0 (the source is left
    out; a weight of 4e-5 would get no sample of a block anyway, and training refuses that), the
    rest renormalised to sum to 1, rounded to 6 digits."""
    w = np.where(weights < min_share, 0.0, weights)
    w = w / w.sum()
    return np.round(w, 6)


def mixture_yaml(sweep: dict, res: FitResult, target: list[str], tokens: int, fit: dict) -> str:
    """The config fragment: `data:` for `pretrain train mixture=FILE`, `mixer:` for
    `pretrain data mixture=FILE` (mixer weights are shares of mixer.total_tokens; a source left
    out gets rate 0, since a mixer source with weight 0 would fall back to its rate of 1)."""
    from omegaconf import OmegaConf

    w = [float(x) for x in fit["mixture"].values()]
    keep = [i for i, x in enumerate(w) if x > 0]
    srcs = sweep["sources"]
    body = {
        "data": {"paths": [srcs[i]["path"] for i in keep], "weights": [w[i] for i in keep]},
        "mixer": {
            "total_tokens": int(tokens),
            "sources": [
                {"name": s["name"], "match": s["match"], "weight": x}
                if x > 0
                else {"name": s["name"], "match": s["match"], "weight": 0.0, "rate": 0.0}
                for s, x in zip(srcs, w)
            ],
        },
    }
    head = (
        f"# Data mixture chosen by `pretrain mixture fit` over the sweep {fit['sweep']}\n"
        f"# target {'+'.join(target)}; {fit['model']} regression, out-of-fold Spearman "
        f"{fit['spearman'][fit['model']]:.3f} over {len(res.y)} proxies; predicted target loss "
        f"{res.predicted:.4f}\n"
        "#   pretrain train mixture=THIS_FILE ...   (reads data.paths and data.weights)\n"
        "#   pretrain data mixture=THIS_FILE ...    (reads mixer.sources and mixer.total_tokens)\n"
    )
    return head + OmegaConf.to_yaml(OmegaConf.create(body))


def write_fit(
    sweep: dict, sweep_dir: Path, res: FitResult, target, tokens, constraints, out, min_share=1e-3
):
    out.mkdir(parents=True, exist_ok=True)
    names = res.names
    fit = {
        "sweep": str(Path(sweep_dir).resolve()),
        "target": target,
        "proxies": res.proxies,
        "observed": res.y.tolist(),
        "median_proxy_loss": float(np.median(res.y)),
        "best_proxy_loss": float(res.y.min()),
        "spearman": res.spearman,
        "cv": "leave-one-out" if len(res.y) <= 50 else "10-fold",
        "model": res.model,
        "weights": dict(zip(names, res.weights.tolist())),
        "interval_95": {n: [float(a), float(b)] for n, a, b in zip(names, res.lo_ci, res.hi_ci)},
        "mixture": dict(zip(names, chosen_weights(res.weights, min_share).tolist())),
        "min_share": min_share,
        "predicted_loss": res.predicted,
        "feasible_candidates": res.n_feasible,
        "tokens": int(tokens),
        "constraints": constraints,
    }
    (out / "fit.json").write_text(json.dumps(fit, indent=1))
    with open(out / "fit.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["proxy", *names, "observed", *[f"cv_{k}" for k in MODELS]])
        for i, pid in enumerate(res.proxies):
            wr.writerow([pid, *res.X[i], res.y[i], *[res.cv[k][i] for k in MODELS]])
    with open(out / "sensitivity.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["source", "weight", "predicted"])
        wr.writeheader()
        wr.writerows(res.sensitivity)
    plot_fit(res, target, out / "fit.png")
    plot_sensitivity(res, out / "sensitivity.png")
    (out / MIXTURE_FILE).write_text(mixture_yaml(sweep, res, target, tokens, fit))
    return fit


# ---------------------------------------------------------------------------------------------
# command line


def _sweep_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pretrain mixture sweep",
        description="Draw N mixtures of the sources around their natural token proportions "
        "(Dirichlet, alpha = concentration x proportions, as RegMix), write one proxy run config "
        "per mixture (the base config's model, tokens, LR schedule and seed) and train them: "
        "--local one after another in this process, --slurm as one job array "
        "(slurm/train.sbatch, requeue included). Overrides are `pretrain train`'s (recipe=, "
        "model=, trainer.max_steps=, ...).",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the proxies' base config")
    ap.add_argument("--source", action="append", default=[], help="NAME=DIR token data (repeat)")
    ap.add_argument("--val", action="append", default=[], help="NAME=DIR held-out data (repeat)")
    ap.add_argument(
        "--match",
        action="append",
        default=[],
        help="NAME=GLOB: the documents' `source` the pipeline's mixer matches for NAME "
        "(default: NAME)",
    )
    ap.add_argument("--target", default="", help="validation source(s) to fit later, a,b")
    ap.add_argument("--n", type=int, default=64, help="proxies (RegMix: 512)")
    ap.add_argument("--concentration", type=float, default=1.0, help="Dirichlet scale of p")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws")
    ap.add_argument("--out", help="the sweep folder")
    ap.add_argument("--resume", metavar="SWEEP", help="run (the rest of) a planned sweep")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="train the proxies here, in turn")
    mode.add_argument("--slurm", action="store_true", help="submit them as one Slurm job array")
    ap.add_argument("--plan-only", action="store_true", help="write the draws and configs only")
    sl = ap.add_argument_group("Slurm (as `pretrain launch`), per proxy")
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument("--gpus-per-node", type=int, default=0)
    sl.add_argument("--procs-per-node", type=int, default=0)
    sl.add_argument("--partition", default="")
    sl.add_argument("--time", default="01:00:00")
    sl.add_argument("--account", default="")
    sl.add_argument("--signal-seconds", type=int, default=300)
    sl.add_argument("--max-parallel", type=int, default=0, help="array throttle (%%K)")
    sl.add_argument("--sbatch", dest="extra_sbatch", action="append", default=[])
    sl.add_argument("--dry-run", action="store_true", help="print the array script, submit nothing")
    return ap


def cmd_sweep(argv: list[str]) -> int:
    from pretrain.launch import LaunchSpec

    args = _sweep_parser().parse_intermixed_args(argv)
    if args.resume:
        sweep_dir = Path(args.resume)
        sweep = load_sweep(sweep_dir)
    else:
        if not args.out:
            raise ConfigError("give --out SWEEP (the sweep folder), or --resume SWEEP")
        if not (args.local or args.slurm or args.plan_only or args.dry_run):
            raise ConfigError("choose --local, --slurm or --plan-only")
        sweep_dir = Path(args.out)
        sweep = plan_sweep(
            args.overrides,
            parse_named(args.source, "--source"),
            parse_named(args.val, "--val"),
            [t for t in args.target.split(",") if t],
            args.n,
            args.concentration,
            args.seed,
            sweep_dir,
            parse_named(args.match, "--match"),
        )
        nat = " ".join(f"{s['name']}={p:.3f}" for s, p in zip(sweep["sources"], sweep["natural"]))
        print(
            f"planned {sweep['n']} proxies in {sweep_dir} (natural proportions {nat}; "
            f"{sweep['tokens_per_proxy']:,} tokens each); draws: {sweep_dir / WEIGHTS_FILE}"
        )
    if args.local:
        ran = run_local(sweep)
        print(f"trained {len(ran)} proxies; fit: pretrain mixture fit --sweep {sweep_dir}")
    elif args.slurm or args.dry_run:
        spec = LaunchSpec(
            overrides=[],
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            procs_per_node=args.procs_per_node or (0 if args.gpus_per_node else 1),
            partition=args.partition,
            time=args.time,
            account=args.account,
            job_name=f"mixture-{Path(sweep_dir).name}",
            signal_seconds=args.signal_seconds,
            extra_sbatch=args.extra_sbatch,
        )
        if args.dry_run:
            from pretrain.launch import render_array

            print(render_array(spec, [p["overrides"] for p in sweep["proxies"]], sweep_dir))
            return 0
        job, path = submit_array(sweep, sweep_dir, spec, args.max_parallel)
        print(f"submitted job array {job} ({len(sweep['proxies'])} proxies): {path}")
        print(f"logs: {Path(sweep_dir).resolve() / 'logs'}/task-<K>-{job}.out")
        print(f"then: pretrain mixture fit --sweep {sweep_dir}")
    return 0


def cmd_fit(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pretrain mixture fit",
        description="Regress the proxies' final target validation loss on their weights (linear "
        "and LightGBM, as RegMix), report the out-of-fold Spearman rank correlation, search the "
        "best mixture under the constraints among Dirichlet candidates, bootstrap it, plot, and "
        "write mixture.yaml for `pretrain train mixture=FILE` and `pretrain data mixture=FILE`.",
    )
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--target", default="", help="validation source(s), a,b (default: sweep's)")
    ap.add_argument("--min-weight", action="append", default=[], help="W or NAME=W (repeat)")
    ap.add_argument("--max-weight", action="append", default=[], help="W or NAME=W (repeat)")
    ap.add_argument(
        "--max-epochs",
        type=float,
        default=4.0,
        help="no source repeated more than this over --tokens (0: no budget); default 4",
    )
    ap.add_argument(
        "--tokens", type=float, default=0, help="tokens of the run to mix for (default: a proxy's)"
    )
    ap.add_argument("--model", default="auto", help="auto (best Spearman), linear, lightgbm")
    ap.add_argument("--candidates", type=int, default=100_000)
    ap.add_argument("--top-k", type=int, default=100, help="candidates averaged (RegMix: 100)")
    ap.add_argument("--bootstrap", type=int, default=200, help="refits for the intervals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--min-share",
        type=float,
        default=1e-3,
        help="in mixture.yaml, sources with a smaller weight are left out (default 0.001)",
    )
    ap.add_argument("--out", help="default: SWEEP/fit")
    args = ap.parse_args(argv)
    sweep = load_sweep(args.sweep)
    target = [t for t in args.target.split(",") if t] or sweep["target"]
    if not target:
        raise ConfigError("give --target SOURCE[,SOURCE...] (the sweep was planned without one)")
    names = [s["name"] for s in sweep["sources"]]
    lo = parse_bounds(args.min_weight, names, 0.0, "--min-weight")
    hi = parse_bounds(args.max_weight, names, 1.0, "--max-weight")
    if lo.sum() > 1 or (lo > hi).any():
        raise ConfigError("the minimum weights sum past 1 or exceed a maximum; loosen them")
    tokens = int(args.tokens) or int(sweep["tokens_per_proxy"])
    res = fit_sweep(
        sweep,
        target,
        lo,
        hi,
        args.max_epochs,
        tokens,
        args.model,
        args.candidates,
        args.top_k,
        args.bootstrap,
        args.seed,
    )
    out = Path(args.out) if args.out else Path(args.sweep) / "fit"
    constraints = {
        "min_weight": dict(zip(names, lo.tolist())),
        "max_weight": dict(zip(names, hi.tolist())),
        "max_epochs": args.max_epochs,
        "tokens": tokens,
    }
    fit = write_fit(sweep, Path(args.sweep), res, target, tokens, constraints, out, args.min_share)
    print(
        f"fit {len(res.y)} proxies on {'+'.join(target)}: out-of-fold Spearman "
        + ", ".join(f"{k} {v:.3f}" for k, v in res.spearman.items())
        + f" ({fit['cv']}); using {res.model}"
    )
    for n, w, a, b in zip(names, res.weights, res.lo_ci, res.hi_ci):
        print(f"  {n:<16} {w:.3f}  (95% bootstrap {a:.3f}-{b:.3f})")
    print(
        f"predicted target loss {res.predicted:.4f}; proxies: median {fit['median_proxy_loss']:.4f}"
        f", best {fit['best_proxy_loss']:.4f}; {res.n_feasible} feasible candidates"
    )
    print("mixture: " + " ".join(f"{n}={w:g}" for n, w in fit["mixture"].items()))
    print(
        f"mixture file: {out / MIXTURE_FILE}; plots: {out / 'fit.png'}, {out / 'sensitivity.png'}"
    )
    return 0


SUBCOMMANDS = {"sweep": cmd_sweep, "fit": cmd_fit}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return SUBCOMMANDS[argv[0]](argv[1:])
