"""``contrastive-plugins run|reproduce supercon``.

``run``: both SuperCon stages in one command on the embedded default (scikit-learn digits with one
class made rare in the training split) or on ``--data PATH`` (ISIC CSV, the shared ISIC layout, or
class-per-folder images); writes config, metrics, checkpoint and plots. A validation split held out
from training (``--set val_fraction``, default 0.15) chooses the minority class's threshold; the
checkpoint keeps it (``threshold``) next to the weights.

``reproduce``: reduced reproduction of Chen et al. (2022) on the shared ISIC images: CE, weighted
CE, focal, symmetric SupCon and SuperCon on melanoma-vs-rest with melanoma subsampled to ~2% of the
training split and at its natural ~19%, over several seeds; optional 8-class task. Each seed also
holds out a validation split (natural ratio, like the test split) on which every method's melanoma
operating point is chosen (:func:`plugins.metrics.f1_optimal_threshold`); melanoma F1 is reported at
the argmax and at that threshold.

A user's table (issue 21): the positive class is ``--set positive`` (name or index), else a class
called melanoma, else the run stops and asks (no guess from class frequencies); byte-identical
files are resolved before splitting (:func:`monai_ext.supercon.data.find_duplicates`,
``--set duplicates``); the realised splits are printed, written to ``metrics.json`` (``data``) and
checked (``--set split_tolerance``); ``predictions.csv`` and per-group metrics are written; each
threshold records the positives behind it (``--set min_val_positives`` warns) and may come from
out-of-fold training scores instead (``--set threshold_from=cv``).

Both commands declare their ``--set`` keys in :data:`OPTIONS` (every SuperConConfig field except
``stage1_epochs``, which is ``--epochs``, plus the run keys below); ``run supercon --help`` lists
them. ``run`` writes ``last.ckpt`` periodically across both stages and resumes from it
(``--resume``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from monai_ext.supercon.config import SuperConConfig
from monai_ext.supercon.report import group_metrics, say, threshold_info, write_predictions
from plugins.errors import UserInputError
from plugins.options import Option, OptionSet, config_from_options, declared, options_from_dataclass
from plugins.progress import phase
from plugins.reporting import RunContext

METHODS = ("ce", "weighted_ce", "focal", "supcon_sym", "supercon")

# The paper's stage 2 (5 epochs, lr 5e-4) is ~1,300 SGD steps on ISIC 2020's 33k images; the reduced
# runs here have ~10 steps per epoch, so they train the linear classifier longer and faster.
REDUCED_STAGE2 = {"stage2_epochs": 60, "lr2": 0.05}
# ``run`` on the embedded digits (8x8 images, upsampled): a small encoder at a small side
EMBEDDED = {"arch": "micro", "image_size": 16}
# ``reproduce`` on the shared ISIC images, on CPU
REPRODUCE = {"arch": "micro", "image_size": 32, **REDUCED_STAGE2}
# stage-1 epochs (``--epochs``): a --demo run, the embedded default, reproduce; user data: the paper's
DEMO_EPOCHS, EMBEDDED_EPOCHS, REPRODUCE_EPOCHS = 3, 30, 8


def fit(
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: Any,
    epochs: int,
    device: torch.device | str,
    seed: int,
    balanced: bool = False,
    progress: bool = False,
    checkpointer: Any = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Train one of :data:`METHODS` from scratch; returns the network and its loss curves.

    ``checkpointer`` (:meth:`RunContext.checkpointer`): stages ``("stage 1", "stage 2")`` for the
    two-stage methods, one stage for the baselines; periodic ``last.ckpt`` and ``--resume``.
    """
    from monai_ext.supercon import train as T
    from monai_ext.supercon.model import SuperConNet
    from plugins.data import check_finite

    if method not in METHODS:
        raise UserInputError(f"method must be one of {METHODS}, got {method!r}.")
    if images.is_floating_point():
        check_finite(images, "the training image tensor")
    torch.manual_seed(seed)
    net = SuperConNet(num_classes, cfg.arch, images.shape[1], cfg.proj_dim).to(device)
    kw = dict(config=cfg, device=device, seed=seed, balanced=balanced, progress=progress)
    ck = checkpointer
    if method in ("supcon_sym", "supercon"):
        curves: dict[str, list[float]] = {}
        curves["stage 1 (SupCon)"] = T.train_stage1(
            net, images, labels, epochs=epochs, symmetric=method == "supcon_sym",
            checkpointer=ck.for_stage(ck.stages[0]) if ck else None, **kw,
        )  # fmt: skip
        # ``curves`` travels with stage 2's checkpoints: a run resumed there still has stage 1's
        s2 = T.train_stage2(
            net, images, labels, checkpointer=ck.for_stage(ck.stages[-1]) if ck else None,
            history=curves, **kw,
        )  # fmt: skip
        return net, {**curves, "stage 2 (linear CE)": s2}
    losses = T.train_baseline(net, images, labels, method, epochs=epochs, checkpointer=ck, **kw)
    return net, {method: losses}


