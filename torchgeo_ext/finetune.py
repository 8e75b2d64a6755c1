"""Fine-tuning route that keeps GLCNet's decoder: a torchgeo ``SemanticSegmentationTask`` that
loads encoder + ASPP/decoder weights from a GLCNet checkpoint (``pretrained=path``)."""

from __future__ import annotations

from typing import Any

from torchgeo.trainers import SemanticSegmentationTask

from torchgeo_ext.export import load_pretrained


class GLCNetSegmentationTask(SemanticSegmentationTask):
    """``SemanticSegmentationTask`` (model ``deeplabv3+``) initialised from a GLCNet checkpoint.

    Args:
        pretrained: GLCNetTask checkpoint (or exported one); ``None`` = plain torchgeo behaviour.
        load_decoder: also load the DeepLabv3+ decoder (ASPP, low-level block, fusion), which
            GLCNet's local branch pretrains; ``False`` loads the encoder only.
        **kwargs: everything :class:`torchgeo.trainers.SemanticSegmentationTask` takes.
    """

    def __init__(
        self, pretrained: str | None = None, load_decoder: bool = True, **kwargs: Any
    ) -> None:
        self.pretrained = pretrained
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        if self.pretrained:
            load_pretrained(self.model, self.pretrained, decoder=self.hparams["load_decoder"])
