"""Real data: embedded defaults from pip packages and loaders for the formats users have.

* :func:`load_digits` - scikit-learn's 1,797 real 8x8 handwritten digits (embedded default).
* :func:`load_cifar10` - CIFAR-10 python pickle batches (reads whichever batches exist).
* :func:`load_image_folder` - class-per-folder images.
* :func:`load_train_test` - train/test sets of a named data set, array file or folder.
* :func:`shared_data_dir` / :func:`shared_path` - the larger real data sets beside the repo.
"""

from __future__ import annotations

from plugins.data.augment import TwoViewAugment, random_resized_crop_params
from plugins.data.loaders import (
    ImageTensorDataset,
    check_finite,
    load_cifar10,
    load_digits,
    load_image_folder,
    load_train_test,
    shared_data_dir,
    shared_path,
    stratified_split,
)

__all__ = [
    "ImageTensorDataset",
    "TwoViewAugment",
    "check_finite",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_train_test",
    "random_resized_crop_params",
    "shared_data_dir",
    "shared_path",
    "stratified_split",
]
