"""The ``--set`` keys of ``run ariel``, ``run grace`` and ``reproduce ariel|grace`` (import-light).

Every hyperparameter is a field of :class:`graph_ext.config.ARIELConfig`, whose defaults are the
authors' Cora values. Fields the authors set per data set (:data:`graph_ext.config.PRESETS`, e.g.
CiteSeer's learning rate) are declared without a default: the run uses the preset of the graph it
loads unless the key is given, and ``--help`` shows both values. The remaining keys are the command's
own (which graph, the evaluation protocol, whether PyG may download).
"""

from __future__ import annotations

import dataclasses

from graph_ext.config import ACTIVATIONS, NAMED_GRAPHS, PRESETS, ARIELConfig
from plugins.options import Option, OptionSet, options_from_dataclass

__all__ = ["OPTIONS", "GRACE_OPTIONS", "PRESET_KEYS", "ATTACK_KEYS"]

# Fields whose default depends on the data set (the authors' per-data-set configuration).
PRESET_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ARIELConfig) if any(f.name in p for p in PRESETS.values())
)
# Fields of the adversarial view and the regulariser: GRACE (eps = lam = 0) does not read them.
ATTACK_KEYS = ("eps", "lam", "alpha", "beta", "feature_eps", "attack_steps", "edge_budget_ratio")

_HELP = {
    "hidden": "encoder output width h (the first GCN layer has 2h units)",
    "proj_hidden": "projector hidden width",
    "activation": "activation after every GCN layer",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
    "sample_size": "nodes of the subgraph sampled each epoch (none: the whole graph)",
    "drop_edge": "edge-dropping rates of the two views",
    "drop_feature": "feature-masking rates of the two views",
    "temperature": "temperature of the contrastive loss and the regulariser",
    "eps": "weight of the adversarial term (0: no attack)",
    "lam": "weight of the information regulariser",
    "alpha": "PGD edge step size",
    "beta": "PGD feature step size",
    "feature_eps": "L-infinity bound of the feature perturbation",
    "attack_steps": "PGD iterations T",
    "edge_budget_ratio": "edge flips allowed, as a fraction of the subgraph's edges",
    "normalize_features": "row-normalise node features (false: as the authors' published runs)",
    "directed": "keep edge direction: in/out-degree normalisation D_in^-1/2 (A+I) D_out^-1/2, "
    "the attack flips ordered pairs (false: symmetrise, as the papers)",
    "weighted": "use the edge weights as the GCN's edge_weight (false: every edge weighs 1, "
    "as the papers)",
}
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "hidden": (1, None),
    "proj_hidden": (1, None),
    "lr": (0, None),
    "weight_decay": (0, None),
    "sample_size": (2, None),
    "drop_edge": (0, 1),
    "drop_feature": (0, 1),
    "temperature": (1e-4, None),
    "eps": (0, None),
    "lam": (0, None),
    "alpha": (0, None),
    "beta": (0, None),
    "feature_eps": (0, None),
    "attack_steps": (1, None),
    "edge_budget_ratio": (0, 1),
}


def _show(value: object) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)


def _preset_doc(name: str) -> str:
    """``"0.0005 (citeseer: 0.001)"``: the Cora default and each data set's own value."""
    base = _show(getattr(ARIELConfig(), name))
    others = [
        f"{d}: {_show(p[name])}" for d, p in PRESETS.items() if name in p and _show(p[name]) != base
    ]
    return f"{base} ({', '.join(others)})" if others else base


def _config_options(exclude: tuple[str, ...]) -> list[Option]:
    keys = [k for k in PRESET_KEYS if k not in exclude]
    options = options_from_dataclass(
        ARIELConfig,
        help=_HELP,
        exclude=("epochs", *exclude),  # --epochs
        ranges=_RANGES,
        choices={"activation": ACTIVATIONS},
        defaults={k: None for k in keys},  # the loaded graph's preset decides
        default_docs={k: _preset_doc(k) for k in keys},
    )
    # a preset key is never "none": without --set it takes the data set's value
    return [
        dataclasses.replace(
            o, nullable=False, length=2 if o.name in ("drop_edge", "drop_feature") else o.length
        )
        if o.name in keys
        else o
        for o in options
    ]


_DOWNLOAD = Option(
    "download",
    "bool",
    False,
    "let PyG download a named data set that is on neither the shared folder nor the cache (network)",
)
_CLASSIFIER = Option(
    "classifier",
    "str",
    "ovr",
    "evaluation classifier: ovr = the authors' one-vs-rest liblinear grid search (exact), "
    "multinomial = a warm-started softmax path (about 10x faster, not the authors')",
    choices=("ovr", "multinomial"),
    demo_default="multinomial",
)
_EVAL_JOBS = Option(
    "eval_jobs", "int", 1, "evaluation splits run in parallel threads (same result)", low=1
)
_FEATURES = Option(
    "features",
    "str",
    None,
    "node features built from the graph instead of the data's: identity (one-hot node) or degree "
    "(one-hot of the number of neighbours, capped at 64)",
    choices=("identity", "degree"),
    default_doc="the data's features, else identity",
)
_SPLITS = Option(
    "splits", "int", 20, "random train/test splits of the node-classification evaluation", low=1
)


def _run_set(exclude: tuple[str, ...]) -> OptionSet:
    return OptionSet(
        Option(
            "dataset",
            "str",
            "art_philo_science",
            f"graph when --data is not given: {', '.join(NAMED_GRAPHS)}, a .pt file or a folder "
            "with <Name>/raw in PyG's layout",
        ),
        _config_options(exclude),
        _FEATURES,
        dataclasses.replace(_SPLITS, demo_default=5),
        Option(
            "train_ratio",
            "float",
            None,
            "fraction of nodes that train the evaluation's classifier",
            low=0,
            high=1,
            default_doc="0.1 on graphs of 200+ labelled nodes (the paper's), else 0.5",
        ),
        _CLASSIFIER,
        _EVAL_JOBS,
        _DOWNLOAD,
    )


def _reproduce_set() -> OptionSet:
    return OptionSet(
        Option(
            "datasets",
            "str",
            ["cora", "citeseer"],
            "graphs of the table (shared data; --data NAME,NAME,... is the same)",
            many=True,
            choices=NAMED_GRAPHS,
        ),
        Option(
            "variants",
            "str",
            ["ariel", "grace"],
            "rows per graph; -norm rows row-normalise the features",
            many=True,
            choices=("ariel", "grace", "ariel-norm", "grace-norm"),
        ),
        Option(
            "full_epochs",
            "bool",
            True,
            "the authors' epochs (300 Cora, 200 CiteSeer, 2000 Amazon, 1000 CS, 1500 Physics); "
            "false: a third to a tenth of them",
        ),
        # normalize_features is set by the variant; the named graphs are undirected, unweighted
        _config_options(("normalize_features", "directed", "weighted")),
        _SPLITS,
        Option(
            "train_ratio",
            "float",
            0.1,
            "fraction of nodes that train the evaluation's classifier (paper: 0.1)",
            low=0,
            high=1,
        ),
        _CLASSIFIER,
        _EVAL_JOBS,
        _DOWNLOAD,
    )


OPTIONS = {"run": _run_set(()), "reproduce": _reproduce_set()}
GRACE_OPTIONS = {"run": _run_set(ATTACK_KEYS), "reproduce": _reproduce_set()}
