"""GLCNet (Li et al., IEEE TGRS 2022) as a torchgeo task, with its datamodules and tools.

Imports are lazy (module ``__getattr__``) so that importing ``torchgeo_ext.spec`` or this package
does not import torchgeo.
"""

from __future__ import annotations

from plugins.lazy import lazy_exports

_EXPORTS = {
    "GLCNetTask": "torchgeo_ext.task",
    "GLCNetModel": "torchgeo_ext.model",
    "style_vector": "torchgeo_ext.model",
    "glcnet_loss": "torchgeo_ext.loss",
    "GLCNetViews": "torchgeo_ext.sampling",
    "match_windows": "torchgeo_ext.sampling",
    "window_mean": "torchgeo_ext.sampling",
    "GLCNetConfig": "torchgeo_ext.config",
    "GLCNetSegmentationTask": "torchgeo_ext.finetune",
    "export_encoder": "torchgeo_ext.export",
    "load_pretrained": "torchgeo_ext.export",
    "RSSegDataModule": "torchgeo_ext.data",
    "PotsdamPatchDataModule": "torchgeo_ext.data",
    "GeoTiffDataModule": "torchgeo_ext.geotiff",
    "GeoTiffRaster": "torchgeo_ext.geotiff",
    "sliding_window_logits": "torchgeo_ext.evaluate",
    "evaluate_scenes": "torchgeo_ext.evaluate",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
