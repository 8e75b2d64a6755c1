from plugins.registry import MethodSpec

MR_MULTIDOMAIN = MethodSpec(
    name="mr-multidomain",
    paper="Boutillon et al., Multi-task, multi-domain deep segmentation with shared representations and contrastive regularization for sparse pediatric datasets, MICCAI 2021",
    domain="MR segmentation (multi-domain)",
    framework="MONAI bundle",
    default_data="nilearn MNI152 2009a T1 + grey/white-matter maps",
    run="monai_ext.multidomain.run:run",
    reproduce="monai_ext.multidomain.run:reproduce",
    demo_metric="dice_mean",
    options="monai_ext.multidomain.run:OPTIONS",
)

SUPERCON = MethodSpec(
    name="supercon",
    paper="Chen, Zhuang, Chang, SuperCon: Supervised Contrastive Learning for Imbalanced Skin Lesion Classification, 2022",
    domain="dermoscopy classification (imbalanced)",
    framework="MONAI bundle",
    default_data="scikit-learn digits with one class made rare (imbalanced real images)",
    run="monai_ext.supercon.run:run",
    reproduce="monai_ext.supercon.run:reproduce",
    demo_metric="minority_f1_at_threshold",
    options="monai_ext.supercon.run:OPTIONS",
)
