from plugins.registry import MethodSpec

SPEC = MethodSpec(
    name="glcnet",
    paper="Li et al., Global and Local Contrastive Self-Supervised Learning for Semantic Segmentation of HR Remote Sensing Images, IEEE TGRS 2022",
    domain="remote sensing, dense segmentation pretraining",
    framework="torchgeo (BaseTask, torchgeo fit --config)",
    default_data="spyndex Sentinel-2 10 m tile (real, 4x300x300, B02/B03/B04/B08)",
    run="torchgeo_ext.run:run",
    reproduce="torchgeo_ext.run:reproduce",
    demo_metric="final_loss",
    options="torchgeo_ext.options:OPTIONS",
    extra={"predict": "torchgeo_ext.predict:main", "export": "torchgeo_ext.export:main"},
)
