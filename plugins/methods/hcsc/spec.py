from plugins.registry import MethodSpec

SPEC = MethodSpec(
    name="hcsc",
    paper="Guo et al., HCSC: Hierarchical Contrastive Selective Coding, CVPR 2022",
    domain="generic images",
    framework="Lightning (HCSCTask)",
    default_data="scikit-learn digits (1,797 real 8x8 images, upsampled to 16x16, 10 classes)",
    run="plugins.methods.hcsc.run:run",
    reproduce="plugins.methods.hcsc.run:reproduce",
    demo_metric="knn_acc",
    options="plugins.methods.hcsc.run:OPTIONS",
    engine=("devices", "strategy", "precision", "accumulate"),
)
