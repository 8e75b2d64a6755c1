"""DirectCLR (Jing, Vincent, LeCun, Tian, "Understanding Dimensional Collapse in Contrastive
Self-supervised Learning", ICLR 2022): InfoNCE on the first d0 representation dimensions, no
projector; the toy collapse experiments.

Files: ``config.py`` (hyperparameters), ``model.py`` (config, loss, model), ``train.py`` (the loop and its augmentation), ``toy.py`` (the
paper's linear toy models), ``task.py`` (the Lightning task), ``run.py`` (command functions), ``spec.py`` (registry).
Names are imported lazily, so that the registry's ``spec`` does not import torch.
"""

from plugins.lazy import lazy_exports

_EXPORTS = {
    "DirectCLRTask": "plugins.methods.directclr.task",
    "MODES": "plugins.methods.directclr.model",
    "DirectCLRConfig": "plugins.methods.directclr.config",
    "DirectCLR": "plugins.methods.directclr.model",
    "directclr_loss": "plugins.methods.directclr.model",
    "default_d0": "plugins.methods.directclr.model",
    "zero_init_residual": "plugins.methods.directclr.model",
    "LARS": "plugins.methods.directclr.train",
    "lr_at": "plugins.methods.directclr.train",
    "solarize": "plugins.methods.directclr.train",
    "AsymmetricAugment": "plugins.methods.directclr.train",
    "TrainResult": "plugins.methods.directclr.train",
    "train_directclr": "plugins.methods.directclr.train",
    "ToyConfig": "plugins.methods.directclr.toy",
    "ToyResult": "plugins.methods.directclr.toy",
    "euclidean_info_nce": "plugins.methods.directclr.toy",
    "train_linear_toy": "plugins.methods.directclr.toy",
    "strong_augmentation_toy": "plugins.methods.directclr.toy",
    "implicit_regularization_toy": "plugins.methods.directclr.toy",
    "alignment_matrix": "plugins.methods.directclr.toy",
    "alignment_diagonality": "plugins.methods.directclr.toy",
    "run_mode": "plugins.methods.directclr.run",
    "run_toys": "plugins.methods.directclr.run",
    "PAPER_CONTEXT": "plugins.methods.directclr.run",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
