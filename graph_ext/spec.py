"""Registry entries for ARIEL and its GRACE baseline (import-light: no torch / PyG import here)."""

from plugins.registry import MethodSpec

ARIEL = MethodSpec(
    name="ariel",
    paper="Feng, Jing, Zhu, Tong, Adversarial Graph Contrastive Learning with Information Regularization, WWW 2022",
    domain="graphs (node classification)",
    framework="PyTorch Geometric",
    default_data="scikit-network art_philo_science (30 real Wikipedia nodes, 11 word features, 3 classes)",
    run="graph_ext.run:run_ariel",
    reproduce="graph_ext.run:reproduce",
    demo_metric="acc_mean",
    options="graph_ext.options:OPTIONS",
    engine=("precision",),
    extra={"predict": "graph_ext.predict:main"},
)

GRACE = MethodSpec(
    name="grace",
    paper="Zhu, Xu, Yu, Liu, Wu, Wang, Deep Graph Contrastive Representation Learning (GRACE), 2020",
    domain="graphs (node classification, baseline row)",
    framework="PyTorch Geometric",
    default_data="scikit-network art_philo_science (30 real Wikipedia nodes, 11 word features, 3 classes)",
    run="graph_ext.run:run_grace",
    reproduce="graph_ext.run:reproduce",
    demo_metric="acc_mean",
    options="graph_ext.options:GRACE_OPTIONS",
    engine=("precision",),
    extra={"predict": "graph_ext.predict:main"},
)
