"""Run directories: file names, merges, atomic checkpoints, tables and the standard plots."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml

from plugins.reporting import RunContext, RunDir, embed_2d, markdown_table


def test_run_dir_names_and_clash_suffix(tmp_path):
    a = RunDir(root=tmp_path, method="simclr")
    b = RunDir(root=tmp_path, method="simclr")
    assert a.path.parent == tmp_path and a.path.name.startswith("simclr-")
    assert a.path != b.path
    assert not a.path.exists() and not b.path.exists()  # created when the first file is written
    a.save_metrics({"x": 1.0})
    b.save_config({"y": 2})
    assert a.path.is_dir() and b.path.is_dir()
    assert RunDir(path=tmp_path / "fixed").path == tmp_path / "fixed"


def test_config_and_metrics_are_plain_and_merged(tmp_path):
    run = RunDir(path=tmp_path)
    run.save_config(
        {"lr": torch.tensor(0.5), "shape": (1, 2), "device": torch.device("cpu"), "p": tmp_path}
    )
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg == {"lr": 0.5, "shape": [1, 2], "device": "cpu", "p": str(tmp_path)}
    run.save_metrics({"acc": np.float32(0.25), "curve": torch.tensor([1.0, 2.0])})
    run.save_metrics({"loss": float("nan")})
    data = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN written as text
    assert data["acc"] == 0.25 and data["curve"] == [1.0, 2.0] and data["loss"] == "nan"
    assert run.load_metrics() == data
    run.save_metrics({"acc": 1.0}, merge=False)
    assert run.load_metrics() == {"acc": 1.0}


def test_checkpoint_is_atomic_and_loadable(tmp_path):
    run = RunDir(path=tmp_path)
    state = {"w": torch.arange(4.0), "epoch": 3}
    out = run.save_checkpoint(state)
    loaded = torch.load(out, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_markdown_table_union_of_columns(tmp_path):
    rows = [{"method": "a", "acc": 0.5}, {"method": "b", "nmi": 1}]
    text = markdown_table(rows)
    assert text.splitlines() == [
        "| method | acc | nmi |",
        "|---|---|---|",
        "| a | 0.5000 |  |",
        "| b |  | 1 |",
    ]
    assert RunDir(path=tmp_path).save_table(rows).read_text() == text
    assert markdown_table([]) == ""


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_standard_plots_are_pngs(tmp_path):
    run = RunDir(path=tmp_path)
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(30, 8)), rng.integers(0, 3, 30)
    outs = [
        run.plot_loss([3.0, 2.0, 1.5]),
        run.plot_loss({"train": [1.0, 0.5], "val": [1.2, 0.9]}, name="loss2.png"),
        run.plot_spectrum({"random": torch.rand(8), "collapsed": np.array([1.0, 0, 0])}),
        run.plot_embedding(z, y, title="toy"),
    ]
    assert all(p.exists() and _is_png(p) for p in outs)


def test_embed_2d_shapes():
    rng = np.random.default_rng(0)
    assert embed_2d(rng.normal(size=(10, 1))).shape == (10, 2)  # padded when D = 1
    xy = embed_2d(rng.normal(size=(20, 5)))  # PCA path below 50 points (t-SNE is too slow here)
    assert xy.shape == (20, 2) and np.isfinite(xy).all()


def test_run_context_option(tmp_path):
    ctx = RunContext("m", RunDir(path=tmp_path), options={"k": 3})
    assert ctx.option("k") == 3 and ctx.option("missing", 7) == 7
    assert ctx.seed == 0 and not ctx.demo and ctx.data is None


def test_option_list_accepts_commas_yaml_lists_and_scalars(tmp_path):
    from plugins.reporting import RunContext, RunDir

    ctx = RunContext(
        method="x",
        run_dir=RunDir(path=tmp_path / "r"),
        options={"a": "0, 1,2", "b": [3, 4], "c": 5},
    )
    assert ctx.option_list("a") == ["0", "1", "2"]
    assert ctx.option_list("b") == [3, 4]
    assert ctx.option_list("c") == [5]
    assert ctx.option_list("missing", "p,q") == ["p", "q"]


def test_option_list_of_an_empty_set_is_empty(tmp_path):
    from plugins.options import Option, OptionSet, parse_pairs
    from plugins.reporting import RunContext, RunDir

    # `--set ratios=` switches a list option off (e.g. SuperCon's 8-class-only run)
    options = parse_pairs(["ratios=", "methods= "])
    declared = OptionSet(
        Option("ratios", "any", [0.02, "natural"], many=True),
        Option("methods", "str", ["ce"], many=True),
    )
    ctx = RunContext(
        method="x", run_dir=RunDir(path=tmp_path / "r"), options=options, option_set=declared
    )
    assert ctx.option_list("ratios", [0.02, "natural"]) == []
    assert ctx.option_list("methods", ["ce"]) == []