# -- data ---------------------------------------------------------------------------------------
def _val_fraction(ctx: RunContext) -> float:
    """``--set val_fraction``: the share of the training split held out to choose the positive
    class's threshold; 0 turns the validation split off. (Checked here too for Python callers
    whose context declares no options.)"""
    value = float(ctx.option("val_fraction"))
    if not 0 <= value <= 0.5:
        raise UserInputError(f"--set val_fraction={value}: expected 0 to 0.5.")
    return value


def _tolerance(ctx: RunContext) -> float:
    return float(ctx.option("split_tolerance"))


def _split_report(
    labels: np.ndarray,
    classes: list[str],
    splits: dict[str, np.ndarray | None],
    groups: list[str] | None,
    targets: dict[str, float],
    tolerance: float | None,
    source: str,
) -> dict[str, Any]:
    """:func:`split_summary` of the splits that exist; checked (one sentence on a missing class or
    a fraction more than ``tolerance`` off its target) unless ``tolerance`` is ``None``."""
    from monai_ext.supercon.data import check_split, split_summary

    present = {k: v for k, v in splits.items() if v is not None}
    summary = split_summary(labels, classes, present, groups, targets)
    if tolerance is not None:
        check_split(summary, classes, tolerance, source)
    return summary


def _targets(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """Each split's target share of all images (the folds :func:`split_indices` cuts)."""
    from monai_ext.supercon.data import split_target

    test = split_target(test_fraction)
    val = (1 - test) * split_target(val_fraction) if val_fraction else 0.0
    out = {"train": 1 - test - val, "test": test}
    if val_fraction:
        out["validation"] = val
    return out


def _embedded(
    ctx: RunContext, size: int, val_fraction: float, positive: Any = None
) -> dict[str, Any]:
    """Digits with one class made rare (2% of the training split); validation and test keep the
    natural ratio. Identical digit images form one group. The positive class is the rare one
    unless ``--set positive`` names another."""
    from monai_ext.supercon.data import resolve_positive, split_indices, subsample_class
    from plugins.data import load_digits

    d = load_digits(size=size)
    y = d.labels.numpy()
    rare = int(ctx.option("rare_class"))
    ratio = float(ctx.option("rare_ratio"))
    hashes = [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in d.images]
    tr, te = split_indices(y, None, hashes, 0.25, ctx.seed)
    tr, va = _hold_out(y, None, hashes, tr, val_fraction, ctx.seed)
    classes = list(d.classes)
    groups = [h[:12] for h in hashes]
    splits = {"train": tr, "validation": va, "test": te}
    source = "the embedded digits"
    _split_report(y, classes, splits, groups, _targets(val_fraction, 0.25), _tolerance(ctx), source)
    tr = subsample_class(tr, y, rare, ratio, ctx.seed)
    summary = _split_report(y, classes, {**splits, "train": tr}, groups, {}, None, source)
    return dict(
        images=d.images,
        labels=d.labels,
        classes=classes,
        train=tr,
        val=va,
        test=te,
        positive=rare if positive is None else resolve_positive(positive, classes, source),
        paths=[f"digits[{i}]" for i in range(len(y))],
        groups=groups,
        report={"splits": summary, "train_subsampled": True},
        note=f"scikit-learn digits, class {rare} kept at {100 * ratio:g}% of the training split",
    )


def _user(
    ctx: RunContext, size: int, task: str, val_fraction: float, progress: bool = False
) -> dict[str, Any]:
    """``--data``: the table, its positive class (``--set positive``, else a class called
    melanoma, else one sentence asking), exact duplicates resolved before splitting
    (``--set duplicates``), the splits checked (``--set split_tolerance``), then the images."""
    from monai_ext.supercon.data import (
        deduplicate,
        load_images,
        load_table,
        resolve_positive,
        split_indices,
    )

    source = f"--data {ctx.data}"
    table = load_table(ctx.data, task)
    positive = resolve_positive(ctx.option("positive"), table.classes, source)
    table, hashes, dups = deduplicate(table, str(ctx.option("duplicates")))
    say(dups.message())
    tr, te = split_indices(table.labels, table.groups, hashes, 0.2, ctx.seed)
    tr, va = _hold_out(table.labels, table.groups, hashes, tr, val_fraction, ctx.seed)
    groups = table.group_names()
    summary = _split_report(
        table.labels,
        table.classes,
        {"train": tr, "validation": va, "test": te},
        groups,
        _targets(val_fraction, 0.2),
        _tolerance(ctx),
        source,
    )
    return dict(
        images=load_images(table, size, progress=progress),
        labels=torch.from_numpy(table.labels),
        classes=table.classes,
        train=tr,
        val=va,
        test=te,
        positive=positive,
        paths=[str(p) for p in table.paths],
        groups=groups,
        report={"duplicates": dups.as_dict(), "splits": summary},
        note=str(ctx.data),
    )


def _hold_out(
    labels: np.ndarray,
    groups: list[str] | None,
    hashes: list[str],
    index: np.ndarray,
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Split ``index`` into (kept, held out) with the same group/duplicate rules as the test split;
    ``fraction`` 0 keeps everything and holds out ``None``."""
    from monai_ext.supercon.data import split_indices

    if fraction == 0:
        return index, None
    sub_groups = None if groups is None else [groups[i] for i in index]
    kept, held = split_indices(
        labels[index], sub_groups, [hashes[i] for i in index], fraction, seed
    )
    return index[kept], index[held]


def _val_threshold(
    net: Any,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    val: np.ndarray | None,
    positive: int,
    cfg: Any,
    device: torch.device | str,
) -> float | None:
    """The ``positive`` probability threshold with the best F1 on the validation images (``None``
    without a validation split)."""
    from monai_ext.supercon.train import predict_proba
    from plugins.metrics import f1_optimal_threshold

    if val is None:
        return None
    probs = predict_proba(net, images[torch.as_tensor(val)], cfg.image_size, device)
    return f1_optimal_threshold(probs[:, positive], np.asarray(labels)[val] == positive)


def _oof_threshold(
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    train: np.ndarray,
    groups: list[str],
    positive: int,
    num_classes: int,
    cfg: Any,
    epochs: int,
    device: torch.device | str,
    seed: int,
    balanced: bool,
    folds: int,
) -> float:
    """The F1-optimal threshold on out-of-fold scores of the whole training split: ``folds``
    group-disjoint, class-stratified folds, each scored by a network trained (same settings) on
    the others. Every training positive stands behind it, not only the validation ones."""
    from sklearn.model_selection import StratifiedGroupKFold

    from monai_ext.supercon.data import error_reason
    from monai_ext.supercon.train import predict_proba
    from plugins.metrics import f1_optimal_threshold

    y = labels.numpy()[train]
    g = np.unique(np.asarray([groups[i] for i in train]), return_inverse=True)[1]
    skf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = np.zeros(len(train))
    try:
        parts = list(skf.split(np.zeros(len(y)), y, g))
    except ValueError as e:
        raise UserInputError(
            f"--set cv_folds={folds}: the training split cannot be cut into {folds} "
            f"class-stratified patient folds ({error_reason(e)})."
        ) from None
    for a, b in parts:
        ia, ib = torch.as_tensor(train[a]), torch.as_tensor(train[b])
        net, _ = fit(
            method, images[ia], labels[ia], num_classes, cfg, epochs, device, seed, balanced
        )
        scores[b] = predict_proba(net, images[ib], cfg.image_size, device)[:, positive].numpy()
    return f1_optimal_threshold(scores, y == positive)


def _choose_threshold(
    ctx: RunContext,
    method: str,
    net: Any,
    d: dict[str, Any],
    cfg: Any,
    epochs: int,
    balanced: bool,
    seed: int,
    where: str = "",
) -> tuple[float | None, dict[str, Any]]:
    """The operating point ``--set threshold_from`` asks for, and its record (how many positives
    stand behind it; a warning below ``--set min_val_positives``). With ``cv`` the validation
    threshold is kept in the record too (``threshold_validation``), for comparison."""
    source = str(ctx.option("threshold_from"))
    minimum = int(ctx.option("min_val_positives"))
    labels, pos, val = np.asarray(d["labels"]), d["positive"], d["val"]
    val_t = _val_threshold(net, d["images"], d["labels"], val, pos, cfg, ctx.device)
    if source == "cv":
        t = _oof_threshold(
            method, d["images"], torch.as_tensor(labels), np.asarray(d["train"]), d["groups"],
            pos, len(d["classes"]), cfg, epochs, ctx.device, seed, balanced,
            int(ctx.option("cv_folds")),
        )  # fmt: skip
        train_y = labels[d["train"]]
        info = threshold_info(
            f"out-of-fold scores, {int(ctx.option('cv_folds'))} folds of the training split",
            int((train_y == pos).sum()), len(train_y), minimum, where,
        )  # fmt: skip
        if val_t is not None:
            info["threshold_validation"] = val_t
            info["threshold_validation_positives"] = int((labels[val] == pos).sum())
        return t, info
    if val is None:
        return None, {"threshold_from": "none (val_fraction=0)"}
    info = threshold_info(
        "validation split", int((labels[val] == pos).sum()), len(val), minimum, where
    )
    return val_t, info


def _f1_at(probs: torch.Tensor, y: torch.Tensor, positive: int, threshold: float) -> float:
    """Test F1 of the positive class at ``threshold``."""
    from plugins.metrics import binary_scores

    return binary_scores(probs[:, positive], (y == positive).numpy(), threshold)["f1"]


def _predict_blocks(
    net: Any, d: dict[str, Any], cfg: Any, device: Any, splits: tuple[str, ...]
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """``predictions.csv`` blocks (one per split) and the probabilities per split."""
    from monai_ext.supercon.train import predict_proba

    keys = {"train": "train", "validation": "val", "test": "test"}
    blocks, probs = [], {}
    for split in splits:
        ix = d[keys[split]]
        if ix is None:
            continue
        p = predict_proba(net, d["images"][torch.as_tensor(ix)], cfg.image_size, device)
        probs[split] = p
        blocks.append(
            {
                "paths": [d["paths"][i] for i in ix],
                "groups": [d["groups"][i] for i in ix],
                "labels": np.asarray(d["labels"])[ix],
                "probs": p.numpy(),
                "split": split,
            }
        )
    return blocks, probs


# -- plots --------------------------------------------------------------------------------------
def _plot_roc(run_dir: Any, curves: dict[str, tuple], name: str, title: str) -> None:
    from sklearn.metrics import roc_curve

    from plugins.reporting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for label, (score, target) in curves.items():
        fpr, tpr, _ = roc_curve(target, score)
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    run_dir.save_figure(fig, name)


def _plot_confusions(
    run_dir: Any, cms: dict[str, np.ndarray], classes: list[str], name: str
) -> None:
    from plugins.reporting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(cms), figsize=(3.2 * len(cms), 3.2), squeeze=False)
    for ax, (label, cm) in zip(axes[0], cms.items()):
        ax.imshow(cm / cm.sum(1, keepdims=True).clip(1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=6)
        ax.set_title(label, fontsize=8)
        ax.set_xticks(range(len(classes)), [c[:5] for c in classes], fontsize=6, rotation=90)
        ax.set_yticks(range(len(classes)), [c[:5] for c in classes], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true", fontsize=7)
    run_dir.save_figure(fig, name)


# -- commands -----------------------------------------------------------------------------------
def _declared(ctx: RunContext, command: str) -> None:
    """Give a context built without an option set (a Python caller) this command's, so that its
    options are checked and every default comes from :data:`OPTIONS`."""
    declared(ctx, OPTIONS[command], command)


def _check_arch(arch: str) -> None:
    from monai_ext.supercon.model import ARCH_HELP, known_arch

    if not known_arch(arch):
        raise UserInputError(f"--set arch={arch}: expected {ARCH_HELP}.")


def _setup(ctx: RunContext) -> tuple[SuperConConfig, int, bool, dict[str, Any]]:
    """``run``'s effective config (``stage1_epochs`` = the effective ``--epochs``), the balanced
    flag and the data with its splits; every option is checked before the data are read."""
    _declared(ctx, "run")
    embedded = ctx.data is None
    base: dict[str, Any] = dict(EMBEDDED) if embedded else {}
    if ctx.demo or embedded:
        base.update(REDUCED_STAGE2)
    epochs = ctx.epochs or (
        DEMO_EPOCHS if ctx.demo else (EMBEDDED_EPOCHS if embedded else SuperConConfig.stage1_epochs)
    )
    cfg = config_from_options(
        ctx, SuperConConfig, exclude=("stage1_epochs",), stage1_epochs=epochs, **base
    )
    from monai_ext.supercon.data import summary_lines

    _check_arch(cfg.arch)
    val_fraction = _val_fraction(ctx)
    balanced = bool(ctx.option("balanced"))
    d = (
        _embedded(ctx, cfg.image_size, val_fraction, ctx.option("positive"))
        if embedded
        else _user(ctx, cfg.image_size, str(ctx.option("task")), val_fraction, ctx.progress)
    )
    for line in summary_lines(d["report"]["splits"]):
        say(line)
    return cfg, epochs, balanced, {**d, "val_fraction": val_fraction}


def run(ctx: RunContext) -> dict[str, float]:
    """Stage 1 + stage 2 on the embedded default or ``ctx.data``; returns headline metrics."""
    from monai_ext.supercon.train import encoder_features, evaluate
    from plugins.metrics import effective_rank, spectrum

    t0 = time.time()
    cfg, epochs, balanced, d = _setup(ctx)
    tr, te = torch.as_tensor(d["train"]), torch.as_tensor(d["test"])
    # the effective settings, with both stages' epochs (stage1_epochs is --epochs)
    ctx.run_dir.save_config(
        {
            "method": "supercon",
            "data": d["note"],
            "seed": ctx.seed,
            "balanced_sampler": balanced,
            "val_fraction": d["val_fraction"],
            "positive_class": d["classes"][d["positive"]],
            "threshold_from": str(ctx.option("threshold_from")),
            **asdict(cfg),
        }
    )
    net, curves = fit(
        "supercon",
        d["images"][tr],
        d["labels"][tr],
        len(d["classes"]),
        cfg,
        epochs,
        ctx.device,
        ctx.seed,
        balanced,
        ctx.progress,
        checkpointer=ctx.checkpointer(stages=("stage 1", "stage 2")),
    )
    pos = d["positive"]
    with phase("SuperCon: threshold and evaluation", show=ctx.progress):
        threshold, tinfo = _choose_threshold(
            ctx, "supercon", net, d, cfg, epochs, balanced, ctx.seed
        )
        blocks, split_probs = _predict_blocks(
            net, d, cfg, ctx.device, ("train", "validation", "test")
        )
        probs = split_probs["test"]
        y = d["labels"][te]
        metrics, cm = evaluate(probs, y, d["classes"], positive=pos, threshold=threshold)
        metrics.update(
            group_metrics(
                probs[:, pos].numpy(),
                (y == pos).numpy(),
                (probs.argmax(1) == pos).numpy(),
                [d["groups"][i] for i in d["test"]],
                threshold,
            )
        )
        val_t = tinfo.get("threshold_validation")
        if val_t is not None and np.isfinite(val_t):  # cv: the validation threshold's F1 too
            metrics["positive_f1_at_validation_threshold"] = _f1_at(probs, y, pos, val_t)
        z = encoder_features(net, d["images"][te], cfg.image_size, ctx.device)
        rank = float(effective_rank(z))
    write_predictions(ctx.run_dir.ensure() / "predictions.csv", d["classes"], blocks)
    headline = {
        "positive_class": d["classes"][pos],
        "minority_f1": metrics["positive_f1"],
        **(
            {
                "minority_f1_at_threshold": metrics["positive_f1_at_threshold"],
                "threshold": threshold,
            }
            if threshold is not None
            else {}
        ),
        "roc_auc": metrics["roc_auc"],
        "group_roc_auc": metrics["group_roc_auc"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "effective_rank": rank,
        "train_minority_fraction": float((d["labels"][tr] == d["positive"]).float().mean()),
        "seconds": time.time() - t0,
    }
    ctx.run_dir.save_metrics(
        {**headline, **metrics, **tinfo, "data": d["report"], "confusion": cm.tolist()}
    )
    # the threshold travels with the weights, so predictions can use it
    ctx.run_dir.save_checkpoint(
        {
            "method": "supercon",
            "model": net.state_dict(),
            "config": asdict(cfg),
            "classes": d["classes"],
            "positive": pos,
            "threshold": threshold,
            "threshold_from": tinfo["threshold_from"],
        }
    )
    with phase("SuperCon: plots (t-SNE of test features)", show=ctx.progress):
        ctx.run_dir.plot_loss(curves)
        ctx.run_dir.plot_spectrum({"SuperCon encoder (test)": spectrum(z)})
        ctx.run_dir.plot_embedding(
            z, y, title="SuperCon encoder features (test)", class_names=d["classes"]
        )
        _plot_roc(
            ctx.run_dir,
            {"SuperCon": (probs[:, pos].numpy(), (y == pos).numpy())},
            "roc.png",
            f"{d['classes'][pos]} vs rest",
        )
        _plot_confusions(ctx.run_dir, {"SuperCon": cm}, d["classes"], "confusion.png")
    return headline


def _ratios(values: list[Any]) -> list[float]:
    """``--set ratios`` items as floats in (0, 1), ``natural`` as -1."""
    out = []
    for r in values:
        if str(r).strip().lower() == "natural":
            out.append(-1.0)
            continue
        try:
            value = float(r)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0 < value < 1:
            raise UserInputError(
                f"--set ratios: each item must be a fraction between 0 and 1 or 'natural', got '{r}'."
            )
        out.append(value)
    return out


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Reduced reproduction on the shared ISIC images (see the module docstring)."""
    from monai_ext.supercon.data import (
        check_classes_present,
        file_hash,
        find_duplicates,
        load_images,
        load_shared_isic,
        split_indices,
        subsample_class,
        summary_lines,
    )
    from monai_ext.supercon.train import evaluate
    from plugins.data import shared_path

    t0 = time.time()
    _declared(ctx, "reproduce")
    epochs = ctx.epochs or REPRODUCE_EPOCHS
    cfg = config_from_options(ctx, SuperConConfig, exclude=("stage1_epochs",), stage1_epochs=epochs)
    _check_arch(cfg.arch)
    seeds = [ctx.seed + i for i in range(int(ctx.option("seeds")))]
    methods = [str(m) for m in ctx.option_list("methods")]
    ratios = _ratios(ctx.option_list("ratios"))
    max_train = int(ctx.option("max_train"))
    multiclass = bool(ctx.option("multiclass"))
    val_fraction = _val_fraction(ctx)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or not seeds:
        raise UserInputError(
            f"methods must be a comma list of {', '.join(METHODS)} and seeds >= 1; "
            f"got methods {methods}, seeds {len(seeds)}."
        )
    if not ratios and not multiclass:
        raise UserInputError("nothing to run: ratios is empty and multiclass is off.")
    tolerance = _tolerance(ctx)
    root = ctx.data or shared_path("isic")
    binary = load_shared_isic(root, "melanoma")
    hashes = [file_hash(p) for p in binary.paths]
    dups = find_duplicates(
        hashes, binary.groups, binary.labels, binary.paths, str(ctx.option("duplicates"))
    )
    say(dups.message())
    keep = np.setdiff1d(np.arange(len(binary)), dups.dropped)
    binary, hashes = binary.subset(keep), [hashes[i] for i in keep]
    images = load_images(binary, cfg.image_size, progress=ctx.progress)
    settings = [("melanoma vs rest", binary, r) for r in ratios]
    if multiclass:
        settings.append(("8-class", load_shared_isic(root, "multiclass").subset(keep), -1.0))
    data_report: dict[str, Any] = {"duplicates": dups.as_dict()}
    predictions = ctx.run_dir / "predictions.csv"
    ctx.run_dir.save_config(
        {
            "method": "supercon",
            "data": str(root),
            "seeds": seeds,
            "methods": methods,
            "ratios": ratios,
            "max_train": max_train,
            "multiclass": multiclass,
            "val_fraction": val_fraction,
            **asdict(cfg),
        }
    )
    rows, summary, losses, per_seed = [], {}, {}, []
    for task, table, ratio in settings:
        mel = table.classes.index("melanoma")
        per: dict[str, list[dict]] = {m: [] for m in methods}
        cms = {m: 0 for m in methods}
        roc: dict[str, tuple] = {}
        fracs = []
        groups = table.group_names()
        paths = [str(p) for p in table.paths]
        tag = f"{'mc' if task == '8-class' else 'bin'}_{'nat' if ratio < 0 else ratio}"
        for seed in seeds:
            tr, te = split_indices(table.labels, table.groups, hashes, 0.2, seed)
            # held out before the subsampling, so validation keeps the test split's ratio
            tr, va = _hold_out(table.labels, table.groups, hashes, tr, val_fraction, seed)
            splits = {"train": tr, "validation": va, "test": te}
            source = f"the ISIC images (seed {seed})"
            targets = _targets(val_fraction, 0.2)
            _split_report(table.labels, table.classes, splits, groups, targets, tolerance, source)
            if ratio > 0:
                tr = subsample_class(tr, table.labels, mel, ratio, seed)
            if max_train and len(tr) > max_train:
                tr = np.sort(np.random.default_rng(seed).choice(tr, max_train, replace=False))
            check_classes_present(table.labels, table.classes, "training", tr)
            summary_split = _split_report(
                table.labels, table.classes, {**splits, "train": tr}, groups, {}, None, source
            )
            if seed == seeds[0]:
                data_report[f"{tag}/splits (seed {seed})"] = summary_split
                for line in summary_lines(summary_split):
                    say(f"{task}, seed {seed}: {line}")
            fracs.append(float((table.labels[tr] == mel).mean()))
            x_tr, y_tr = images[tr], torch.from_numpy(table.labels[tr])
            y_te = torch.from_numpy(table.labels[te])
            d = dict(
                images=images, labels=torch.from_numpy(table.labels), classes=table.classes,
                train=tr, val=va, test=te, positive=mel, groups=groups, paths=paths,
            )  # fmt: skip
            for m in methods:
                net, curves = fit(
                    m,
                    x_tr,
                    y_tr,
                    len(table.classes),
                    cfg,
                    epochs,
                    ctx.device,
                    seed,
                    progress=ctx.progress,
                )
                with phase(f"{m}, seed {seed}: evaluation", show=ctx.progress):
                    threshold, tinfo = _choose_threshold(
                        ctx, m, net, d, cfg, epochs, False, seed, f" of {m}, {tag}, seed {seed}"
                    )
                    blocks, split_probs = _predict_blocks(
                        net, d, cfg, ctx.device, ("validation", "test")
                    )
                    probs = split_probs["test"]
                    met, cm = evaluate(
                        probs, y_te, table.classes, positive=mel, threshold=threshold
                    )
                    met.update(
                        group_metrics(
                            probs[:, mel].numpy(),
                            (y_te == mel).numpy(),
                            (probs.argmax(1) == mel).numpy(),
                            [groups[i] for i in te],
                            threshold,
                        )
                    )
                    val_t = tinfo.get("threshold_validation")
                    if val_t is not None and np.isfinite(val_t):  # cv: the validation one too
                        met["positive_f1_at_validation_threshold"] = _f1_at(probs, y_te, mel, val_t)
                extra = {"task": task, "ratio": "natural" if ratio < 0 else ratio}
                for block in blocks:
                    block["extra"] = {**extra, "seed": seed, "method": m}
                write_predictions(predictions, table.classes, blocks, append=True)
                met["threshold_positives"] = tinfo.get("threshold_positives", 0)
                per[m].append(met)
                per_seed.append(
                    {
                        **extra,
                        "seed": seed,
                        "method": m,
                        **{
                            k: v
                            for k, v in met.items()
                            if not k.startswith(("precision_", "recall_", "f1_"))
                        },
                        **{k: v for k, v in tinfo.items() if k != "threshold_warning"},
                    }
                )
                ctx.run_dir.save_json(per_seed, "metrics_per_seed.json")  # a cut run keeps rows
                cms[m] = cms[m] + cm
                if seed == seeds[0]:
                    roc[m] = (probs[:, mel].numpy(), (y_te == mel).numpy())
                    losses.update({f"{m} {k}": v for k, v in curves.items()})
        setting = f"{task}, melanoma {100 * np.mean(fracs):.1f}% of train"
        for m in methods:
            row = {"setting": setting, "method": m}
            columns = [
                ("positive_f1", "melanoma F1"),
                ("positive_f1_at_threshold", "melanoma F1 (val threshold)"),
                ("roc_auc", "ROC-AUC (scores)"),
                ("balanced_accuracy", "balanced accuracy"),
            ]
            for key, col in columns:
                if key not in per[m][0]:
                    continue
                v = np.array([r[key] for r in per[m]])
                row[col] = f"{v.mean():.3f} ± {v.std():.3f}"
                summary[f"{tag}/{m}/{key}"] = float(v.mean())
            row["predicted melanoma (test)"] = "/".join(
                str(int(r["positive_predicted"])) for r in per[m]
            )
            if "threshold" in per[m][0]:
                row["predicted at val threshold"] = "/".join(
                    str(int(r["positive_predicted_at_threshold"])) for r in per[m]
                )
                row["positives behind threshold"] = "/".join(
                    str(int(r["threshold_positives"])) for r in per[m]
                )
            summary[f"{tag}/{m}/positive_predicted"] = float(
                np.mean([r["positive_predicted"] for r in per[m]])
            )
            rows.append(row)
        _plot_roc(ctx.run_dir, roc, f"roc_{tag}.png", f"{setting} (seed {seeds[0]})")
        _plot_confusions(ctx.run_dir, cms, table.classes, f"confusion_{tag}.png")
        ctx.run_dir.save_table(rows)
    ctx.run_dir.plot_loss({k: v for k, v in losses.items() if "stage 2" not in k})
    summary["seconds"] = time.time() - t0
    summary["threshold_from"] = str(ctx.option("threshold_from"))
    ctx.run_dir.save_metrics({**summary, "data": data_report})
    ctx.run_dir.save_table(rows)
    return summary


# -- options --------------------------------------------------------------------------------------
_CONFIG_HELP = {
    "arch": "encoder: resnet50 (paper), resnet18, small-resnet18, tiny or micro",
    "proj_dim": "projection-head output size",
    "temperature": "SupCon temperature",
    "base_temperature": "SupCon base temperature",
    "batch_size": "images per step (both stages)",
    "lr1": "stage-1 (and baseline) SGD learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "stage-1 SGD weight decay",
    "lr_decay": "stage-1 step-decay factor",
    "lr_steps": "stage-1 training is cut into this many equal parts, decayed between them",
    "stage2_epochs": "stage-2 (linear classifier) epochs; stage 1's are --epochs",
    "lr2": "stage-2 SGD learning rate",
    "jitter_strength": "colour jitter strength (brightness/contrast/saturation 0.8 x this)",
    "p_jitter": "probability of colour jitter in the strong view",
    "p_gray": "probability of grayscale in the strong view",
    "p_blur": "probability of Gaussian blur in the strong view",
    "p_flip": "probability of a horizontal flip in the strong view",
    "crop_scale": "random-resized-crop area range of the strong view, two numbers",
    "image_size": "images are resized to this side",
    "focal_gamma": "gamma of the focal-loss baseline",
    "stage2_encoder_mode": "eval (frozen BatchNorm, faithful) or train (the reference code)",
}
_CONFIG_RANGES: dict[str, tuple[float | None, float | None]] = {
    "proj_dim": (1, None),
    "temperature": (1e-4, None),
    "base_temperature": (1e-4, None),
    "batch_size": (2, None),
    "lr1": (0, None),
    "momentum": (0, 1),
    "weight_decay": (0, None),
    "lr_decay": (0, 1),
    "lr_steps": (1, None),
    "stage2_epochs": (1, None),
    "lr2": (0, None),
    "jitter_strength": (0, None),
    "p_jitter": (0, 1),
    "p_gray": (0, 1),
    "p_blur": (0, 1),
    "p_flip": (0, 1),
    "crop_scale": (0.01, 1),
    "image_size": (8, None),
    "focal_gamma": (0, None),
}
_CONFIG = dict(
    help=_CONFIG_HELP,
    exclude=("stage1_epochs",),  # --epochs
    ranges=_CONFIG_RANGES,
    choices={"stage2_encoder_mode": ("eval", "train")},
)
_VAL_FRACTION = Option(
    "val_fraction",
    "float",
    0.15,
    "share of the training split held out to choose the positive class's threshold (0: none)",
    low=0,
    high=0.5,
)
# issue 21: what a user's table needs to be read right, and how a threshold is chosen
_DATA_OPTIONS = (
    Option(
        "duplicates",
        "str",
        "drop",
        "byte-identical files of different patients: drop the extra copies or stop",
        choices=("drop", "stop"),
    ),
    Option(
        "split_tolerance",
        "float",
        0.05,
        "largest allowed gap between a split's realised and target share of the images",
        low=0,
        high=1,
    ),
    Option(
        "threshold_from",
        "str",
        "validation",
        "where the positive class's threshold is chosen: validation split, or cv (out-of-fold "
        "scores on the training split; cv_folds extra trainings)",
        choices=("validation", "cv"),
    ),
    Option("cv_folds", "int", 3, "folds for threshold_from=cv", low=2, high=20),
    Option(
        "min_val_positives",
        "int",
        20,
        "warn when fewer positive images than this stand behind the threshold",
        low=1,
    ),
)
_RUN_DOCS = {
    "arch": f"resnet50 (paper); {EMBEDDED['arch']} on the embedded digits",
    "image_size": f"224 (paper); {EMBEDDED['image_size']} on the embedded digits",
    "stage2_epochs": f"5 (paper); {REDUCED_STAGE2['stage2_epochs']} on the embedded digits and with --demo",
    "lr2": f"0.0005 (paper); {REDUCED_STAGE2['lr2']:g} on the embedded digits and with --demo",
}

OPTIONS = {
    "run": OptionSet(
        options_from_dataclass(SuperConConfig, default_docs=_RUN_DOCS, **_CONFIG),
        _VAL_FRACTION,
        Option("balanced", "bool", False, "class-balanced batches in both stages"),
        Option("rare_class", "int", 0, "embedded digits: the class made rare", low=0, high=9),
        Option(
            "rare_ratio",
            "float",
            0.02,
            "embedded digits: the rare class's share of the training split",
            low=0.001,
            high=0.99,
        ),
        Option(
            "task",
            "str",
            "melanoma",
            "--data in the shared ISIC layout: melanoma (vs rest) or multiclass",
            choices=("melanoma", "multiclass"),
        ),
        Option(
            "positive",
            "str",
            None,
            "the positive class (name or index) for F1 and the threshold",
            nullable=True,
            default_doc="the class called melanoma; else required with --data "
            "(the rare class on the embedded digits)",
        ),
        *_DATA_OPTIONS,
    ),
    "reproduce": OptionSet(
        options_from_dataclass(SuperConConfig, defaults=REPRODUCE, **_CONFIG),
        _VAL_FRACTION,
        Option("seeds", "int", 3, "seeds per setting (--seed, --seed + 1, ...)", low=1),
        Option("methods", "str", list(METHODS), "methods compared", many=True, choices=METHODS),
        Option(
            "ratios",
            "str",
            ["0.02", "natural"],
            "melanoma share of the training split per setting: fractions or natural",
            many=True,
            nullable=True,
        ),
        Option("max_train", "int", 0, "cap on training images per seed (0: all)", low=0),
        Option("multiclass", "bool", False, "add the 8-class setting"),
        *_DATA_OPTIONS,
    ),
}
