"""ARIEL / GRACE hyperparameters, written once.

Every default below is the value of the authors' configuration for Cora (Feng et al., "Adversarial
Graph Contrastive Learning with Information Regularization", WWW 2022, and the configuration file of
their reference code); :data:`PRESETS` holds the per-data-set values of that file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from plugins.errors import UserInputError

ACTIVATIONS = ("relu", "prelu", "rrelu")

__all__ = ["ACTIVATIONS", "ARIELConfig", "PRESETS", "config_for", "NAMED_GRAPHS", "PYG_GRAPHS"]


@dataclass(frozen=True)
class ARIELConfig:
    """Hyperparameters of one ARIEL (or GRACE, with ``eps=0, lam=0``) training run.

    Attributes:
        hidden: h, the encoder's output width; the first GCN layer has 2h units (GRACE, Sec. 4).
        proj_hidden: p, the projector's hidden width (h -> p -> h).
        activation: ``"relu"``, ``"prelu"`` or ``"rrelu"`` (randomised leaky ReLU, Xu et al. 2015:
            random slopes in training, their mean at test time) after every GCN layer.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (1e-5 in the authors' configuration for every data set).
        epochs: training epochs (one sampled subgraph per epoch).
        sample_size: nodes of the induced subgraph sampled each epoch; ``None`` trains on the full
            graph (plain GRACE).
        drop_edge: (de1, de2) edge-dropping rates of the two stochastic views.
        drop_feature: (df1, df2) feature-column masking rates.
        temperature: t of the contrastive loss and of the information regulariser.
        eps: weight of the adversarial term L(z1, z_adv) (0 disables the attack: GRACE).
        lam: weight of the information regulariser (0 on Cora and CiteSeer in the authors' file).
        alpha: PGD edge step size (the step at iteration t is alpha / sqrt(t + 1)).
        beta: PGD feature step size (sign-gradient).
        feature_eps: L-infinity bound of the feature perturbation.
        attack_steps: T, PGD iterations.
        edge_budget_ratio: flips allowed, as a fraction of the subgraph's undirected edges.
        normalize_features: row-normalise features before training. Default ``False`` because the
            published numbers come from code whose ``NormalizeFeatures`` never ran (the paper implies
            it does); ``True`` gives the intended behaviour and is reported beside it.
        directed: keep the edges' direction: the GCN uses the in/out-degree normalisation
            ``D_in^-1/2 (A + I) D_out^-1/2`` and the attack flips ordered pairs
            (:mod:`graph_ext.adjacency`, :mod:`graph_ext.attack`). Default ``False``: the graph is
            symmetrised, as GRACE and ARIEL do (their graphs are undirected), and the run says so
            when the input had direction.
        weighted: use the edge weights as the GCN's ``edge_weight`` (entries of ``A`` and so of the
            degrees). Default ``False``: every edge weighs 1, as in the papers, and the run says so
            when the input had weights.
    """

    hidden: int = 128  # Cora: num_hidden 128
    proj_hidden: int = 128  # Cora: num_proj_hidden 128
    activation: str = "relu"  # Cora: relu
    lr: float = 5e-4  # Cora: learning_rate 5e-4
    weight_decay: float = 1e-5  # all data sets
    epochs: int = 300  # Cora: 300
    sample_size: int | None = 500  # ARIEL Sec. 5.1: subgraphs of 500 nodes
    drop_edge: tuple[float, float] = (0.2, 0.4)  # Cora: drop_edge_rate_1/2
    drop_feature: tuple[float, float] = (0.3, 0.4)  # Cora: drop_feature_rate_1/2
    temperature: float = 0.4  # Cora: tau 0.4
    eps: float = 0.5  # Cora: eps 0.5
    lam: float = 0.0  # Cora: lamb 0
    alpha: float = 200.0  # Cora: alpha 200
    beta: float = 0.01  # Cora: beta 0.01
    feature_eps: float = 0.04  # authors' feature bound
    attack_steps: int = 5  # T = 5 PGD steps
    edge_budget_ratio: float = 0.2  # 20% of the undirected edges
    normalize_features: bool = False  # see docstring: matches the published numbers
    directed: bool = False  # GRACE / ARIEL train on undirected graphs
    weighted: bool = False  # GRACE / ARIEL's GCN has no edge weights

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UserInputError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}."
            )
        for name in ("drop_edge", "drop_feature"):
            rates = getattr(self, name)
            if len(rates) != 2 or not all(0.0 <= r < 1.0 for r in rates):
                raise UserInputError(f"{name} must be two rates in [0, 1), got {rates!r}.")
        if self.sample_size is not None and self.sample_size < 2:
            raise UserInputError(
                f"sample_size must be at least 2 (or None), got {self.sample_size}."
            )
        if self.temperature <= 0:
            raise UserInputError(f"temperature must be positive, got {self.temperature}.")
        if self.epochs < 1:
            raise UserInputError(f"epochs must be at least 1, got {self.epochs}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_options(
        self, options: dict[str, Any], run_options: tuple[str, ...] = ()
    ) -> ARIELConfig:
        """Copy with ``--set key=value`` overrides.

        Keys in ``run_options`` (read by the caller, e.g. ``dataset``) are skipped; any other key
        that is not a field raises :class:`UserInputError`, so a typo never passes silently.
        """
        known = {f.name for f in fields(self)}
        updates = {}
        for key, value in options.items():
            if key in run_options:
                continue
            if key not in known:
                raise UserInputError(
                    f"unknown option --set {key}=...; choose from {', '.join(sorted(known | set(run_options)))}."
                )
            if key in ("drop_edge", "drop_feature"):
                value = tuple(float(v) for v in value)
            updates[key] = value
        return replace(self, **updates)


# Per-data-set values of the authors' configuration file (Cora is the dataclass default).
PRESETS: dict[str, dict[str, Any]] = {
    "cora": {},
    "citeseer": {
        "lr": 1e-3,
        "hidden": 256,
        "proj_hidden": 256,
        "activation": "prelu",
        "drop_edge": (0.2, 0.0),
        "drop_feature": (0.3, 0.2),
        "temperature": 0.9,
        "epochs": 200,
        "eps": 1.0,
        "alpha": 50.0,
        "beta": 0.01,
        "lam": 0.0,
    },
    # ARIEL Table 3 graphs: the reference code's node_cls/config.yaml (the same file version as the
    # Cora / CiteSeer values above: alpha 200 / 50, lamb 0 on both).
    "amazon-computers": {
        "lr": 0.01,
        "hidden": 128,
        "proj_hidden": 128,
        "activation": "rrelu",
        "drop_edge": (0.6, 0.3),
        "drop_feature": (0.2, 0.3),
        "temperature": 0.2,
        "epochs": 2000,
        "eps": 1.0,
        "alpha": 50.0,
        "beta": 0.01,
        "lam": 0.0,
    },
    "amazon-photo": {
        "lr": 0.1,
        "hidden": 256,
        "proj_hidden": 64,
        "activation": "relu",
        "drop_edge": (0.3, 0.5),
        "drop_feature": (0.1, 0.1),
        "temperature": 0.3,
        "epochs": 2000,
        "eps": 0.5,
        "alpha": 200.0,
        "beta": 0.01,
        "lam": 0.0,
    },
    "coauthor-cs": {
        "lr": 5e-4,
        "hidden": 256,
        "proj_hidden": 256,
        "activation": "rrelu",
        "drop_edge": (0.3, 0.2),
        "drop_feature": (0.3, 0.4),
        "temperature": 0.4,
        "epochs": 1000,
        "eps": 2.0,
        "alpha": 50.0,
        "beta": 0.001,
        "lam": 2.0,
    },
    "coauthor-physics": {
        "lr": 0.01,
        "hidden": 128,
        "proj_hidden": 64,
        "activation": "rrelu",
        "drop_edge": (0.4, 0.1),
        "drop_feature": (0.1, 0.4),
        "temperature": 0.5,
        "epochs": 1500,
        "eps": 1.0,
        "alpha": 50.0,
        "beta": 0.001,
        "lam": 0.0,
    },
}


def config_for(dataset: str | None, **overrides: Any) -> ARIELConfig:
    """The authors' configuration for ``dataset`` (Cora's for an unknown one) with ``overrides``."""
    preset = dict(PRESETS.get((dataset or "").lower(), {}))
    preset.update(overrides)
    return ARIELConfig(**preset)


# Named graphs ``load_graph`` knows (kept here, import-light, so that ``--help`` can list them).
# PyG data sets: key -> (torch_geometric.datasets class, PyG name); their raw files live in
# ``<root>/<PyG name>/raw``. Planetoid ones are ARIEL's Table 2; Amazon/Coauthor its Table 3.
PYG_GRAPHS: dict[str, tuple[str, str]] = {
    "cora": ("Planetoid", "Cora"),
    "citeseer": ("Planetoid", "CiteSeer"),
    "pubmed": ("Planetoid", "PubMed"),
    "amazon-computers": ("Amazon", "Computers"),
    "amazon-photo": ("Amazon", "Photo"),
    "coauthor-cs": ("Coauthor", "CS"),
    "coauthor-physics": ("Coauthor", "Physics"),
}
# Every name: the embedded default, PyG's built-in KarateClub (no download), the PyG data sets.
NAMED_GRAPHS: tuple[str, ...] = ("art_philo_science", "karate", *PYG_GRAPHS)
