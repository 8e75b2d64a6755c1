"""``contrastive-plugins run|reproduce mr-multidomain``.

``run``: the multi-domain model with the SupCon regulariser on the embedded default (nilearn's
MNI152: axial tissue segmentation and coronal brain masks as two domains with their own label
sets) or on a user datalist (``--data datalist.json``).

``reproduce``: reduced reproduction of Boutillon et al. (MICCAI 2021), Table 1-2 style: per-domain
models, joint model, multi-domain without / with SupCon / with margin regulariser, at the full
label set and at a small label fraction; per-domain and per-structure Dice, HD95, ASSD, RAVD;
overlays. Domains: MNI152 tissue (nilearn) and Colin27 subcortical structures (Debian
``mricron-data``; without it the nilearn brain-mask domain stands in and the table says so).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from monai_ext.multidomain.config import ABLATIONS, CONFIGS, TEST_BN, Settings
from plugins.errors import UserInputError
from plugins.options import Option, OptionSet, config_from_options, declared, options_from_dataclass
from plugins.progress import phase
from plugins.reporting import RunContext

METHOD = "md_supcon"


# -- data ---------------------------------------------------------------------------------------
def _embedded(with_colin: bool, size: int) -> tuple[list[dict], str]:
    from monai_ext.multidomain import data

    doms = [data.mni_tissue()]
    note = "MNI152 tissue (nilearn) + "
    if with_colin and data.colin_available():
        doms.append(data.colin_subcortical())
        note += "Colin27/AAL subcortical (mricron-data)"
    else:
        doms.append(data.mni_brainmask())
        note += "MNI152 coronal brain mask (nilearn)"
        if with_colin:
            note += f"; mricron-data absent (install: {data.MRICRON_HINT})"
    out = []
    for d in doms:
        sl = data.domain_slices(d, size=size)
        sl.update(name=d.name, classes=d.classes)
        out.append(sl)
    return out, note


def _from_datalist(path: str, size: int) -> tuple[list[dict], str]:
    """Slices of a MONAI datalist (:func:`~monai_ext.multidomain.data.datalist_domains`): its
    ``domains`` section gives names, class names, spacing and ROI; slices are zero-padded to one
    canvas, never squashed. ``size`` (the demo's slice side) does not apply."""
    from monai_ext.multidomain.data import datalist_domains

    return datalist_domains(path, "--data")[0], f"datalist {path}"


# -- one experiment -------------------------------------------------------------------------------
def _pools(
    domains: list[dict], fraction: float, s: Any, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from monai_ext.multidomain.train import augment_pool, label_subset

    pools = []
    for k, d in enumerate(domains):
        tr = np.nonzero(d["role"] == "train")[0]
        keep = tr[label_subset(len(tr), fraction, seed + k)]
        pools.append(
            augment_pool(d["image"][keep], d["label"][keep], s.augment_copies, seed + 100 * k)
        )
    return pools


SPLITS = {"val": "validation", "test": "test"}  # slice role -> datalist list it comes from
# per-structure scores of train.surface_scores; ``missed`` (the fraction of cases where a structure
# in the truth was not predicted) is what the HD95 / ASSD means leave out
SCORES = ("dice", "hd95", "assd", "ravd", "missed")


def _score(
    pred: torch.Tensor, d: dict, role: str, num_classes: int
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Scores of the ``role`` cases of domain ``d`` and one row per case and structure.

    Each case's predicted slices are cropped back to its file's own grid first
    (:func:`~monai_ext.multidomain.data.crop_back`), so Dice/HD95/ASSD/RAVD are computed there
    (:func:`~monai_ext.multidomain.train.surface_scores`); the per-structure means leave out cases
    where a structure's score is undefined, and ``missed`` is the fraction of cases where a
    structure in the truth was not predicted (the cases the HD95 / ASSD means leave out).
    """
    from monai_ext.multidomain.data import crop_back, domain_cases
    from monai_ext.multidomain.train import surface_scores

    rows_of = torch.as_tensor(np.nonzero(d["role"] == role)[0])  # pred row of each slice of role
    per, rows = [], []
    for case in domain_cases(d):
        if case.role != role:
            continue
        p = crop_back(pred[torch.searchsorted(rows_of, torch.as_tensor(case.index))], case)
        sc = surface_scores(p, case.truth, np.zeros(len(p), int), num_classes, case.spacing)
        per.append(sc)
        for c, structure in enumerate(d["classes"][1:]):
            rows.append(
                {"split": SPLITS[role], "case": case.name, "domain": d["name"]}
                | {"structure": structure, **{m: float(v[c]) for m, v in sc.items()}}
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return {m: np.nanmean(np.stack([sc[m] for sc in per]), 0) for m in per[0]}, rows


def _fit_and_score(
    config: str,
    domains: list[dict],
    pools: list,
    s: Any,
    device: torch.device,
    seed: int,
    progress: bool,
    checkpointer: Any = None,
    roles: tuple[str, ...] = ("test",),
    select_every: int = 0,
) -> dict:
    """Train ``config`` (one network, or one per domain for ``per_domain``) and score its test slabs.

    ``checkpointer`` (a single-network config only) saves and resumes the training loop.
    ``roles``: the splits scored; ``"val"`` adds ``val_scores`` for the domains that have
    validation slices. ``rows``: one per scored case and structure. ``select_every`` > 0 (a
    single network, validation slices present): the weights with the best validation Dice, scored
    every that many steps, are the ones scored (``selected_step``)."""
    from monai_ext.multidomain.train import adapt_bn_statistics, build, predict, train

    classes = [len(d["classes"]) for d in domains]
    groups = (
        [[k] for k in range(len(domains))]
        if config == "per_domain"
        else [list(range(len(domains)))]
    )
    if checkpointer is not None and len(groups) > 1:
        raise ValueError(f"{config} trains {len(groups)} networks; checkpoint one at a time")
    result: dict[str, Any] = {
        "scores": {},
        "val_scores": {},
        "rows": [],
        "pred": {},
        "emb": {},
        "loss": [],
        "nets": [],
    }
    for group in groups:
        torch.manual_seed(seed)
        net, loss_fn = build(config, [classes[k] for k in group], s)
        selection = None
        if select_every and len(groups) == 1 and any((d["role"] == "val").any() for d in domains):
            score = functools.partial(_validation_dice, domains=domains, device=device)
            selection = _SelectOnValidation(checkpointer, select_every, s.steps, score)
        hist = train(
            net,
            loss_fn,
            [pools[k] for k in group],
            s,
            device,
            seed,
            progress,
            desc=config,
            checkpointer=selection or checkpointer,
        )
        if selection is not None:
            net.load_state_dict(selection.weights)
            result["selected_step"] = selection.best_step
        result["loss"].append(hist)
        result["nets"].append(net)
        names = ", ".join(domains[k]["name"] for k in group)
        unit = "cases" if "cases" in domains[group[0]] else "slabs"
        for role in sorted(roles, key=("val", "test").index):
            what = f"{config}: Dice/HD95/ASSD on the {SPLITS[role]} {unit} of {names}"
            with phase(what, show=progress):
                for local, k in enumerate(group):
                    d = domains[k]
                    idx = np.nonzero(d["role"] == role)[0]
                    if idx.size == 0:
                        continue
                    scored = (
                        adapt_bn_statistics(net, d["image"][idx], local, device)
                        if s.test_bn == "adapt"
                        else net
                    )
                    pred, emb = predict(scored, d["image"][idx], local, device)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        scores, rows = _score(pred, d, role, classes[k])
                    result["scores" if role == "test" else "val_scores"][k] = scores
                    result["rows"] += rows
                    if role == "test":
                        result["pred"][k], result["emb"][k] = pred, emb
    return result


def _validation_dice(net: torch.nn.Module, domains: list[dict], device: torch.device) -> float:
    """Mean foreground Dice of ``net`` over the validation cases (each on its file's grid), averaged
    per domain, then over the domains that have validation cases; the model-selection score."""
    from monai_ext.multidomain.data import crop_back, domain_cases
    from monai_ext.multidomain.train import predict
    from plugins.metrics import dice_per_class

    values = []
    for k, d in enumerate(domains):
        idx = np.nonzero(d["role"] == "val")[0]
        if idx.size == 0:
            continue
        pred, _ = predict(net, d["image"][idx], k, device)
        rows = torch.as_tensor(idx)
        per = [
            dice_per_class(
                crop_back(pred[torch.searchsorted(rows, torch.as_tensor(c.index))], c),
                c.truth,
                len(d["classes"]),
            )
            for c in domain_cases(d)
            if c.role == "val"
        ]
        values.append(float(np.nanmean(torch.stack(per).numpy())))
    return float(np.mean(values))


class _SelectOnValidation:
    """Model selection on the validation cases (``--set select_every=N``), as a checkpointer.

    ``train`` calls ``step`` after every step: every ``every`` steps and at the last one, the
    network is scored by :func:`_validation_dice` and the best weights are kept. It wraps the run's
    :class:`~plugins.checkpoint.Checkpointer`, adding itself as ``selection`` to what
    ``last.ckpt`` holds, so ``--resume`` continues the selection too."""

    def __init__(self, inner: Any, every: int, total: int, score: Any) -> None:
        self.inner, self.every, self.total, self.score = inner, every, total, score
        self.best, self.best_step, self.weights = float("-inf"), 0, None

    def restore(self, total: int, **objects: Any) -> int:
        return self.inner.restore(total, **objects, selection=self) if self.inner else 0

    def step(self, step: int, **objects: Any) -> None:
        if step % self.every == 0 or step == self.total:
            net = objects["model"]
            value = self.score(net)
            net.train()  # predict() left it in eval mode
            if value > self.best:
                self.best, self.best_step = value, step
                self.weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if self.inner:
            self.inner.step(step, **objects, selection=self)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "step": self.best_step, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = float(state["best"]), int(state["step"])
        self.weights = state["weights"]


def _declare(ctx: RunContext, command: str) -> None:
    """Library callers that build a :class:`RunContext` without an option set get this command's
    declared options (typed values, declared defaults), as the CLI gives them."""
    declared(ctx, OPTIONS[command], command)


def _settings(ctx: RunContext) -> Settings:
    """:class:`Settings` from the declared options; ``--epochs`` sets ``steps`` unless
    ``--set steps`` is given."""
    s = config_from_options(ctx, Settings, **({"steps": ctx.epochs} if ctx.epochs else {}))
    if s.size % 16:
        raise UserInputError(
            f"--set size={s.size}: expected a multiple of 16 (the U-Net halves it four times)."
        )
    return s


# -- pictures -------------------------------------------------------------------------------------
def _overlay(
    run_dir: Any,
    domains: list[dict],
    preds: dict[str, dict[int, torch.Tensor]],
    name: str,
    title: str,
) -> None:
    from plugins.reporting import pyplot

    plt = pyplot()
    cols = 2 + len(preds)
    fig, axes = plt.subplots(
        len(domains), cols, figsize=(2.3 * cols, 2.4 * len(domains)), squeeze=False
    )
    for k, d in enumerate(domains):
        te = np.nonzero(d["role"] == "test")[0]
        counts = (d["label"][te] > 0).flatten(1).sum(1)
        i = int(counts.argmax())  # the test slice with the most foreground
        img = d["image"][te][i, 0].numpy().T[::-1]
        n = len(d["classes"])
        panels = [("image", None), ("truth", d["label"][te][i, 0])] + [
            (lbl, p[k][i, 0]) for lbl, p in preds.items()
        ]
        for j, (lbl, lab) in enumerate(panels):
            ax = axes[k, j]
            ax.imshow(img, cmap="gray")
            if lab is not None:
                m = np.ma.masked_equal(lab.numpy().T[::-1], 0)
                ax.imshow(
                    m, cmap="tab10", vmin=0, vmax=max(n - 1, 9), alpha=0.6, interpolation="nearest"
                )
            ax.set_title(f"{d['name']}: {lbl}" if j == 0 else lbl, fontsize=7)
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    run_dir.save_figure(fig, name)


def _split_metrics(
    res: dict, domains: list[dict], has_validation: bool, note: str
) -> dict[str, Any]:
    """Validation Dice (``val_``), the split each number of ``metrics.json`` comes from, and the
    scored cases of each split. No validation list: said once, on stderr and in ``validation``.

    The model scored is the last step's, or with ``--set select_every`` the one with the best
    validation Dice (``model`` in ``metrics.json`` says which)."""
    val = _headline(res["val_scores"]) if res["val_scores"] else {}
    out: dict[str, Any] = {f"val_{k}": v for k, v in val.items()}
    out["domains"] = [d["name"] for d in domains]  # domain k of dice_domain<k>
    if not has_validation:
        out["validation"] = f"none: {note} has no 'validation' list"
        print(
            f"mr-multidomain: {out['validation']}; only test scores are reported and the last "
            "step's model is kept.",
            file=sys.stderr,
        )
    out["split_of"] = {
        k: ("validation" if k.startswith("val_") else "test")
        for k in [*_headline(res["scores"]), *out]
        if k.startswith(("dice_", "val_dice_"))
    }
    out["cases"] = {
        split: sorted({r["case"] for r in res["rows"] if r["split"] == split})
        for split in ("validation", "test")
    }
    return out


def _save_case_scores(path: Any, rows: list[dict]) -> None:
    """``case_scores.csv``: split, case, domain, structure, Dice, HD95 (mm), ASSD (mm), RAVD and
    ``missed`` (1: the structure is in the truth but not predicted, so HD95/ASSD are empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(
            f, ["split", "case", "domain", "structure", "dice", "hd95", "assd", "ravd", "missed"]
        )
        w.writeheader()
        w.writerows(rows)


def _headline(scores: dict[int, dict]) -> dict[str, float]:
    out = {f"dice_domain{k}": float(np.nanmean(v["dice"])) for k, v in scores.items()}
    out["dice_mean"] = float(np.mean(list(out.values())))
    return out


def _save_checkpoint(ctx: RunContext, net: torch.nn.Module, domains: list[dict], s: Any) -> None:
    ctx.run_dir.save_checkpoint(
        {
            "model": net.state_dict(),
            "domain_classes": [len(d["classes"]) for d in domains],
            "settings": asdict(s),
        }
    )


# -- entry points ---------------------------------------------------------------------------------
def _threads(ctx: RunContext) -> Any:
    """Small convolutions: one thread is ~5x faster than OpenMP threads spinning on a shared CPU.
    ``--set threads=N`` or the command's ``--threads`` override; restored when the run ends."""
    return ctx.cpu_threads(int(ctx.option("threads")) if ctx.device.type == "cpu" else None)


def run(ctx: RunContext) -> dict[str, float]:
    """Train the multi-domain model with SupCon regularisation; write metrics, checkpoint, plots.

    ``last.ckpt`` is written periodically (``--checkpoint-every``) and ``--resume`` continues it."""
    _declare(ctx, "run")
    with _threads(ctx):
        return _run(ctx)


def _run(ctx: RunContext) -> dict[str, float]:
    """:func:`run`'s body, with the CPU threads pinned."""
    from monai_ext.multidomain.data import datalist_domains
    from plugins.metrics import spectrum

    s = _settings(ctx)
    fraction = float(ctx.option("label_fraction"))
    torch.manual_seed(ctx.seed)
    if ctx.data:
        domains, has_validation = datalist_domains(ctx.data, "--data")
        note = f"datalist {ctx.data}"
        extra = {"slice_canvas": list(domains[0]["canvas"])}  # --set size does not apply
    else:
        domains, note = _embedded(with_colin=bool(ctx.option("colin")), size=s.size)
        has_validation, extra = True, {}  # the demo's validation slabs
    ctx.run_dir.save_config(
        {
            "method": ctx.method,
            "data": note,
            "seed": ctx.seed,
            "config": METHOD,
            "label_fraction": fraction,
            **asdict(s),
            **extra,
        }
    )
    t0 = time.time()
    pools = _pools(domains, fraction, s, ctx.seed)
    res = _fit_and_score(
        METHOD,
        domains,
        pools,
        s,
        ctx.device,
        ctx.seed,
        ctx.progress,
        ctx.checkpointer(),
        roles=("val", "test"),
        select_every=int(ctx.option("select_every")),
    )
    metrics = {**_headline(res["scores"]), **_split_metrics(res, domains, has_validation, note)}
    metrics["model"] = (
        f"step {res['selected_step']}: best mean validation Dice (select_every="
        f"{ctx.option('select_every')})"
        if "selected_step" in res
        else f"step {s.steps}: the last"
    )
    metrics["train_seconds"] = time.time() - t0
    metrics["final_loss"] = res["loss"][0][-1]
    ctx.run_dir.save_metrics(metrics)
    _save_case_scores(ctx.run_dir / "case_scores.csv", res["rows"])
    _save_checkpoint(ctx, res["nets"][0], domains, s)
    ctx.run_dir.plot_loss(res["loss"][0])
    emb = torch.cat([res["emb"][k] for k in range(len(domains))])
    dom = torch.cat([torch.full((len(res["emb"][k]),), k) for k in range(len(domains))])
    ctx.run_dir.plot_spectrum({METHOD: spectrum(emb)})
    ctx.run_dir.plot_embedding(emb, dom, title="bottleneck embedding by domain")
    _overlay(ctx.run_dir, domains, {"prediction": res["pred"]}, "overlay.png", note)
    return metrics


def _label_fraction_curve(run_dir: Any, summary: list[dict], counts: dict[float, str]) -> None:
    """Mean foreground Dice (mean ± std over seeds) against the annotated-slice fraction."""
    from plugins.reporting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for config in dict.fromkeys(r["config"] for r in summary):
        rs = sorted((r for r in summary if r["config"] == config), key=lambda r: r["fraction"])
        ax.errorbar(
            [r["fraction"] for r in rs],
            [r["dice_mean"] for r in rs],
            yerr=[r["dice_mean_std"] for r in rs],
            marker="o",
            capsize=3,
            label=config,
        )
    ax.set_xscale("log")
    fracs = sorted(counts)
    ax.set_xticks(fracs, [f"{f:g}\n{counts[f]}" for f in fracs], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("label fraction (annotated training slices per domain)")
    ax.set_ylabel("mean foreground Dice")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    run_dir.save_figure(fig, "label_fraction_curve.png")


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Baselines and the method over label fractions and seeds (see :func:`_reproduce`)."""
    _declare(ctx, "reproduce")
    with _threads(ctx):
        if ctx.data == "spine":  # real subjects: VB3, VB2, hippocampus (experiment.DATA_NAME)
            from monai_ext.multidomain.experiment import reproduce_subjects

            return reproduce_subjects(ctx)
        return _reproduce(ctx)


def _reproduce(ctx: RunContext) -> dict[str, Any]:
    """Baselines and the method over a label-fraction curve and several seeds.

    Options (``--set``): ``fractions`` (default ``1.0,<small_fraction>``, ``small_fraction`` 0.1),
    ``seeds`` (how many, from ``--seed``; default 1), ``configs`` (a comma list of
    :data:`~monai_ext.multidomain.train.CONFIGS` and the ablation ``md_shared_bn``; default the five
    paper rows), ``steps`` and the :class:`Settings` fields. Writes ``summary.md`` (mean ± std over
    seeds of the per-domain mean Dice), ``table.md`` (per structure, mean over seeds),
    ``metrics_per_seed.json``, ``label_fraction_curve.png``, ``loss.png`` and ``overlay.png``
    (first seed, smallest fraction).
    """
    from monai_ext.multidomain.train import label_subset

    given = ctx.option("fractions")
    fractions = sorted(
        {float(f) for f in (given if given is not None else [1.0, ctx.option("small_fraction")])},
        reverse=True,
    )
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise UserInputError(f"fractions must lie in (0, 1], got {fractions}.")
    seeds = [ctx.seed + i for i in range(int(ctx.option("seeds")))]
    configs = [str(c) for c in ctx.option_list("configs")]
    unknown = [c for c in configs if c not in CONFIGS + ABLATIONS]
    if unknown or not configs:
        raise UserInputError(
            f"configs must be a comma list of {', '.join(CONFIGS + ABLATIONS)}; got {configs}."
        )
    s = _settings(ctx)
    torch.manual_seed(ctx.seed)
    domains, note = (
        _from_datalist(ctx.data, s.size)
        if ctx.data
        else _embedded(with_colin=bool(ctx.option("colin")), size=s.size)
    )
    n_train = [int((d["role"] == "train").sum()) for d in domains]
    counts = {
        f: "/".join(str(len(label_subset(n, f, 0))) for n in n_train) for f in fractions
    }  # annotated slices per domain (the count does not depend on the seed)
    ctx.run_dir.save_config(
        {
            "method": ctx.method,
            "data": note,
            "fractions": fractions,
            "seeds": seeds,
            "configs": configs,
            **asdict(s),
        }
    )
    per_seed: list[dict] = []  # one row per (seed, fraction, config)
    structures: list[dict] = []  # one row per (seed, fraction, config, domain, structure)
    losses, preds = {}, {}
    t0 = time.time()
    for seed in seeds:
        for frac in fractions:
            pools = _pools(domains, frac, s, seed)
            for config in configs:
                res = _fit_and_score(config, domains, pools, s, ctx.device, seed, ctx.progress)
                if seed == seeds[0]:
                    losses[f"{config}@{frac:g}"] = res["loss"][0]
                    if frac == fractions[-1]:
                        preds[config] = res["pred"]
                row = {"seed": seed, "fraction": frac, "config": config}
                for k, d in enumerate(domains):
                    sc = res["scores"][k]
                    row[f"dice_{d['name']}"] = float(np.nanmean(sc["dice"]))
                    for c, cname in enumerate(d["classes"][1:]):
                        structures.append(
                            {
                                "seed": seed,
                                "fraction": frac,
                                "config": config,
                                "domain": d["name"],
                                "structure": cname,
                                **{m: float(sc[m][c]) for m in SCORES},
                            }
                        )
                row["dice_mean"] = float(
                    np.mean([v for key, v in row.items() if key.startswith("dice_")])
                )
                per_seed.append(row)
                ctx.run_dir.save_json(per_seed, "metrics_per_seed.json")  # a cut run keeps rows
                print(
                    f"[{time.time() - t0:6.0f}s] seed {seed} fraction {frac:g} {config}: "
                    + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("dice")),
                    flush=True,
                )
    dice_keys = [k for k in per_seed[0] if k.startswith("dice_")]
    summary, rows = [], []
    for frac in fractions:
        for config in configs:
            group = [r for r in per_seed if r["fraction"] == frac and r["config"] == config]
            out: dict[str, Any] = {"fraction": frac, "slices": counts[frac], "config": config}
            for key in dice_keys:
                out[key] = float(np.mean([r[key] for r in group]))
            out["dice_mean_std"] = float(np.std([r["dice_mean"] for r in group]))
            summary.append(out)
            for d in domains:
                for cname in d["classes"][1:]:
                    hits = [
                        r
                        for r in structures
                        if (r["fraction"], r["config"], r["domain"], r["structure"])
                        == (frac, config, d["name"], cname)
                    ]
                    rows.append(
                        {
                            "fraction": frac,
                            "config": config,
                            "domain": d["name"],
                            "structure": cname,
                            **{
                                m: float(np.nanmean([r[m] for r in hits]))
                                if np.isfinite([r[m] for r in hits]).any()
                                else float("nan")
                                for m in SCORES
                            },
                        }
                    )
    ctx.run_dir.save_table(summary, "summary.md")
    ctx.run_dir.save_table(rows, "table.md")
    _label_fraction_curve(ctx.run_dir, summary, counts)
    ctx.run_dir.plot_loss(
        {k: v for k, v in losses.items() if k.startswith(("per_domain", "md_supcon"))} or losses
    )
    _overlay(
        ctx.run_dir,
        domains,
        {c: preds[c] for c in ("per_domain", "joint", METHOD) if c in preds} or preds,
        "overlay.png",
        f"test slices at label fraction {fractions[-1]:g} (seed {seeds[0]}); {note}",
    )
    metrics: dict[str, Any] = {"data": note, "seeds": seeds, "seconds": time.time() - t0}
    for r in summary:
        metrics[f"dice_mean/{r['config']}@{r['fraction']:g}"] = r["dice_mean"]
        metrics[f"dice_mean_std/{r['config']}@{r['fraction']:g}"] = r["dice_mean_std"]
    ctx.run_dir.save_metrics(metrics)
    return metrics


# -- declared --set options ---------------------------------------------------------------------
_SETTINGS = OptionSet(
    options_from_dataclass(
        Settings,
        help={
            "size": "side of the demo's square-padded, resized slices (a multiple of 16); a "
            "--data datalist pads its slices to its largest ROI instead",
            "features": "the six BasicUNet widths (the last feeds every domain's head)",
            "embedding_dim": "size of the regulariser's bottleneck embedding",
            "embedding_hidden": "hidden width of the embedding MLP",
            "steps": "Adam steps (--epochs sets it too)",
            "samples_per_domain": "slices of every domain in each batch",
            "lr": "Adam learning rate",
            "lam": "weight of the domain regulariser (paper 0.1)",
            "temperature": "SupCon temperature (paper 0.1)",
            "margin": "margin of the margin regulariser (paper 1.0)",
            "augment_copies": "MONAI-augmented copies of each annotated training slice",
            "test_bn": "BN statistics when scoring: running (paper) or adapt (AdaBN on test slices)",
        },
        ranges={
            "size": (16, None),
            "features": (1, None),
            "embedding_dim": (1, None),
            "embedding_hidden": (1, None),
            "steps": (1, None),
            "samples_per_domain": (1, None),
            "lr": (0, None),
            "lam": (0, None),
            "temperature": (1e-4, None),
            "margin": (0, None),
            "augment_copies": (0, None),
        },
        choices={"test_bn": TEST_BN},
        demo_defaults={"steps": 25, "augment_copies": 1},
    )
).replace("features", length=6)
_THREADS = Option(
    "threads", "int", 1, "torch CPU threads on a CPU device (the command's --threads wins)", low=1
)
_COLIN = Option(
    "colin",
    "bool",
    False,
    "second domain: Colin27/AAL subcortical structures (Debian mricron-data) instead of the "
    "MNI152 coronal brain mask",
)
OPTIONS = {
    "run": OptionSet(
        _SETTINGS.values(),
        _THREADS,
        _COLIN,
        Option(
            "label_fraction",
            "float",
            1.0,
            "annotated fraction of each domain's training slices (at least 2 slices)",
            low=0,
            high=1,
        ),
        Option(
            "select_every",
            "int",
            0,
            "keep the weights with the best mean validation Dice, scored every N steps and at the "
            "last (0: keep the last step's weights)",
            low=0,
        ),
    ),
    "reproduce": OptionSet(
        _SETTINGS.replace("steps", demo_default=None)
        .replace("augment_copies", demo_default=None)
        .values(),
        _THREADS,
        dataclasses.replace(_COLIN, default=True),
        Option(
            "fractions",
            "float",
            None,
            "label fractions of the curve",
            many=True,
            nullable=True,
            low=0,
            high=1,
            default_doc="1.0,<small_fraction>",
        ),
        Option(
            "small_fraction",
            "float",
            0.1,
            "the small label fraction of the default curve",
            low=0,
            high=1,
        ),
        Option("seeds", "int", 1, "how many seeds, counted from --seed (--data spine: 3)", low=1),
        Option(
            "budgets",
            "int",
            [1, 4, 0],
            "--data spine: annotated training subjects per domain (0 = all)",
            many=True,
            low=0,
        ),
        Option("split_seed", "int", 0, "--data spine: seed of the subject splits", low=0),
        Option(
            "max_test_subjects",
            "int",
            6,
            "--data spine: test subjects scored per domain (0 = all)",
            low=0,
        ),
        Option(
            "configs",
            "str",
            list(CONFIGS),
            "rows of the table (md_shared_bn: ablation with one shared BN)",
            many=True,
            choices=CONFIGS + ABLATIONS,
        ),
    ),
}
