from plugins.registry import MethodSpec

SPEC = MethodSpec(
    name="dcc",
    paper=(
        "Lee et al., Dataset Condensation with Contrastive Signals, ICML 2022 "
        "(+ DC, Zhao et al., ICLR 2021; DSA, Zhao & Bilen, ICML 2021)"
    ),
    domain="generic images (dataset condensation)",
    framework="plain torch (torch.func for the N-model evaluation and the NTK diagnostic)",
    default_data="scikit-learn digits (1,797 real 8x8 images, 10 classes)",
    run="plugins.methods.dcc.run:run",
    reproduce="plugins.methods.dcc.run:reproduce",
    demo_metric="acc_mean",
    options="plugins.methods.dcc.run:OPTIONS",
    engine=("precision",),
)
