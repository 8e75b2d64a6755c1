"""Label-budget experiment of Boutillon et al. (MICCAI 2021) on real multi-subject, multi-site MR.

``contrastive-plugins reproduce mr-multidomain --data spine``: three domains of
:mod:`monai_ext.multidomain.subjects` (spine site A = VB3, spine site B = VB2, hippocampus), subject
splits fixed by ``split_seed``, label budget = annotated training subjects per domain, and five
rows (Sec. 3 of the paper):

* ``per_domain``: one network per domain;
* ``joint``: one network with shared BN and one head over the domains whose label sets agree (the
  two spine sites), trained on both sites' slices with site-balanced draws;
* ``md``: the multi-domain network (shared convolutions, DSBN, one head per domain);
* ``md_supcon`` / ``md_margin``: the same with the SupCon / margin regulariser (Sec. 2.3).

The model, loss, training loop, augmentation and metrics are those of
:mod:`monai_ext.multidomain.train`; this module only picks subjects, runs the grid and writes the
table, the label-budget curve, overlays and the verdict on the paper's claim. The protocol (splits,
budgets, settings and the claim's test) is written to ``protocol.md`` before any training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_ext.multidomain.config import Settings
from monai_ext.multidomain.subjects import (
    DOMAINS,
    DomainSpec,
    budget_subjects,
    common_size,
    domain_slices,
    list_subjects,
    split_subjects,
    subject_index,
)
from plugins.errors import UserInputError

__all__ = [
    "DATA_NAME",
    "VARIANTS",
    "Protocol",
    "claim_verdict",
    "run_experiment",
    "reproduce_subjects",
]

# ``--data`` name that selects this experiment in ``reproduce mr-multidomain``
DATA_NAME = "spine"
VARIANTS = ("per_domain", "joint", "md", "md_supcon", "md_margin")
# missed: the fraction of test subjects holding a structure where it was not predicted at all (the
# subjects the HD95 / ASSD means leave out; train.surface_scores)
METRICS = ("dice", "hd95", "assd", "missed")


@dataclass
class Protocol:
    """The fixed protocol (written to ``protocol.md`` before training; see docs/methods/mr-multidomain.md).

    ``budgets``: annotated training subjects per domain, 0 = all. ``seeds``: how many, from
    ``first_seed``; a seed drives the budget's subjects, augmentation, initialisation and batches.
    ``split_seed``: the subject split (the same for every seed). ``max_test_subjects``: cap on test
    subjects per domain (0: all; tests use a small cap). ``settings``: the training settings.
    """

    budgets: tuple[int, ...] = (1, 4, 0)
    seeds: int = 3
    first_seed: int = 0
    variants: tuple[str, ...] = VARIANTS
    split_seed: int = 0
    max_test_subjects: int = 6
    settings: Settings = dataclasses.field(
        default_factory=lambda: Settings(
            features=(16, 16, 32, 64, 128, 32),
            embedding_dim=64,
            embedding_hidden=128,
            steps=70,
            samples_per_domain=4,
            augment_copies=2,
        )
    )


# -- data -------------------------------------------------------------------------------------------
def load_domains(
    root: str | Path, p: Protocol, specs: tuple[DomainSpec, ...] = DOMAINS
) -> tuple[list[dict], dict[str, dict[str, list[str]]]]:
    """Slices of the training and test subjects of every domain, and the subject splits."""
    size = common_size(specs, root)
    domains, splits = [], {}
    for spec in specs:
        ids = [sid for sid, _, _ in list_subjects(spec, root)]
        split = split_subjects(ids, spec.n_val, spec.n_test, p.split_seed)
        splits[spec.name] = split
        use = dict(split)
        if p.max_test_subjects:
            use["test"] = split["test"][: p.max_test_subjects]
        d = domain_slices(spec, root, use, size)
        d["train_subjects"] = split["train"]
        domains.append(d)
    return domains, splits


def _pool(
    d: dict, subjects: list[str], s: Settings, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented slices of the annotated ``subjects`` of domain ``d``."""
    from monai_ext.multidomain.train import augment_pool

    keep = subject_index(d, subjects)
    return augment_pool(d["image"][keep], d["label"][keep], s.augment_copies, seed)


