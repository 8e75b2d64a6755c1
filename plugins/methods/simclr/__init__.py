"""SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): the baseline row every other method is compared with.

Files: ``config.py`` (hyperparameters), ``model.py`` (encoder + projector + NT-Xent), ``train.py``
(the loop), ``task.py`` (the Lightning task), ``run.py`` (``contrastive-plugins run|reproduce simclr``), ``spec.py`` (registry).
Names are imported lazily, so that the registry's ``spec`` does not import torch.
"""

from plugins.lazy import lazy_exports

_EXPORTS = {
    "SimCLRTask": "plugins.methods.simclr.task",
    "SimCLRConfig": "plugins.methods.simclr.config",
    "SimCLR": "plugins.methods.simclr.model",
    "train_simclr": "plugins.methods.simclr.train",
    "TinyResNet": "plugins.backbones",
    "small_resnet": "plugins.backbones",
    "embed": "plugins.evaluation",
    "evaluate_representation": "plugins.evaluation",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
