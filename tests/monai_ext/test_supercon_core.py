"""SuperCon: stage-1 loss, stage-2 freezing, leakage-free splits, metric naming, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.supercon.augment import AsymmetricViews, resize
from monai_ext.supercon.config import SuperConConfig
from monai_ext.supercon.data import (
    check_classes_present,
    class_balanced_sampler,
    find_duplicates,
    load_isic_csv,
    read_image,
    split_indices,
    subsample_class,
)
from monai_ext.supercon.model import SuperConNet
from monai_ext.supercon.train import (
    class_weights,
    evaluate,
    focal_loss,
    stage1_loss,
    train_stage2,
)
from plugins.errors import UserInputError
from plugins.losses import sup_con

pytestmark = pytest.mark.usefixtures("one_thread")


def _supcon_loop(z: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Khosla et al. eq. 2 over all 2B anchors, written as explicit loops (float64)."""
    n = len(z)
    total, count = 0.0, 0
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(np.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
        total += -np.mean([z[i] @ z[p] / t - np.log(denom) for p in pos])
        count += 1
    return total / count


def test_stage1_loss_equals_sup_con_on_stacked_asymmetric_views():
    torch.manual_seed(0)
    net = SuperConNet(3, arch="micro", in_channels=3).eval()  # eval: BN batch stats out of play
    x = torch.rand(6, 3, 20, 20)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    views = AsymmetricViews(16)(x)
    # view 1 is the plain resized image, view 2 the strongly augmented one
    torch.testing.assert_close(views[0], resize(x, 16))
    assert not torch.allclose(views[0], views[1])
    loss = stage1_loss(net, views, labels)
    with torch.no_grad():
        z1, z2 = net.project(views[0]), net.project(views[1])
    expected = sup_con(torch.stack([z1, z2], 1), labels, temperature=0.07, base_temperature=0.07)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    z = torch.cat([z1, z2]).double().numpy()
    ref = _supcon_loop(z, np.concatenate([labels.numpy()] * 2), 0.07)
    assert abs(float(loss.detach()) - ref) < 1e-3 * max(1.0, abs(ref))
    loss.backward()  # gradients reach the encoder and the head, not the classifier
    assert net.encoder.stem[0].weight.grad.abs().sum() > 0
    assert net.classifier.weight.grad is None


def test_symmetric_views_augment_both():
    x = torch.rand(4, 3, 16, 16)
    v1, v2 = AsymmetricViews(16, symmetric=True)(x)
    assert not torch.allclose(v1, x) and not torch.allclose(v1, v2)


def _bn_state(net: SuperConNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("classifier")}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_stage2_updates_only_classifier(mode):
    torch.manual_seed(0)
    net = SuperConNet(2, arch="micro", in_channels=3)
    net.train()
    net(torch.rand(8, 3, 12, 12))  # move BN statistics away from their init
    before = _bn_state(net)
    cls_before = net.classifier.weight.clone()
    cfg = SuperConConfig(image_size=12, batch_size=8, lr2=0.5, stage2_encoder_mode=mode)
    x, y = torch.rand(16, 3, 12, 12), torch.tensor([0, 1] * 8)
    train_stage2(net, x, y, cfg, epochs=2)
    after = _bn_state(net)
    assert not torch.allclose(net.classifier.weight, cls_before)
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            same = torch.equal(v, after[k])
            # faithful default: BN statistics untouched; the reference's train mode moves them
            assert same if mode == "eval" else True, k
        else:  # weights of encoder and head never change
            assert torch.equal(v, after[k]), k
    if mode == "train":
        assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k), (
            "reference behaviour should update BN statistics"
        )
    else:
        net.train()  # MONAI's trainer does this every iteration
        assert not net.encoder.training and net.classifier.training
    assert all(not p.requires_grad for p in net.encoder.parameters())


