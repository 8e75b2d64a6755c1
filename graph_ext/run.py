"""Command entry points: ``contrastive-plugins run ariel|grace`` and ``reproduce ariel``."""

from __future__ import annotations

import time
import warnings
from dataclasses import fields, replace
from typing import Any

import torch

from graph_ext.config import NAMED_GRAPHS, PRESETS, ARIELConfig, config_for
from graph_ext.data import describe_edges, load_graph, prepare_graph
from graph_ext.evaluate import evaluate_node_embeddings, split_indices
from graph_ext.model import ARIEL
from graph_ext.own_data import data_summary, structural_features, summary_lines
from graph_ext.train import TrainResult, embed_graph, train
from plugins.checkpoint import Checkpointer
from plugins.errors import UserInputError
from plugins.metrics import effective_rank, spectrum
from plugins.options import declared
from plugins.reporting import RunContext, RunDir

__all__ = ["run_ariel", "run_grace", "reproduce", "REPORTED", "REPORTED_SOURCE", "REPRO_EPOCHS"]

# ARIEL, Tables 2 and 3 / the reference repository's results (mean +- std accuracy in %, 20 random
# 10%/90% splits of one trained model: the std is the splits' spread, not the training seeds').
REPORTED = {
    "cora": (84.61, 0.92),
    "citeseer": (72.55, 0.80),
    "amazon-computers": (88.42, 0.47),
    "amazon-photo": (93.34, 0.29),
    "coauthor-cs": (92.60, 0.21),
    "coauthor-physics": (95.20, 0.07),
}
# Where each reported value is stored in the reference repository (github.com/Shengyu-Feng/ARIEL).
# Computers and Physics sit beside node_cls/config.yaml, the file our presets copy; Cora, CiteSeer,
# Photo and CS are in the older top-level results/ folder, whose config.yaml gives Photo and CS other
# attack settings (eps, alpha on another scale, lamb) than the presets.
REPORTED_SOURCE = {
    "cora": "Table 2; repository results/",
    "citeseer": "Table 2; repository results/",
    "amazon-computers": "repository node_cls/results/",
    "amazon-photo": "repository results/, older config",
    "coauthor-cs": "repository results/, older config",
    "coauthor-physics": "repository node_cls/results/",
}
# Reduced epochs for a quick reproduction (``--set full_epochs=false``): a third / a quarter of the
# authors' 300 (Cora) and 200 (CiteSeer), a tenth of theirs on the larger graphs. The default uses
# the authors' counts.
REPRO_EPOCHS = {
    "cora": 100,
    "citeseer": 50,
    "amazon-computers": 200,
    "amazon-photo": 200,
    "coauthor-cs": 100,
    "coauthor-physics": 150,
}
DEMO_EPOCHS = 40
MAP_NODES = 2000  # nodes of the t-SNE embedding map on larger graphs (a fixed random subset)


def _declare(ctx: RunContext, command: str) -> None:
    """Give a context built without an option set (a Python caller's) the method's declared set,
    so its ``options`` are checked and its defaults are the declared ones."""
    from graph_ext.options import GRACE_OPTIONS, OPTIONS

    declared(ctx, (GRACE_OPTIONS if ctx.method == "grace" else OPTIONS)[command], command)


def _config(
    ctx: RunContext, method: str, dataset: str, epochs: int | None, **fixed: Any
) -> ARIELConfig:
    """The authors' configuration for ``dataset`` (:func:`config_for`), then every declared field
    option: the user's ``--set`` value, else its declared default, else the data set's preset."""
    if method == "grace":  # GRACE = ARIEL without adversarial view and regulariser
        fixed.update(eps=0.0, lam=0.0)
    preset = config_for(dataset)
    values = {}
    for f in fields(ARIELConfig):
        if f.name == "epochs" or f.name in fixed or f.name not in ctx.option_set:
            continue
        value = ctx.option(f.name, getattr(preset, f.name))
        values[f.name] = tuple(value) if isinstance(value, list) else value
    cfg = replace(preset, **values, **fixed)
    return replace(cfg, epochs=epochs) if epochs else cfg