def _balanced(pools: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One pool in which every input pool has the same share (smaller ones repeated)."""
    n = max(len(p[0]) for p in pools)
    idx = [torch.from_numpy(np.resize(np.arange(len(p[0])), n)) for p in pools]
    return torch.cat([p[0][i] for p, i in zip(pools, idx, strict=True)]), torch.cat(
        [p[1][i] for p, i in zip(pools, idx, strict=True)]
    )


def joint_groups(domains: list[dict]) -> list[list[int]]:
    """Groups of >= 2 domains with identical label sets (where a joint model is defined)."""
    by: dict[tuple, list[int]] = {}
    for k, d in enumerate(domains):
        by.setdefault(tuple(d["classes"]), []).append(k)
    return [g for g in by.values() if len(g) > 1]


# -- training and scoring ---------------------------------------------------------------------------
def _score(
    net: Any, d: dict, local: int, s: Settings, device: torch.device
) -> tuple[dict, torch.Tensor]:
    from monai_ext.multidomain.train import adapt_bn_statistics, predict, surface_scores

    te = np.nonzero(d["role"] == "test")[0]
    scored = (
        adapt_bn_statistics(net, d["image"][te], local, device) if s.test_bn == "adapt" else net
    )
    pred, _ = predict(scored, d["image"][te], local, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = surface_scores(pred, d["label"][te], d["slab"][te], len(d["classes"]), d["spacing"])
    return sc, pred


def fit_variant(
    variant: str,
    domains: list[dict],
    pools: list[tuple[torch.Tensor, torch.Tensor]],
    s: Settings,
    device: torch.device,
    seed: int,
) -> tuple[dict[int, dict], dict[int, torch.Tensor]]:
    """Train one row of the table and score it on every domain it covers.

    Returns per-domain scores (``surface_scores`` dicts) and test predictions; ``joint`` covers only
    the domains of :func:`joint_groups`.
    """
    from monai_ext.multidomain.train import build, train

    classes = [len(d["classes"]) for d in domains]
    scores: dict[int, dict] = {}
    preds: dict[int, torch.Tensor] = {}
    if variant == "per_domain":
        runs = [([k], "per_domain", [pools[k]], s) for k in range(len(domains))]
    elif variant == "joint":
        # one network, shared BN, one head, site-balanced draws; a batch holds as many slices of
        # the group as the multi-domain batch does
        runs = [
            (
                g,
                "per_domain",
                [_balanced([pools[k] for k in g])],
                dataclasses.replace(s, samples_per_domain=s.samples_per_domain * len(g)),
            )
            for g in joint_groups(domains)
        ]
    elif variant in ("md", "md_supcon", "md_margin", "md_shared_bn"):
        runs = [(list(range(len(domains))), variant, pools, s)]
    else:
        raise UserInputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
    for group, config, group_pools, gs in runs:
        torch.manual_seed(seed)
        shared = config == "per_domain"  # a single-head network serves every domain of its group
        net, loss_fn = build(
            config, [classes[group[0]]] if shared else [classes[k] for k in group], gs
        )
        train(net, loss_fn, group_pools, gs, device, seed, progress=False, desc=variant)
        for local, k in enumerate(group):
            scores[k], preds[k] = _score(net, domains[k], 0 if shared else local, s, device)
    return scores, preds


# -- verdict ----------------------------------------------------------------------------------------
def claim_verdict(table: list[dict], domains: list[str], budgets: list[int]) -> list[dict]:
    """The paper's claim, tested as fixed in the protocol.

    Per domain, on the mean foreground Dice over its structures (mean and std over seeds):
    at the smallest budget ``md_supcon - per_domain > max(std_md_supcon, std_per_domain)``;
    at the largest budget ``md_supcon >= per_domain - max(std_md_supcon, std_per_domain)``.
    """
    out = []
    for name in domains:
        row: dict[str, Any] = {"domain": name}
        for tag, b in (("smallest", budgets[0]), ("full", budgets[-1])):
            got = {
                r["variant"]: r
                for r in table
                if r["domain"] == name and r["budget"] == b and r["structure"] == "mean"
            }
            if "md_supcon" not in got or "per_domain" not in got:
                row[tag] = "n/a"
                continue
            a, p = got["md_supcon"], got["per_domain"]
            diff = a["dice_mean"] - p["dice_mean"]
            tol = max(a["dice_std"], p["dice_std"])
            ok = diff > tol if tag == "smallest" else diff >= -tol
            row[tag] = f"{'holds' if ok else 'fails'} ({diff:+.3f} vs std {tol:.3f})"
        out.append(row)
    return out


# -- tables and pictures ----------------------------------------------------------------------------
def _nanmean(a: np.ndarray) -> float:
    """Mean over the finite values; NaN (quietly) when there are none."""
    a = np.asarray(a, float)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


def _budget_name(b: int) -> str:
    return "all" if b == 0 else str(b)


def summarise(rows: list[dict], budgets: list[int], variants: list[str]) -> list[dict]:
    """Mean ± std over seeds per (budget, variant, domain, structure), plus the structure mean."""
    keys = dict.fromkeys((r["budget"], r["variant"], r["domain"], r["structure"]) for r in rows)
    out = []
    order = {b: i for i, b in enumerate(budgets)}
    vorder = {v: i for i, v in enumerate(variants)}
    for b, v, dom, st in sorted(
        keys, key=lambda k: (order[k[0]], vorder[k[1]], k[2], k[3] == "mean", k[3])
    ):
        hits = [
            r
            for r in rows
            if (r["budget"], r["variant"], r["domain"], r["structure"]) == (b, v, dom, st)
        ]
        row = {"budget": b, "variant": v, "domain": dom, "structure": st, "seeds": len(hits)}
        for m in METRICS:
            vals = np.asarray([h[m] for h in hits], float)
            vals = vals[np.isfinite(vals)]
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else float("nan")
            row[f"{m}_std"] = float(vals.std()) if vals.size else float("nan")
        out.append(row)
    return out


def _markdown(table: list[dict], counts: dict[int, str]) -> str:
    lines = [
        "| budget (subjects VB3/VB2/hippo) | variant | domain | structure | Dice | HD95 (mm) | ASSD (mm) | missed | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        cells = [
            f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}"
            if m in ("dice", "missed")
            else f"{r[f'{m}_mean']:.1f} ± {r[f'{m}_std']:.1f}"
            for m in METRICS
        ]
        lines.append(
            f"| {_budget_name(r['budget'])} ({counts[r['budget']]}) | {r['variant']} | {r['domain']} | "
            f"{r['structure']} | {' | '.join(cells)} | {r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def _curve(
    path: Path, table: list[dict], domains: list[str], budgets: list[int], counts: dict[int, str]
) -> None:
    from plugins.reporting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.4), squeeze=False)
    xs = np.arange(len(budgets))
    for ax, name in zip(axes[0], domains, strict=True):
        for v in dict.fromkeys(r["variant"] for r in table):
            rs = {
                r["budget"]: r
                for r in table
                if r["variant"] == v and r["domain"] == name and r["structure"] == "mean"
            }
            if not rs:
                continue
            pts = [(i, rs[b]) for i, b in enumerate(budgets) if b in rs]
            ax.errorbar(
                [i for i, _ in pts],
                [r["dice_mean"] for _, r in pts],
                yerr=[r["dice_std"] for _, r in pts],
                marker="o",
                capsize=3,
                label=v,
            )
        ax.set_xticks(xs, [f"{_budget_name(b)}\n({counts[b]})" for b in budgets], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("annotated training subjects per domain", fontsize=8)
        ax.set_ylabel("foreground Dice (mean over structures)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overlays(
    out: Path,
    domains: list[dict],
    preds: dict[tuple[int, str], dict[int, torch.Tensor]],
    budgets: list[int],
    seed: int,
) -> None:
    """One PNG per domain: the test slice with the most foreground, truth and every variant's
    prediction, one row per budget (first seed)."""
    from plugins.reporting import pyplot

    plt = pyplot()
    for k, d in enumerate(domains):
        te = np.nonzero(d["role"] == "test")[0]
        i = int((d["label"][te] > 0).flatten(1).sum(1).argmax())
        img = d["image"][te][i, 0].numpy()
        rows = [b for b in budgets if any(bb == b and k in p for (bb, _), p in preds.items())]
        variants = list(dict.fromkeys(v for (_, v) in preds))
        if not rows:
            continue
        cols = 2 + len(variants)
        fig, axes = plt.subplots(
            len(rows), cols, figsize=(1.6 * cols, 3.0 * len(rows)), squeeze=False
        )
        for r, b in enumerate(rows):
            panels = [("image", None), ("truth", d["label"][te][i, 0])]
            panels += [(v, preds[(b, v)][k][i, 0]) for v in variants if k in preds.get((b, v), {})]
            for j in range(cols):
                ax = axes[r, j]
                ax.axis("off")
                if j >= len(panels):
                    continue
                name, lab = panels[j]
                ax.imshow(img, cmap="gray")
                if lab is not None:
                    ax.imshow(
                        np.ma.masked_equal(lab.numpy(), 0),
                        cmap="tab10",
                        vmin=0,
                        vmax=9,
                        alpha=0.6,
                        interpolation="nearest",
                    )
                ax.set_title(f"{name}\nbudget {_budget_name(b)}" if j < 2 else name, fontsize=6)
        fig.suptitle(f"{d['name']}: test subject {d['subject'][te][i]}, seed {seed}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"overlay_{d['name']}.png", dpi=110)
        plt.close(fig)


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _protocol_text(p: Protocol, splits: dict, counts: dict[int, str], domains: list[dict]) -> str:
    s = p.settings
    lines = ["# Protocol (fixed before training)", ""]
    for d in domains:
        sp = splits[d["name"]]
        n_test = len(set(d["subject"][d["role"] == "test"]))
        lines.append(
            f"- {d['name']}: {len(sp['train'])} train / {len(sp['val'])} val / {len(sp['test'])} test "
            f"subjects (split seed {p.split_seed}; scored on {n_test} test subjects); classes "
            f"{', '.join(d['classes'][1:])}; spacing {d['spacing']} mm; slices {tuple(d['image'].shape[2:])}"
        )
    lines += [
        "- budgets (annotated training subjects per domain, VB3/VB2/hippocampus): "
        + ", ".join(f"{_budget_name(b)} = {counts[b]}" for b in p.budgets),
        f"- variants: {', '.join(p.variants)}; seeds {p.first_seed}..{p.first_seed + p.seeds - 1}",
        f"- settings: {json.dumps(asdict(s))}",
        "- validation subjects are held out and unused (no early stopping, no model selection): "
        "every row trains the same number of steps.",
        "- metrics: per test subject, 3-D Dice, HD95 and ASSD (mm) per structure on the stacked "
        "slices at the working resolution; mean over subjects; mean ± std over seeds.",
        "- claim test, per domain, on the structure-mean Dice: smallest budget "
        "md_supcon - per_domain > max(std md_supcon, std per_domain); largest budget "
        "md_supcon >= per_domain - max(std md_supcon, std per_domain).",
    ]
    return "\n".join(lines) + "\n"


def run_experiment(
    out: str | Path,
    p: Protocol,
    root: str | Path | None = None,
    device: torch.device | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the grid of ``p`` and write ``protocol.md``, ``splits.json``, ``results_per_seed.csv``,
    ``table.csv``, ``table.md``, ``claim.md``, ``label_budget_curve.png`` and ``overlay_<domain>.png``
    into ``out`` (rewritten after every (seed, budget), so a cut run keeps what it finished)."""
    from plugins.data import shared_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cpu")
    root = Path(root) if root is not None else shared_path()
    budgets = sorted(set(p.budgets), key=lambda b: (b == 0, b))
    unknown = [v for v in p.variants if v not in VARIANTS + ("md_shared_bn",)]
    if unknown or not p.variants:
        raise UserInputError(
            f"variants must be a comma list of {', '.join(VARIANTS)}; got {list(p.variants)}."
        )
    t0 = time.time()
    domains, splits = load_domains(root, p)
    names = [d["name"] for d in domains]
    counts = {
        b: "/".join(str(len(budget_subjects(d["train_subjects"], b, 0))) for d in domains)
        for b in budgets
    }
    (out / "protocol.md").write_text(_protocol_text(p, splits, counts, domains))
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    sizes = ", ".join(f"{n}: {len(d['image'])} slices" for n, d in zip(names, domains, strict=True))
    log(f"[{time.time() - t0:6.0f}s] loaded {sizes}")
    rows: list[dict] = []
    preds: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    seeds = list(range(p.first_seed, p.first_seed + p.seeds))
    table: list[dict] = []
    for seed in seeds:
        for b in budgets:
            pools = [
                _pool(d, budget_subjects(d["train_subjects"], b, seed), p.settings, seed + 100 * k)
                for k, d in enumerate(domains)
            ]
            for v in p.variants:
                t1 = time.time()
                scores, pred = fit_variant(v, domains, pools, p.settings, device, seed)
                if seed == seeds[0]:
                    preds[(b, v)] = pred
                for k, sc in scores.items():
                    d = domains[k]
                    for c, st in enumerate(d["classes"][1:]):
                        rows.append(
                            {
                                "seed": seed,
                                "budget": b,
                                "variant": v,
                                "domain": d["name"],
                                "structure": st,
                                **{m: float(sc[m][c]) for m in METRICS},
                            }
                        )
                    rows.append(
                        {
                            "seed": seed,
                            "budget": b,
                            "variant": v,
                            "domain": d["name"],
                            "structure": "mean",
                            **{m: _nanmean(sc[m]) for m in METRICS},
                        }
                    )
                log(
                    f"[{time.time() - t0:6.0f}s] seed {seed} budget {_budget_name(b)} {v} ({time.time() - t1:.0f}s): "
                    + ", ".join(
                        f"{names[k]} Dice {_nanmean(sc['dice']):.3f}" for k, sc in scores.items()
                    )
                )
            table = summarise(rows, budgets, list(p.variants))
            _write_csv(out / "results_per_seed.csv", rows)
            _write_csv(out / "table.csv", table)
            (out / "table.md").write_text(_markdown(table, counts))
            verdict = claim_verdict(table, names, budgets)
            (out / "claim.md").write_text(
                "| domain | smallest budget: md_supcon > per_domain + std | full: not worse |\n|---|---|---|\n"
                + "".join(f"| {r['domain']} | {r['smallest']} | {r['full']} |\n" for r in verdict)
            )
            _curve(out / "label_budget_curve.png", table, names, budgets, counts)
            _overlays(out, domains, preds, budgets, seeds[0])
    seconds = time.time() - t0
    log(f"[{seconds:6.0f}s] done")
    return {
        "seconds": seconds,
        "table": table,
        "verdict": claim_verdict(table, names, budgets),
        "counts": counts,
    }


# -- the command ------------------------------------------------------------------------------------
def protocol_from_ctx(ctx: Any) -> Protocol:
    """:class:`Protocol` defaults, overridden by the ``--set`` keys the user gave (``seeds``,
    ``configs``, ``budgets``, ``split_seed``, ``max_test_subjects`` and the :class:`Settings`
    fields); ``--seed`` is the first seed and ``--epochs`` the number of steps."""
    p = Protocol(first_seed=int(ctx.seed))
    given = ctx.options
    s = p.settings
    changes = {f.name: given[f.name] for f in dataclasses.fields(Settings) if f.name in given}
    if ctx.epochs:
        changes.setdefault("steps", int(ctx.epochs))
    if "features" in changes:
        changes["features"] = tuple(int(v) for v in changes["features"])
    s = dataclasses.replace(s, **changes)
    for key in changes:
        ctx.used[key] = changes[key]
    kw: dict[str, Any] = {"settings": s}
    if "seeds" in given:
        kw["seeds"] = int(given["seeds"])
    if "configs" in given:
        kw["variants"] = tuple(ctx.option_list("configs"))
    kw["budgets"] = tuple(int(b) for b in ctx.option_list("budgets"))
    kw["split_seed"] = int(ctx.option("split_seed"))
    kw["max_test_subjects"] = int(ctx.option("max_test_subjects"))
    return dataclasses.replace(p, **kw)


def reproduce_subjects(ctx: Any) -> dict[str, Any]:
    """``reproduce mr-multidomain --data spine``: the experiment into the run folder."""
    p = protocol_from_ctx(ctx)
    ctx.run_dir.save_config({"method": ctx.method, "data": DATA_NAME, **asdict(p)})
    res = run_experiment(
        ctx.run_dir.ensure(), p, device=ctx.device, log=lambda m: print(m, flush=True)
    )
    metrics: dict[str, Any] = {"data": DATA_NAME, "seconds": res["seconds"]}
    for r in res["table"]:
        if r["structure"] == "mean":
            key = f"{r['domain']}/{r['variant']}@{_budget_name(r['budget'])}"
            metrics[f"dice/{key}"] = r["dice_mean"]
            metrics[f"dice_std/{key}"] = r["dice_std"]
    ctx.run_dir.save_metrics(metrics)
    return metrics