def test_split_never_shares_patient_or_duplicate():
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in rng.integers(0, 40, 200)]  # ~5 images per patient
    labels = np.array([int(p[1:]) % 5 == 0 for p in patients], dtype=np.int64)  # ~20% positive
    hashes = [f"h{i}" for i in range(200)]
    for a, b in [(3, 150), (10, 77), (60, 61), (5, 199)]:  # duplicates across different patients
        hashes[b] = hashes[a]
    cross = sum(patients[a] != patients[b] for a, b in [(3, 150), (10, 77), (60, 61), (5, 199)])
    # patients are never merged through a shared file: cross-patient copies are resolved first
    with pytest.raises(UserInputError, match=f"{cross} set\\(s\\) of byte-identical files"):
        split_indices(labels, patients, hashes, 0.25, 0)
    report = find_duplicates(hashes, patients, labels)
    assert report.cross_sets == cross and len(report.dropped) == cross
    keep = np.setdiff1d(np.arange(200), report.dropped)
    patients = [patients[i] for i in keep]
    hashes, labels = [hashes[i] for i in keep], labels[keep]
    for seed in range(4):
        tr, te = split_indices(labels, patients, hashes, 0.25, seed)
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(keep)
        assert not {patients[i] for i in tr} & {patients[i] for i in te}
        assert not {hashes[i] for i in tr} & {hashes[i] for i in te}
        assert 0 < labels[te].mean() < 1 and 0 < labels[tr].mean() < 1


def test_subsample_class_ratio():
    labels = np.array([1] * 100 + [0] * 400)
    idx = subsample_class(np.arange(500), labels, 1, 0.02, seed=0)
    assert (labels[idx] == 0).sum() == 400
    assert (labels[idx] == 1).sum() == round(0.02 * 400 / 0.98)


def test_roc_auc_from_scores_differs_from_hard_label_figure():
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.45, 0.6, 0.4, 0.9])  # melanoma probability
    probs = np.stack([1 - p1, p1], 1)
    m, cm = evaluate(probs, y, ["other", "melanoma"], positive=1)
    # AUC from scores by pair counting: P(score_pos > score_neg)
    pairs = [(sp > sn) + 0.5 * (sp == sn) for sp in p1[y == 1] for sn in p1[y == 0]]
    assert m["roc_auc"] == pytest.approx(np.mean(pairs))  # 6/8 = 0.75
    hard = (p1 >= 0.5).astype(int)
    # the reference's "AUC" (roc_auc_score on hard labels) is the balanced accuracy
    assert roc_auc_score(y, hard) == pytest.approx(m["balanced_accuracy"])
    assert m["balanced_accuracy"] == pytest.approx(0.5 * (3 / 4 + 1 / 2))
    assert m["roc_auc"] != pytest.approx(m["balanced_accuracy"])
    assert m["positive_f1"] == pytest.approx(0.5)  # tp=1, fp=1, fn=1
    assert cm.tolist() == [[3, 1], [1, 1]]
    assert m["positive_predicted"] == 2 and m["positive_max_prob"] == pytest.approx(0.9)


def test_evaluate_at_a_validation_threshold_counts_scores_at_or_above_it():
    y = np.array([0, 0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.45, 0.6, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], 1)
    m, _ = evaluate(probs, y, ["other", "melanoma"], positive=1, threshold=0.4)
    # >= 0.4 calls 0.4, 0.45, 0.6, 0.9: tp=2, fp=2, fn=0 -> F1 = 4 / 6
    assert m["positive_predicted_at_threshold"] == 4
    assert m["positive_f1_at_threshold"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy_at_threshold"] == pytest.approx(0.5 * (2 / 4 + 1))
    assert m["positive_f1"] == pytest.approx(0.5)  # the argmax figure is unchanged


def test_focal_loss_and_class_weights_against_loops():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 2, 2])
    ref = 0.0
    for i in range(5):
        p = torch.softmax(logits[i].double(), 0)[y[i]]
        ref += -((1 - p) ** 2) * torch.log(p)
    assert float(focal_loss(logits, y, 2.0)) == pytest.approx(float(ref) / 5, rel=1e-5)
    w = class_weights(y, 3)
    assert w.tolist() == pytest.approx([5 / 3, 5 / 3, 5 / 9])


def test_class_balanced_sampler_draws_classes_evenly():
    labels = np.array([0] * 95 + [1] * 5)
    drawn = labels[list(class_balanced_sampler(labels, 4000, seed=0))]
    assert 0.45 < drawn.mean() < 0.55


def test_bad_inputs_raise_one_clear_error(tmp_path):
    bad = tmp_path / "ISIC_bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserInputError, match="image .*ISIC_bad.jpg is truncated or unreadable"):
        read_image(bad, 16)
    csv = tmp_path / "meta.csv"
    csv.write_text("image_name,patient_id\nISIC_bad,p1\n")
    with pytest.raises(UserInputError, match=r"missing column\(s\) \['target'\]"):
        load_isic_csv(csv)
    with pytest.raises(UserInputError, match=r"\['melanoma'\] have no images in the test split"):
        check_classes_present(np.array([0, 0, 1]), ["other", "melanoma"], "test", np.array([0, 1]))
