"""Evaluation of a condensed set and the kernel-velocity diagnostic.

* :func:`evaluate_synthetic`: train N fresh ConvNets on the synthetic set (the DC/DSA/DCC protocol:
  SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at half the epochs, DSA augmentation) and
  report test accuracy mean and std. The N models are one stacked module state trained with
  ``torch.func.vmap`` (exactly N independent SGD runs, since SGD is elementwise).
* :func:`empirical_ntk` / :func:`kernel_velocity`: the Gram matrix of the empirical neural tangent
  kernel on a probe set and its change between successive network updates (Fort et al., NeurIPS
  2020, kernel distance; used by Lee et al., ICML 2022, Sec. 4.3 to motivate the warm-up).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, stack_module_state, vmap

from plugins.data import ImageTensorDataset
from plugins.losses import full_precision
from plugins.methods.dcc.data import SyntheticSet
from plugins.methods.dcc.dsa import DSAConfig, dsa
from plugins.methods.dcc.match import Autocast, logits
from plugins.methods.dcc.model import ConvNet
from plugins.progress import progress_bar

__all__ = [
    "EvalConfig",
    "evaluate_synthetic",
    "empirical_ntk",
    "kernel_distance",
    "kernel_velocity",
]


@dataclass
class EvalConfig:
    """Training of the evaluation networks (DSA / DCC evaluation protocol)."""

    epochs: int = 1000  # DSA and DCC papers (DC used 300)
    batch_size: int = 256  # reference
    lr: float = 0.01  # reference
    momentum: float = 0.9  # reference
    weight_decay: float = 5e-4  # reference
    dsa: bool = True  # DSA / DCC evaluate with the same augmentation they condense with
    width: int = 128  # ConvNet-3 width
    depth: int = 3


def _make_models(n: int, channels: int, classes: int, size: int, cfg: EvalConfig) -> list[ConvNet]:
    return [ConvNet(channels, classes, size, cfg.width, cfg.depth) for _ in range(n)]


def _batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return list(perm.split(batch))


def _steps_per_epoch(n: int, batch: int) -> int:
    return -(-n // batch)


def _augment(x: torch.Tensor, cfg: EvalConfig, gen: torch.Generator) -> torch.Tensor:
    return dsa(x, DSAConfig(), gen) if cfg.dsa else x


def _train_vmapped(x, y, models, cfg, gen, progress, autocast: Autocast = None):
    n = len(models)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def f(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    forward = vmap(f)
    opt = torch.optim.SGD(
        list(params.values()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2], 0.1)
    total = cfg.epochs * _steps_per_epoch(len(x), cfg.batch_size)
    bar = progress_bar(total=total, desc=f"eval {n} ConvNets (vmap)", show=progress)
    for epoch in range(cfg.epochs):
        for idx in _batches(len(x), cfg.batch_size, gen):
            xb = _augment(x[idx].repeat(n, 1, 1, 1), cfg, gen).view(n, len(idx), *x.shape[1:])
            if autocast is None:
                out = forward(params, buffers, xb)
            else:  # on CUDA; on CPU autocast does not reach the vmapped ops (float32, measured)
                with autocast():
                    out = forward(params, buffers, xb)
            # sum of the per-model mean losses: each model gets exactly its own gradient
            loss = F.cross_entropy(full_precision(out.flatten(0, 1)), y[idx].repeat(n)) * n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
            if not bar.disable:  # the loss value syncs a GPU: only read when shown
                bar.set_postfix(
                    epoch=epoch + 1, loss=f"{float(loss.detach()) / n:.3g}", refresh=False
                )
        sched.step()
    bar.close()
    trained = []
    for i, m in enumerate(models):
        m.load_state_dict({k: v[i].detach() for k, v in {**params, **buffers}.items()})
        trained.append(m)
    return trained


def _train_sequential(x, y, models, cfg, gen, progress, autocast: Autocast = None):
    total = len(models) * cfg.epochs * _steps_per_epoch(len(x), cfg.batch_size)
    bar = progress_bar(total=total, desc=f"eval {len(models)} ConvNets", show=progress)
    for i, m in enumerate(models):
        opt = torch.optim.SGD(
            m.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2], 0.1)
        for epoch in range(cfg.epochs):
            for idx in _batches(len(x), cfg.batch_size, gen):
                out = logits(m, _augment(x[idx], cfg, gen), autocast)
                loss = F.cross_entropy(full_precision(out), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
                if not bar.disable:
                    bar.set_postfix(
                        model=i + 1,
                        epoch=epoch + 1,
                        loss=f"{float(loss.detach()):.3g}",
                        refresh=False,
                    )
            sched.step()
    bar.close()
    return models


@torch.no_grad()
def _accuracies(
    models: list[ConvNet], x: torch.Tensor, y: torch.Tensor, chunk: int = 1000
) -> np.ndarray:
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    forward = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)), in_dims=(0, 0, None))
    correct = torch.zeros(len(models), dtype=torch.long)
    for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
        correct += (forward(params, buffers, xs).argmax(-1) == ys).sum(1).cpu()
    return (correct.double() / len(y)).numpy()


def evaluate_synthetic(
    synthetic: SyntheticSet,
    test_set: ImageTensorDataset,
    n_models: int = 5,
    config: EvalConfig | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    vectorize: bool | None = None,
    progress: bool = False,
    return_models: bool = False,
    autocast: Autocast = None,
) -> dict[str, float] | tuple[dict[str, float], list[ConvNet]]:
    """Train ``n_models`` fresh ConvNets on ``synthetic`` and test them on ``test_set``.

    Args:
        synthetic: the condensed set (normalised images).
        test_set: real test images (N, C, H, W) in [0, 1]; normalised with the synthetic set's stats.
        n_models: number of independently initialised networks.
        config: training settings (default :class:`EvalConfig`, the papers' protocol).
        vectorize: train the N models as one vmapped stacked state (``False``: one after another;
            ``None``: vmapped on CUDA, a loop on CPU, where vmapped convolutions become grouped
            convolutions that ran ~1.3x slower in ``benchmarks/dcc.py``).
        return_models: also return the trained networks (on ``device``).
        autocast: a factory of the autocast context of the training forward passes
            (``--precision bf16-mixed``); the loss stays float32, the parameters too. The test
            accuracies are computed in float32 (one vmapped pass, which ``torch.autocast`` on CPU
            does not reach: its logits came out float32, measured), and so does the vmapped
            training below on CPU; the CPU default is the per-model loop, which autocasts.

    Returns:
        ``{"acc_mean", "acc_std", "acc_<i>"...}`` (std over models, population), and the models.
    """
    cfg = config or EvalConfig()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = synthetic.images.detach().to(dev)
    y = synthetic.labels.to(dev)
    models = [
        m.to(dev)
        for m in _make_models(n_models, x.shape[1], len(synthetic.classes), x.shape[-1], cfg)
    ]
    if vectorize is None:
        vectorize = dev.type == "cuda"
    train = _train_vmapped if vectorize else _train_sequential
    models = train(x, y, models, cfg, gen, progress, autocast)
    for m in models:
        m.eval()
    accs = _accuracies(
        models, synthetic.normalise(test_set.images.to(dev)), test_set.labels.to(dev)
    )
    out = {"acc_mean": float(accs.mean()), "acc_std": float(accs.std())}
    out.update({f"acc_{i}": float(a) for i, a in enumerate(accs)})
    return (out, models) if return_models else out


def empirical_ntk(net: torch.nn.Module, probe: torch.Tensor) -> torch.Tensor:
    """Empirical NTK Gram matrix (P, P): ``K_ij = sum_k <d f_k(x_i)/d theta, d f_k(x_j)/d theta>``
    (trace over the logits) on ``probe`` (P, C, H, W), with ``torch.func.jacrev`` + ``vmap``."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def f(p, x):
        return functional_call(net, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, probe)
    j = torch.cat([v.reshape(v.shape[0], v.shape[1], -1) for v in jac.values()], dim=-1)
    return torch.einsum("ikn,jkn->ij", j.double(), j.double())


def kernel_distance(k1: torch.Tensor, k2: torch.Tensor) -> float:
    """Fort et al. (2020) kernel distance ``1 - <K1, K2>_F / (|K1|_F |K2|_F)`` in [0, 1] for PSD K."""
    return float(1.0 - (k1 * k2).sum() / (k1.norm() * k2.norm()).clamp_min(1e-30))


def kernel_velocity(
    synthetic: SyntheticSet,
    probe: torch.Tensor,
    steps: int = 20,
    lr: float = 0.01,
    width: int = 128,
    depth: int = 3,
    seed: int = 0,
) -> list[float]:
    """Kernel distance between successive network updates of a fresh ConvNet trained on ``synthetic``
    (one full-batch SGD step with DSA per update, as in the condensation inner loop).

    Args:
        probe: (P, C, H, W) fixed normalised probe images.
    Returns:
        ``steps`` distances, ``d(K_t, K_{t+1})``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = synthetic.images.detach(), synthetic.labels
    dev = x.device
    net = ConvNet(x.shape[1], len(synthetic.classes), x.shape[-1], width, depth).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    k_prev = empirical_ntk(net, probe.to(dev))
    out = []
    for _ in range(steps):
        loss = F.cross_entropy(net(dsa(x, DSAConfig(), gen)), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        k = empirical_ntk(net, probe.to(dev))
        out.append(kernel_distance(k_prev, k))
        k_prev = k
    return out
