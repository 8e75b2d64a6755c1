"""DCC's condensation settings (Lee et al., ICML 2022; DC, Zhao et al., ICLR 2021), each default once
with its source."""

from __future__ import annotations

from dataclasses import dataclass

from plugins.methods.dcc.match import loops_for_ipc

__all__ = ["DCCConfig"]


@dataclass
class DCCConfig:
    """Condensation settings; defaults are the papers' (DC Sec. 4 / DCC Sec. 5 and their appendices)."""

    outer_iters: int = 1000  # DC and DCC: 1,000 outer iterations
    batch_real: int = 256  # DC / DCC: 256 real images per class per matching step
    lr_img: float = 0.1  # DC / DCC: SGD on the synthetic images
    momentum_img: float = 0.5  # DC / DCC
    lr_net: float = 0.01  # DC / DCC: network updates inside the loop (plain SGD)
    batch_train: int = 256  # DC / DCC: batch of the network updates on the synthetic set
    inner_loops: int | None = None  # None: from the ipc table (loops_for_ipc)
    net_epochs: int | None = None  # None: from the ipc table
    warmup_outer: int | None = None  # DCC: 250 (of 1,000); None scales 250/1000 to outer_iters
    warmup_inner: int = 10  # DCC: contrastive from the 10th image update of an outer iteration on
    dsa: bool = True  # DSA augmentation in matching and network updates
    init: str = "real"  # "real" (random real images of the class) or "noise" (standard normal)
    width: int = 128  # ConvNet-3 width
    depth: int = 3  # ConvNet-3

    def resolved_warmup_outer(self) -> int:
        if self.warmup_outer is not None:
            return self.warmup_outer
        return int(250 * self.outer_iters / 1000 + 0.5)

    def resolved_loops(self, ipc: int) -> tuple[int, int]:
        """(inner image updates per outer iteration, network epochs per inner step) at ``ipc``:
        the set values, else the papers' table (:func:`loops_for_ipc`)."""
        table_inner, table_epochs = loops_for_ipc(ipc)
        inner = table_inner if self.inner_loops is None else self.inner_loops
        return inner, table_epochs if self.net_epochs is None else self.net_epochs
