"""Node-classification protocol on embeddings with a known answer."""

import pytest
import torch

from graph_ext.evaluate import evaluate_node_embeddings


def test_separable_embeddings_score_near_100_and_noise_near_chance() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    clean = torch.nn.functional.one_hot(y, 16).float() + 0.05 * torch.randn(400, 16, generator=g)
    noise = torch.randn(400, 16, generator=g)
    grid = (0.01, 1.0, 100.0)  # the protocol's 20-value grid is slow for a unit test
    good = evaluate_node_embeddings(clean, y, splits=3, c_grid=grid)
    bad = evaluate_node_embeddings(noise, y, splits=3, c_grid=grid)
    assert good["acc_mean"] > 99.0
    assert bad["acc_mean"] < 40.0
    assert len(good["accs"]) == 3 and good["acc_std"] >= 0


def test_ovr_reference_classifier_agrees_on_separable_data() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (200,), generator=g)
    z = torch.nn.functional.one_hot(y, 8).float() + 0.05 * torch.randn(200, 8, generator=g)
    assert (
        evaluate_node_embeddings(z, y, splits=2, classifier="ovr", c_grid=(0.1, 10.0))["acc_mean"]
        > 99.0
    )


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="rows"):
        evaluate_node_embeddings(torch.randn(5, 2), torch.zeros(4, dtype=torch.long))
