"""DCC: dataset condensation by gradient matching with contrastive signals (Lee, Chun et al.,
ICML 2022), with DC (Zhao et al., ICLR 2021) as its baseline.

Files: ``config.py`` (hyperparameters), ``model.py`` (ConvNet), ``dsa.py`` (differentiable siamese augmentation), ``data.py``
(synthetic sets), ``match.py`` (gradient matching), ``evaluate.py`` (training on the synthetic set),
``condensation.py`` (the bi-level loop), ``run.py`` (command functions), ``spec.py`` (registry).
Names are imported lazily, so that the registry's ``spec`` does not import torch.
"""

from plugins.lazy import lazy_exports

_EXPORTS = {
    "ConvNet": "plugins.methods.dcc.model",
    "DSAConfig": "plugins.methods.dcc.dsa",
    "DSAParams": "plugins.methods.dcc.dsa",
    "OPS": "plugins.methods.dcc.dsa",
    "sample_dsa": "plugins.methods.dcc.dsa",
    "apply_dsa": "plugins.methods.dcc.dsa",
    "SyntheticSet": "plugins.methods.dcc.data",
    "channel_stats": "plugins.methods.dcc.data",
    "group_by_class": "plugins.methods.dcc.data",
    "IPC_LOOPS": "plugins.methods.dcc.match",
    "gradient_match_distance": "plugins.methods.dcc.match",
    "loops_for_ipc": "plugins.methods.dcc.match",
    "use_contrastive": "plugins.methods.dcc.match",
    "real_class_mean_gradient": "plugins.methods.dcc.match",
    "real_class_mean_gradient_loop": "plugins.methods.dcc.match",
    "dc_matching_loss": "plugins.methods.dcc.match",
    "dcc_matching_loss": "plugins.methods.dcc.match",
    "EvalConfig": "plugins.methods.dcc.evaluate",
    "evaluate_synthetic": "plugins.methods.dcc.evaluate",
    "empirical_ntk": "plugins.methods.dcc.evaluate",
    "kernel_distance": "plugins.methods.dcc.evaluate",
    "kernel_velocity": "plugins.methods.dcc.evaluate",
    "DCCConfig": "plugins.methods.dcc.config",
    "condense": "plugins.methods.dcc.condensation",
    "save_grids": "plugins.methods.dcc.run",
    "PAPER_CIFAR10": "plugins.methods.dcc.run",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
