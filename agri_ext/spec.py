from plugins.registry import MethodSpec

SPEC = MethodSpec(
    name="claws",
    paper=(
        "Herrera-Gerena et al., CLAWS: Contrastive Learning with hard Attention and Weak "
        "Supervision, 2021"
    ),
    domain="agriculture, crop images (unsupervised clustering)",
    framework="Lightning (CLAWSTask)",
    default_data="scikit-learn digits (real 8x8, 10 classes) with an Otsu foreground mask",
    run="agri_ext.run:run",
    reproduce="agri_ext.run:reproduce",
    demo_metric="gmm_nmi",
    options="agri_ext.run:OPTIONS",
    engine=("devices", "strategy", "precision", "accumulate"),
)