def _train_and_evaluate(
    method: str,
    raw: Any,
    name: str,
    cfg: ARIELConfig,
    ctx: RunContext,
    run_dir: RunDir,
    checkpointer: Checkpointer | None,
    embedding_map: bool = True,
    features: str | None = None,
) -> dict[str, float]:
    features_from = "data" if raw.x is not None else "identity"
    if features is not None:  # --set features=identity|degree: built from the graph
        raw = raw.clone()
        raw.x = structural_features(raw.edge_index, raw.num_nodes, features)
        features_from = features
    data = prepare_graph(raw, cfg.normalize_features, cfg.directed, cfg.weighted)
    weights = raw.edge_weight if "edge_weight" in raw else None
    edges = describe_edges(raw.edge_index, data.num_nodes, weights)  # what the input held
    n = data.x.shape[0]
    splits = ctx.option("splits")
    labelled = n if data.y is None else int((data.y >= 0).sum())
    if data.y is not None and labelled == 0:
        raise UserInputError(
            f"graph {name} has no labelled node (every label is negative); node classification "
            "needs labels in 0..C-1."
        )
    if labelled < n:
        warnings.warn(
            f"{n - labelled} of the {n} nodes of {name} have no label (negative y); they are "
            "embedded but left out of the evaluation.",
            stacklevel=2,
        )
    ratio = ctx.option("train_ratio", 0.1 if labelled >= 200 else 0.5)
    if data.y is not None and not 1 <= int(ratio * labelled) < labelled:
        raise UserInputError(
            f"--set train_ratio={ratio} leaves {int(ratio * labelled)} training and "
            f"{labelled - int(ratio * labelled)} test nodes of the {labelled} labelled nodes of "
            f"{name}; choose a ratio that keeps at least one of each."
        )
    if cfg.sample_size is not None and cfg.sample_size > n and "sample_size" in ctx.options:
        raise UserInputError(
            f"--set sample_size={cfg.sample_size} is larger than the graph {name} ({n} nodes); "
            f"choose at most {n}, or none to train on the whole graph."
        )
    if cfg.sample_size is not None and cfg.sample_size > n:
        warnings.warn(
            f"the graph has {n} nodes, fewer than sample_size={cfg.sample_size}; every epoch trains on the whole graph.",
            stacklevel=2,
        )
    classifier = ctx.option("classifier")
    split_ix = (
        []
        if data.y is None
        else [split_indices(labelled, ratio, ctx.seed + k, classifier) for k in range(splits)]
    )  # the evaluation's own splits (evaluate_node_embeddings draws the same)
    classes = list(getattr(raw, "class_names", None) or [])
    summary = data_summary(data, edges, classes, split_ix, features_from, cfg.directed)
    for line in summary_lines(summary):
        print(f"{method}: {line}", flush=True)
    run_dir.save_config(
        {
            "method": method,
            "data": name,
            "nodes": n,
            "features": int(data.x.shape[1]),
            "features_from": features_from,
            "edges": summary["edges"],  # undirected pairs, or ordered pairs when directed
            **cfg.to_dict(),  # includes the effective epochs
            "eval_splits": splits,
            "eval_train_ratio": ratio,
            "eval_classifier": classifier,
            "eval_jobs": ctx.option("eval_jobs"),
            "seed": ctx.seed,
            "device": ctx.device,
        }
    )
    torch.manual_seed(ctx.seed)
    untrained = ARIEL(data.x.shape[1], cfg).to(ctx.device)
    from plugins.engine_settings import autocast

    result: TrainResult = train(
        data, cfg, ctx.device, ctx.seed, ctx.progress, f"{method}:{name}", checkpointer,
        autocast=autocast(ctx),
    )  # fmt: skip
    data = data.to(ctx.device)
    tick = time.perf_counter()
    z = embed_graph(result.model, data).cpu()
    embed_seconds = time.perf_counter() - tick
    metrics: dict[str, float] = {
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / max(cfg.epochs, 1),
        "final_loss": result.history[-1]["loss"] if result.history else float("nan"),
        # epochs with identical projections for every node (dead units; StallWatch warns)
        "stalled_epochs": result.stalled_epochs,
        "embed_seconds": embed_seconds,
        "effective_rank": effective_rank(z),
    }
    if data.y is not None:
        scores = evaluate_node_embeddings(
            z,
            data.y,
            splits=splits,
            train_ratio=ratio,
            seed=ctx.seed,
            classifier=classifier,
            progress=ctx.progress,
            n_jobs=ctx.option("eval_jobs"),
        )
        metrics.update(
            acc_mean=scores["acc_mean"],
            acc_std=scores["acc_std"],
            eval_seconds=scores["seconds"],
            unlabelled_nodes=scores["unlabelled"],
        )
        run_dir.save_json(
            {
                "accs": scores["accs"],
                "c": scores["c"],
                "seeds": [ctx.seed + k for k in range(splits)],
            },
            "splits.json",
        )
    run_dir.save_checkpoint(
        {
            "method": method,
            "model": result.model.state_dict(),
            "config": cfg.to_dict(),
            "in_dim": data.x.shape[1],
            "data": name,
            "features": features_from,  # how predict rebuilds the input features
            "classes": classes,
        }
    )
    run_dir.save_metrics({**metrics, "data_summary": summary})
    y = data.y if embedding_map else None  # t-SNE of a full graph takes ~1 min on a busy CPU
    _plots(method, name, result, z, embed_graph(untrained, data).cpu(), y, run_dir)
    return metrics


