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

import dataclasses
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
    """Slices from a MONAI datalist (``training``/``test`` lists of ``{"image","label","domain"}``).

    Anything else (a NIfTI, an ``.npz``, a binary or non-JSON file) is one sentence saying what
    ``--data`` accepts; a volume with NaN/inf voxels is one sentence with the file and the count.
    """
    import torch.nn.functional as F

    from monai_ext.multidomain.data import datalist_items, load_volume

    lists = {key: datalist_items(path, key, what="--data") for key in ("training", "test")}
    per: dict[int, dict[str, list]] = {}
    for role, key in (("train", "training"), ("test", "test")):
        for slab, item in enumerate(lists[key]):
            img, aff = load_volume(item["image"])
            lab, _ = load_volume(item["label"])
            x = F.interpolate(
                torch.from_numpy(np.moveaxis(img, 2, 0))[:, None],
                size=(size, size),
                mode="bilinear",
            )
            y = F.interpolate(
                torch.from_numpy(np.moveaxis(lab, 2, 0))[:, None],
                size=(size, size),
                mode="nearest",
            )
            lo, hi = float(x.min()), float(x.max())
            d = per.setdefault(
                _domain_id(item, path), {"image": [], "label": [], "role": [], "slab": [], "sp": []}
            )
            d["image"].append((x - lo) / max(hi - lo, 1e-6))
            d["label"].append(y.long())
            d["role"] += [role] * len(x)
            d["slab"] += [slab + (0 if role == "train" else 10_000)] * len(x)
            sp = np.sqrt((aff[:3, :3] ** 2).sum(0))
            d["sp"].append([sp[0] * img.shape[0] / size, sp[1] * img.shape[1] / size, sp[2]])
    if sorted(per) != list(range(len(per))) or not per:
        raise UserInputError(
            f"{path}: domain ids must be 0..K-1 with training items, got {sorted(per)}."
        )
    for k, d in per.items():
        if "train" not in d["role"] or "test" not in d["role"]:
            raise UserInputError(
                f"--data {path}: domain {k} needs items in both 'training' and 'test'."
            )
    out = []
    for k in range(len(per)):
        d = per[k]
        label = torch.cat(d["label"])
        out.append(
            {
                "image": torch.cat(d["image"]).float(),
                "label": label,
                "role": np.asarray(d["role"]),
                "slab": np.asarray(d["slab"]),
                "spacing": np.mean(d["sp"], 0),
                "name": f"domain{k}",
                "classes": [f"class{c}" for c in range(int(label.max()) + 1)],
            }
        )
    return out, f"datalist {path}"


def _domain_id(item: dict, path: str) -> int:
    try:
        return int(item["domain"])
    except (TypeError, ValueError):
        raise UserInputError(
            f"--data {path}: domain {item['domain']!r} of {item['image']} is not an integer id."
        ) from None


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


def _fit_and_score(
    config: str,
    domains: list[dict],
    pools: list,
    s: Any,
    device: torch.device,
    seed: int,
    progress: bool,
    checkpointer: Any = None,
) -> dict:
    """Train ``config`` (one network, or one per domain for ``per_domain``) and score its test slabs.

    ``checkpointer`` (a single-network config only) saves and resumes the training loop."""
    from monai_ext.multidomain.train import (
        adapt_bn_statistics,
        build,
        predict,
        surface_scores,
        train,
    )

    classes = [len(d["classes"]) for d in domains]
    groups = (
        [[k] for k in range(len(domains))]
        if config == "per_domain"
        else [list(range(len(domains)))]
    )
    if checkpointer is not None and len(groups) > 1:
        raise ValueError(f"{config} trains {len(groups)} networks; checkpoint one at a time")
    result: dict[str, Any] = {"scores": {}, "pred": {}, "emb": {}, "loss": [], "nets": []}
    for group in groups:
        torch.manual_seed(seed)
        net, loss_fn = build(config, [classes[k] for k in group], s)
        hist = train(
            net,
            loss_fn,
            [pools[k] for k in group],
            s,
            device,
            seed,
            progress,
            desc=config,
            checkpointer=checkpointer,
        )
        result["loss"].append(hist)
        result["nets"].append(net)
        names = ", ".join(domains[k]["name"] for k in group)
        with phase(f"{config}: Dice/HD95/ASSD on the test slabs of {names}", show=progress):
            for local, k in enumerate(group):
                d = domains[k]
                te = np.nonzero(d["role"] == "test")[0]
                scored = (
                    adapt_bn_statistics(net, d["image"][te], local, device)
                    if s.test_bn == "adapt"
                    else net
                )
                pred, emb = predict(scored, d["image"][te], local, device)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result["scores"][k] = surface_scores(
                        pred, d["label"][te], d["slab"][te], classes[k], d["spacing"]
                    )
                result["pred"][k], result["emb"][k] = pred, emb
    return result


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
    from plugins.metrics import spectrum

    s = _settings(ctx)
    fraction = float(ctx.option("label_fraction"))
    torch.manual_seed(ctx.seed)
    domains, note = (
        _from_datalist(ctx.data, s.size)
        if ctx.data
        else _embedded(with_colin=bool(ctx.option("colin")), size=s.size)
    )
    ctx.run_dir.save_config(
        {
            "method": ctx.method,
            "data": note,
            "seed": ctx.seed,
            "config": METHOD,
            "label_fraction": fraction,
            **asdict(s),
        }
    )
    t0 = time.time()
    pools = _pools(domains, fraction, s, ctx.seed)
    res = _fit_and_score(
        METHOD, domains, pools, s, ctx.device, ctx.seed, ctx.progress, ctx.checkpointer()
    )
    metrics = _headline(res["scores"])
    metrics["train_seconds"] = time.time() - t0
    metrics["final_loss"] = res["loss"][0][-1]
    ctx.run_dir.save_metrics(metrics)
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
                                **{m: float(sc[m][c]) for m in ("dice", "hd95", "assd", "ravd")},
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
                                for m in ("dice", "hd95", "assd", "ravd")
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
            "size": "side of the resized 2-D slices (a multiple of 16)",
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
        Option("seeds", "int", 1, "how many seeds, counted from --seed", low=1),
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
