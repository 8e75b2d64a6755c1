"""Pieces the MONAI bundle ``monai_ext/bundles/supercon_skin`` plugs into MONAI's engines.

Stage 1 needs an ``iteration_update`` for ``SupervisedTrainer`` (two views per image, projection,
SupCon); inference writes class probabilities with a small handler that adds a header row.

Bad input is one sentence, not a traceback:

* :func:`check_config` (the first ``initialize`` expression of each config) checks every setting
  and names the config file and the key (``configs/train_stage2.yaml: max_epochs must be ...``);
  :func:`check_checkpoint` and :func:`check_classes` do the same for checkpoints and data.
* :class:`ReadImaged` (MONAI's ``LoadImaged``) names a truncated or unreadable image file, and a
  floating-point image with NaN/inf pixels with their count.
* Under ``python -m monai.bundle`` an uncaught error caused by such a :class:`UserInputError` is
  printed as one line (``supercon_skin: error: ...``; exit status 1) instead of MONAI's traceback;
  Python callers (``monai.bundle.run(...)``) get the exception, see :func:`user_error`.

:class:`FinalValidationHandler` validates at the last epoch too, so stage 2 always saves a model,
whatever ``max_epochs`` and ``val_interval`` are.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler
from monai.transforms import LoadImaged
from monai.utils import CommonKeys as Keys

from monai_ext.bundle_errors import check_overrides, install_one_line_errors, user_error
from monai_ext.supercon.augment import AsymmetricViews
from monai_ext.supercon.config import SuperConConfig
from monai_ext.supercon.data import IMAGE_SUFFIXES, class_balanced_sampler, error_reason
from plugins.errors import UserInputError
from plugins.options import parse_bool

__all__ = [
    "Stage1Step",
    "ProbabilityCSV",
    "PredictionCollector",
    "write_evaluation",
    "ReadImaged",
    "FinalValidationHandler",
    "bundle_dir",
    "make_sampler",
    "image_items",
    "check_config",
    "check_classes",
    "check_checkpoint",
    "check_positive",
    "user_error",
]


def bundle_dir() -> Path:
    """Folder of the installed bundle (``configs/``, ``docs/``)."""
    return Path(__file__).resolve().parent.parent / "bundles" / "supercon_skin"


def make_sampler(items: Sequence[dict], balanced: bool, seed: int = 0) -> Any:
    """Class-balanced sampler for a datalist, or ``None`` (plain shuffling)."""
    if not parse_bool(balanced):
        return None
    return class_balanced_sampler([int(i["label"]) for i in items], seed=seed)


def image_items(folder: str | Path) -> list[dict]:
    """``[{"image": path}]`` for every image file under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if folder.is_file():
        return [{"image": str(folder)}]
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise UserInputError(
            f"image_dir {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    return [{"image": str(p)} for p in files]


class Stage1Step:
    """``iteration_update`` for stage 1: plain + strong view of each image ->
    ``network(x, project=True)`` -> (B, 2, 128) -> ``engine.loss_function`` (a
    :class:`plugins.losses.SupConLoss`) -> SGD step.

    The projection goes through ``forward``, so a ``DistributedDataParallel``-wrapped network
    all-reduces its gradients; wrap it with ``find_unused_parameters=True`` (the classifier is
    not used in stage 1). SupCon contrasts each rank's own batch unless the loss has
    ``gather_distributed`` (``configs/multi_gpu_train.yaml`` sets it: every rank's views).

    Args:
        image_size: side of both views.
        symmetric: two strong views (original SupCon) instead of SuperCon's asymmetric pair.
    """

    def __init__(self, image_size: int, symmetric: bool = False):
        self.views = AsymmetricViews(image_size, SuperConConfig(), symmetric=parse_bool(symmetric))

    def __call__(self, engine: Any, batch: dict) -> dict:
        device = engine.state.device
        image = (
            batch[Keys.IMAGE].to(device).as_tensor()
            if hasattr(batch[Keys.IMAGE], "as_tensor")
            else batch[Keys.IMAGE].to(device)
        )
        label = torch.as_tensor(batch[Keys.LABEL]).to(device).long().reshape(-1)
        net = engine.network
        net.train()
        engine.optimizer.zero_grad(set_to_none=True)
        v1, v2 = self.views(image)
        z = net(torch.cat([v1, v2]), project=True)  # through forward: DDP-safe
        b = label.shape[0]
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(torch.stack([z[:b], z[b:]], 1), label)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class ProbabilityCSV:
    """Evaluator handler writing ``image,<class 0>,<class 1>,...`` rows of class probabilities.

    Args:
        path: output CSV.
        classes: class names for the header.
    """

    def __init__(self, path: str | Path, classes: Sequence[str]):
        self.path = Path(path)
        self.classes = list(classes)
        self.rows: list[list] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Any) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for item in items:
            pred = torch.as_tensor(item[Keys.PRED]).detach().float().cpu().reshape(-1)
            meta = getattr(item[Keys.IMAGE], "meta", {})
            name = meta.get("filename_or_obj", f"item{len(self.rows)}")
            self.rows.append([str(name), *(f"{v:.6f}" for v in pred.tolist())])

    def _write(self, engine: Any) -> None:
        from plugins.reporting import atomic_write_bytes

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", *self.classes])
                w.writerows(self.rows)

        atomic_write_bytes(self.path, write)  # a temporary name, renamed once complete