def _plots(
    method: str,
    name: str,
    result: TrainResult,
    z: torch.Tensor,
    z0: torch.Tensor,
    y: Any,
    run_dir: RunDir,
) -> None:
    hist = result.history
    curves = {
        k: [h[k] for h in hist]
        for k in ("loss", "contrast", "adversarial")
        if hist and k in hist[0]
    }
    run_dir.plot_loss(curves, xlabel="epoch")
    run_dir.plot_spectrum({method: spectrum(z), "untrained": spectrum(z0)})
    if y is not None:
        keep = torch.nonzero(y.cpu() >= 0).flatten()  # labelled nodes
        title = f"{method.upper()} on {name}"
        if keep.numel() > MAP_NODES:  # t-SNE of 7,650+ points takes minutes on a busy CPU
            pick = torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(0))
            keep = keep[pick[:MAP_NODES]].sort().values
            title += f" ({MAP_NODES} random nodes)"
        run_dir.plot_embedding(z[keep], y.cpu()[keep], title=title)
    if hist and "edges_added" in hist[0]:
        from plugins.reporting import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key in ("edges_added", "edges_removed", "edge_budget"):
            ax.plot([h[key] for h in hist], label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("node pairs in the sampled subgraph")
        ax.set_title("adversarial view: discrete edge flips per epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        run_dir.save_figure(fig, "attack_flips.png")


def _load(ctx: RunContext, source: Any, what: str) -> tuple[Any, str]:
    return load_graph(source, download=ctx.option("download"), what=what)


def _run(ctx: RunContext, method: str) -> dict[str, float]:
    _declare(ctx, "run")
    if ctx.data is not None and "dataset" in ctx.options:
        raise UserInputError(
            f"--data {ctx.data} and --set dataset={ctx.options['dataset']} both name the graph; "
            "give one."
        )
    if ctx.data is not None:
        if "," in str(ctx.data):
            raise UserInputError(
                f"run {ctx.method} trains on one graph, but --data {ctx.data} names several; "
                f"use reproduce {ctx.method} --data {ctx.data} for a table."
            )
        raw, name = _load(ctx, ctx.data, "--data")
    else:
        raw, name = _load(ctx, ctx.option("dataset"), "--set dataset")
    epochs = ctx.epochs or (DEMO_EPOCHS if ctx.demo else None)
    cfg = _config(ctx, method, name, epochs)
    # graphs under 1,000 nodes: ops too small to split; thread hand-offs made the 30-node demo
    # several times slower on a shared CPU
    with ctx.cpu_threads(1 if raw.num_nodes < 1000 else None):
        return _train_and_evaluate(
            method,
            raw,
            name,
            cfg,
            ctx,
            ctx.run_dir,
            ctx.checkpointer(stages=("train",)),
            features=ctx.option("features"),
        )


def run_ariel(ctx: RunContext) -> dict[str, float]:
    """Train ARIEL on ``ctx.data`` (default: art_philo_science) and evaluate node classification.

    ``--set`` keys: :data:`graph_ext.options.OPTIONS` (``run ariel --help`` lists them).
    Checkpoints ``last.ckpt`` periodically; ``--resume`` continues from one.
    """
    return _run(ctx, "ariel")


def run_grace(ctx: RunContext) -> dict[str, float]:
    """Train the GRACE baseline the same way (ARIEL with ``eps = lam = 0``)."""
    return _run(ctx, "grace")


def _distance(ours: float, reported: tuple[float, float]) -> str:
    """``ours - reported`` in points and in reported standard deviations, e.g. ``+1.88 (4.0 std)``."""
    diff = ours - reported[0]
    return f"{diff:+.2f} ({diff / reported[1]:+.1f} std)"


def reproduce(ctx: RunContext) -> dict[str, float]:
    """ARIEL vs GRACE on Cora and CiteSeer, raw and row-normalised features, beside Table 2.

    Options (``reproduce ariel --help``): ``datasets`` (default ``cora,citeseer``), ``full_epochs``
    (default true: the authors' 300/200 epochs; false: :data:`REPRO_EPOCHS`), ``splits`` (20),
    ``train_ratio`` (0.1, the paper's), ``variants`` (from ``ariel, grace, ariel-norm, grace-norm``;
    default ``ariel,grace``: raw features, as the published numbers were made; the ``-norm`` rows
    row-normalise the features and cost as much again, so they are a second run), and the
    hyperparameters (each data set's preset unless given).
    """
    _declare(ctx, "reproduce")
    if ctx.data is not None and "datasets" in ctx.options:
        raise UserInputError(
            f"--data {ctx.data} and --set datasets={ctx.options['datasets']} both name the graphs; "
            "give one."
        )
    if ctx.data is not None:
        datasets = [d.strip().lower() for d in str(ctx.data).split(",") if d.strip()]
        unknown = [d for d in datasets if d not in NAMED_GRAPHS]
        if unknown or not datasets:
            raise UserInputError(
                f"reproduce {ctx.method} --data takes comma-separated graph names from "
                f"{', '.join(NAMED_GRAPHS)}; got {ctx.data}."
            )
    else:
        datasets = [str(d).lower() for d in ctx.option_list("datasets")]
    variants = [str(v) for v in ctx.option_list("variants")]
    full = ctx.option("full_epochs")
    what = "--data" if ctx.data is not None else "--set datasets"
    graphs = [_load(ctx, d, what) for d in datasets]  # all missing data before work
    rows: list[dict[str, Any]] = []
    out: dict[str, float] = {}
    epochs_of: dict[str, int] = {}  # effective epochs of each row, for config.yaml
    start = time.perf_counter()
    for raw, name in graphs:
        epochs = ctx.epochs or (None if full else REPRO_EPOCHS.get(name))
        for variant in variants:
            method, _, norm = variant.partition("-")
            cfg = _config(ctx, method, name, epochs, normalize_features=norm == "norm")
            epochs_of[f"{name}-{variant}"] = cfg.epochs
            ctx.run_dir.save_config({"epochs": dict(epochs_of)})
            sub = RunDir(path=ctx.run_dir.path / f"{name}-{variant}")
            every_steps, every_seconds = ctx.checkpoint_every
            checkpointer = Checkpointer(sub / "last.ckpt", ctx.method, every_steps, every_seconds)
            m = _train_and_evaluate(
                method, raw, name, cfg, ctx, sub, checkpointer, embedding_map=variant == "ariel"
            )
            paper = REPORTED.get(name) if variant == "ariel" else None
            rows.append(
                {
                    "data": name,
                    "method": method.upper(),
                    "features": "row-normalised" if norm else "raw (as authors' code)",
                    "epochs": f"{cfg.epochs} (paper {config_for(name).epochs if name in PRESETS else '-'})",
                    "accuracy (ours)": f"{m['acc_mean']:.2f} ± {m['acc_std']:.2f}",
                    "reported (ARIEL)": f"{paper[0]:.2f} ± {paper[1]:.2f} ({REPORTED_SOURCE[name]})"
                    if paper
                    else "",
                    "ours - reported": _distance(m["acc_mean"], paper) if paper else "",
                    "train s": f"{m['train_seconds']:.0f}",
                    "eval s": f"{m.get('eval_seconds', float('nan')):.0f}",
                }
            )
            out[f"{name}_{variant}_acc"] = m["acc_mean"]
            out[f"{name}_{variant}_std"] = m["acc_std"]
            ctx.run_dir.save_table(rows)  # keep partial results if interrupted
    out["total_seconds"] = time.perf_counter() - start
    ctx.run_dir.save_table(rows)
    ctx.run_dir.save_metrics(out)
    return out
