from plugins.registry import MethodSpec

SPEC = MethodSpec(
    name="simclr",
    paper="Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020",
    domain="generic images (baseline row)",
    framework="Lightning (SimCLRTask)",
    default_data="scikit-learn digits (1,797 real 8x8 images, 10 classes)",
    run="plugins.methods.simclr.run:run",
    reproduce="plugins.methods.simclr.run:reproduce",
    demo_metric="knn_acc",
    options="plugins.methods.simclr.run:OPTIONS",
    engine=("devices", "strategy", "precision", "accumulate"),
)
