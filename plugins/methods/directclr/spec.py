from plugins.registry import MethodSpec

SPEC = MethodSpec(
    name="directclr",
    paper="Jing, Vincent, LeCun, Tian, Understanding Dimensional Collapse in Contrastive Self-supervised Learning, ICLR 2022",
    domain="generic images; collapse monitoring for every method",
    framework="plain torch / Lightning (plugins.monitoring.CollapseMonitor)",
    default_data="scikit-learn digits (1,797 real 8x8 images, 10 classes)",
    run="plugins.methods.directclr.run:run",
    reproduce="plugins.methods.directclr.run:reproduce",
    demo_metric="knn_acc",
    options="plugins.methods.directclr.run:OPTIONS",
)