class PredictionCollector:
    """Evaluator handler keeping ``(image path, label, class probabilities)`` of every item, for
    :func:`write_evaluation` (the ``evaluate`` config)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.probs: list[list[float]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.__init__())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    def _collect(self, engine: Any) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            meta = getattr(item[Keys.IMAGE], "meta", {})
            self.paths.append(str(meta.get("filename_or_obj", f"item{len(self.paths)}")))
            self.labels.append(int(torch.as_tensor(item[Keys.LABEL]).reshape(-1)[0]))
            pred = torch.as_tensor(item[Keys.PRED]).detach().float().cpu().reshape(-1)
            self.probs.append(pred.tolist())


def write_evaluation(
    validation: PredictionCollector,
    test: PredictionCollector,
    datalists: Mapping[str, Any],
    tests: Mapping[str, Any],
    class_names: Sequence[str],
    positive: Any,
    output_dir: str | Path,
    min_val_positives: int = 20,
) -> dict[str, Any]:
    """The ``evaluate`` config's last step: the positive class's F1-optimal threshold on the
    validation split, applied unchanged to the held-out test items; writes
    ``<output_dir>/predictions.csv`` (the columns ``run supercon`` writes) and
    ``<output_dir>/metrics.json`` (test metrics, per-group metrics, the number of validation
    positives behind the threshold, and how many test files are byte-identical to data files)."""
    import json

    import numpy as np

    from monai_ext.supercon.report import group_metrics, say, threshold_info, write_predictions
    from monai_ext.supercon.train import evaluate
    from plugins.metrics import f1_optimal_threshold
    from plugins.reporting import atomic_write_bytes

    classes = [str(c) for c in class_names]
    pos = check_positive(positive, classes)
    group = {i["image"]: i["group"] for k in ("validation",) for i in datalists[k]}
    group.update({i["image"]: i["group"] for i in tests["test"]})
    blocks = []
    for split, c in (("validation", validation), ("test", test)):
        blocks.append(
            {
                "paths": c.paths,
                "groups": [group.get(p, p) for p in c.paths],
                "labels": np.asarray(c.labels, dtype=np.int64),
                "probs": np.asarray(c.probs, dtype=np.float64).reshape(len(c.paths), -1),
                "split": split,
            }
        )
    val, tst = blocks
    threshold = f1_optimal_threshold(val["probs"][:, pos], val["labels"] == pos)
    info = threshold_info(
        "validation split", int((val["labels"] == pos).sum()), len(val["labels"]),
        int(min_val_positives),
    )  # fmt: skip
    metrics, cm = evaluate(tst["probs"], tst["labels"], classes, positive=pos, threshold=threshold)
    metrics.update(
        group_metrics(
            tst["probs"][:, pos],
            tst["labels"] == pos,
            tst["probs"].argmax(1) == pos,
            tst["groups"],
            threshold,
        )
    )
    leaked = len(set(tests["hashes"]) & set(datalists["hashes"]))
    if leaked:
        say(f"{leaked} test file(s) are byte-identical to files of data_dir", warning=True)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", classes, blocks)
    result = {
        "positive_class": classes[pos],
        **metrics,
        **info,
        "test_images": len(tst["labels"]),
        "test_files_also_in_data": leaked,
        "confusion": cm.tolist(),
    }
    text = json.dumps(result, indent=2)
    atomic_write_bytes(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    return result


class ReadImaged(LoadImaged):
    """MONAI's ``LoadImaged`` whose failures are one sentence naming the file.

    A truncated, corrupt or unreadable image raises :class:`UserInputError` ("image X is truncated
    or unreadable (...)") instead of MONAI's chained transform traceback, and an image with NaN or
    infinite values (a floating-point TIFF) names the file and the count. Same arguments as
    ``LoadImaged``.
    """

    def __repr__(self) -> str:  # MONAI's "applying transform ..." log line shows it
        return f"ReadImaged(keys={list(self.keys)})"

    def __call__(self, data: Mapping, reader: Any = None) -> dict:
        names = {key: data[key] for key in self.key_iterator(dict(data))}
        try:
            out = super().__call__(data, reader)
        except Exception as e:
            name = ", ".join(str(v) for v in names.values())
            raise UserInputError(
                f"image {name} is truncated or unreadable ({error_reason(e)})."
            ) from None
        for key, name in names.items():
            x = torch.as_tensor(out[key])
            if x.is_floating_point():
                bad = int((~torch.isfinite(x)).sum())
                if bad:
                    raise UserInputError(
                        f"image {name} contains {bad} NaN or infinite values; clean the data first."
                    )
        return out


class FinalValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` (every ``interval`` epochs) that also validates at the last
    epoch, so a checkpoint saver keyed on the validation metric always saves a model, e.g. with
    ``max_epochs`` 1 and ``val_interval`` 5."""

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        super().attach(engine)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._last_only), self)

    def _last_only(self, engine: Any, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0


# -- one-sentence configuration errors -------------------------------------------------------------
def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# key -> (kind, low, high); bounds inclusive
_RULES: dict[str, tuple[str, float | None, float | None]] = {
    "max_epochs": ("int", 1, None),
    "batch_size": ("int", 1, None),
    "image_size": ("int", 8, None),
    "num_classes": ("int", 2, None),
    "val_interval": ("int", 1, None),
    "patience": ("int", 1, None),
    "seed": ("int", 0, None),
    "lr": ("float", 0, None),
    "momentum": ("float", 0, 1),
    "weight_decay": ("float", 0, None),
    "temperature": ("float", 1e-4, None),
    "base_temperature": ("float", 1e-4, None),
    "val_fraction": ("float", 0.01, 0.99),
    "cache_rate": ("float", 0, 1),
    "balanced": ("bool", None, None),
    "symmetric": ("bool", None, None),
    "task": ("choice", None, None),
    "encoder_mode": ("choice", None, None),
    "arch": ("arch", None, None),
    "data_dir": ("path", None, None),
    "test_data": ("path", None, None),
    "min_val_positives": ("int", 1, None),
    "image_dir": ("path", None, None),
}
_CHOICES = {"task": ("melanoma", "multiclass"), "encoder_mode": ("eval", "train")}


def _problem(key: str, value: Any, low: float | None = None) -> str | None:
    """What is wrong with ``value`` for ``key`` (``None``: nothing)."""
    from monai_ext.supercon.model import ARCH_HELP, known_arch

    kind, lo, hi = _RULES[key]
    lo = lo if low is None else low
    if kind in ("int", "float"):
        x = _integer(value) if kind == "int" else _number(value)
        noun = "an integer" if kind == "int" else "a number"
        if lo is not None and hi is not None:
            expected = f"{noun} from {lo:g} to {hi:g}"
        elif lo is not None:
            expected = f"{noun} of at least {lo:g}"
        else:
            expected = noun
        if x is None or x != x or (lo is not None and x < lo) or (hi is not None and x > hi):
            return f"must be {expected}"
    elif kind == "bool":
        try:
            parse_bool(value)
        except ValueError:
            return "must be true or false"
    elif kind == "choice":
        if value not in _CHOICES[key]:
            return f"must be one of {', '.join(_CHOICES[key])}"
    elif kind == "arch":
        if not isinstance(value, str) or not known_arch(value):
            return f"must be {ARCH_HELP}"
    elif kind == "path" and not Path(str(value)).exists():
        return "does not exist"
    return None


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_config(
    file: str, values: Mapping[str, Any], at_least: Mapping[str, float] | None = None
) -> bool:
    """Check a bundle config's settings before any work; the first problem is one sentence naming
    the config ``file`` and the key: ``configs/train_stage1.yaml: max_epochs must be an integer
    of at least 1, got 0 (set it in the file or with --max_epochs).``

    Args:
        file: the config file, as the message should name it.
        values: key -> resolved value (``@key`` references in the config).
        at_least: tighter lower bounds for this file (stage 1 needs ``batch_size`` >= 2).

    Returns ``True`` (so the config can keep the result). Under ``monai.bundle run`` an override
    that names no key of the configs (``--max_epoch 3``) is refused first
    (:func:`monai_ext.bundle_errors.check_overrides`).
    """
    check_overrides()
    at_least = dict(at_least or {})
    for key, value in values.items():
        if key == "class_names":
            n = _integer(values.get("num_classes"))
            if not isinstance(value, list | tuple) or (n is not None and len(value) != n):
                raise UserInputError(
                    f"{file}: class_names must list num_classes ({values.get('num_classes')}) "
                    f"names, got {value!r} (set it in the file or with --class_names)."
                )
            continue
        if key not in _RULES:
            continue
        problem = _problem(key, value, at_least.get(key))
        if problem:
            raise UserInputError(
                f"{file}: {key} {problem}, got {_show(value)} (set it in the file or with --{key})."
            )
    return True


def check_classes(file: str, num_classes: Any, classes: Sequence[str]) -> bool:
    """``num_classes`` of the config ``file`` must match the classes found in the data."""
    if _integer(num_classes) != len(classes):
        raise UserInputError(
            f"{file}: num_classes is {num_classes} but the data has {len(classes)} classes "
            f"({', '.join(map(str, classes))}); pass --num_classes {len(classes)}."
        )
    return True


def check_positive(positive: Any, class_names: Sequence[str]) -> int:
    """The evaluate config's positive class (``--positive`` name or index, else the class called
    melanoma) as an index of ``class_names``; otherwise one sentence naming the config."""
    from monai_ext.supercon.data import resolve_positive

    return resolve_positive(
        positive,
        [str(c) for c in class_names],
        "configs/evaluate.yaml (class_names)",
        "--positive ",
    )


def check_checkpoint(file: str, key: str, path: Any, network: torch.nn.Module) -> bool:
    """The checkpoint at ``path`` (config ``file``'s ``key``) must exist, load safely and fit
    ``network``; otherwise one sentence naming the file, the key and what to change."""
    from plugins.checkpoint import load_checkpoint

    if not Path(str(path)).is_file():
        raise UserInputError(
            f"{file}: {key} {path} does not exist (train the earlier stage first, or pass --{key})."
        )
    obj = load_checkpoint(path, what=f"{file}: {key}")
    state = obj.get("model", obj)
    own = getattr(network, "module", network).state_dict()  # the network inside a DDP wrapper
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    if missing or unexpected or shaped:
        example = (shaped or missing or unexpected)[0]
        raise UserInputError(
            f"{file}: {key} {path} does not fit the network ({len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(shaped)} differently shaped tensors, e.g. "
            f"{example}); pass the --arch and --num_classes it was trained with."
        )
    return True


install_one_line_errors("supercon_skin")
