"""How far the BN running statistics sit from the real statistics of the training and test slices.

Diagnostic for the 5% gap of the multi-domain MR model (docs/methods/mr-multidomain.md). Trains
``md`` (domain-specific BN), ``per_domain`` and ``md_shared_bn`` at 5% labels, seed 0, then, for
each domain, compares every BN layer's ``running_var`` (the slot of that domain) with the
per-channel variance of its input on (a) the augmented training pool and (b) the test slices,
under the final weights. Prints the mean relative gap |running - actual| / actual over channels
and layers. Needs mricron-data. Run: ``OMP_NUM_THREADS=1 python docs/methods/mr_bn_stats.py``
(about 4 min).
"""

import numpy as np
import torch
from torch import nn

from monai_ext.multidomain.run import _embedded, _fit_and_score, _pools
from monai_ext.multidomain.train import Settings


def variance_gap(net: nn.Module, domain: int, x: torch.Tensor) -> float:
    """Mean relative gap between running and actual input variance over the BN layers used."""
    seen: dict[int, tuple[nn.BatchNorm2d, torch.Tensor]] = {}

    def hook(m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
        seen[id(m)] = (m, args[0].var((0, 2, 3)))

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.eval()
    with torch.no_grad():
        net.forward_multi(x, torch.full((len(x),), domain))
    for h in hooks:
        h.remove()
    gaps = [((m.running_var - v).abs() / v.clamp_min(1e-6)).mean() for m, v in seen.values()]
    return float(torch.stack(gaps).mean())


def main() -> None:
    torch.set_num_threads(1)
    domains, _ = _embedded(with_colin=True)
    s = Settings()
    pools = _pools(domains, 0.05, s, 0)
    for config in ("md", "per_domain", "md_shared_bn"):
        nets = _fit_and_score(config, domains, pools, s, torch.device("cpu"), 0, False)["nets"]
        for k, d in enumerate(domains):
            net, local = (nets[k], 0) if config == "per_domain" else (nets[0], k)
            test = d["image"][np.nonzero(d["role"] == "test")[0]]
            print(
                f"{config:13s} {d['name']:18s} running-var gap: training pool "
                f"{variance_gap(net, local, pools[k][0]):.3f}, test {variance_gap(net, local, test):.3f}"
            )


if __name__ == "__main__":
    main()
