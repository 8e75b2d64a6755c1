"""GLCNetTask training and the fine-tuning routes (every shipped ``torchgeo fit`` config runs in
test_strict.py)."""

import subprocess
import sys
import warnings

import pytest
import torch

from torchgeo_ext.task import GLCNetTask


def _task(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return GLCNetTask(backbone="resnet18", in_channels=4, size=32, patch_size=3, **kw)


def test_task_trains_a_step():
    torch.manual_seed(0)
    task = _task()
    opt = task.configure_optimizers()["optimizer"]
    before = task.model.net.encoder.conv1.weight.detach().clone()
    loss = task.training_step({"image": torch.rand(3, 4, 36, 36)}, 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    opt.step()
    assert not torch.equal(before, task.model.net.encoder.conv1.weight)
    assert task.model.local_head.net[0].weight.grad.abs().sum() > 0


def test_task_warns_for_non_paper_settings_and_checks_bands():
    with pytest.warns(UserWarning, match="temperature"):
        task = GLCNetTask(backbone="resnet18", in_channels=4, size=224, temperature=0.1)
    with pytest.raises(ValueError, match="4 bands"):
        task.training_step({"image": torch.rand(2, 3, 32, 32)}, 0)


def _glcnet_checkpoint(tmp_path):
    task = _task()
    for p in task.parameters():  # make weights distinguishable from any fresh init
        p.data.uniform_(-1, 1)
    path = tmp_path / "glcnet.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return task, path


def test_export_loads_into_torchgeo_segmentation_task(tmp_path):
    from torchgeo.trainers import SemanticSegmentationTask

    from torchgeo_ext.export import export_encoder

    task, ckpt = _glcnet_checkpoint(tmp_path)
    out = export_encoder(ckpt, tmp_path / "enc.ckpt")
    seg = SemanticSegmentationTask(
        model="deeplabv3+", backbone="resnet18", in_channels=4, num_classes=6, weights=str(out)
    )
    saved, loaded = task.model.net.encoder.state_dict(), seg.model.encoder.state_dict()
    assert set(saved) == set(loaded)  # no missing encoder keys
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_glcnet_segmentation_task_loads_encoder_and_decoder(tmp_path):
    from torchgeo_ext.finetune import GLCNetSegmentationTask

    task, ckpt = _glcnet_checkpoint(tmp_path)
    seg = GLCNetSegmentationTask(
        pretrained=str(ckpt), model="deeplabv3+", backbone="resnet18", in_channels=4, num_classes=6
    )
    for mine, theirs in [
        (task.model.net.encoder, seg.model.encoder),
        (task.model.net.decoder, seg.model.decoder),
    ]:
        a, b = mine.state_dict(), theirs.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # the reverse direction: the fine-tuned encoder exported again equals what was loaded
    from torchgeo_ext.export import encoder_state_dict

    path = tmp_path / "seg.ckpt"
    torch.save({"state_dict": seg.state_dict(), "hyper_parameters": dict(seg.hparams)}, path)
    back = encoder_state_dict(path)
    assert all(torch.equal(back[k], v) for k, v in task.model.net.encoder.state_dict().items())


def test_simclr_backbone_loads_into_segmentation_encoder(tmp_path):
    from torchgeo.trainers import SimCLRTask

    from torchgeo_ext.export import load_pretrained
    from torchgeo_ext.model import build_deeplab

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sim = SimCLRTask(
            model="resnet18", in_channels=3, version=1, layers=2, memory_bank_size=0, size=32
        )
    path = tmp_path / "simclr.ckpt"
    torch.save({"state_dict": sim.state_dict(), "hyper_parameters": dict(sim.hparams)}, path)
    net = build_deeplab("resnet18", 3)
    load_pretrained(net, path, decoder=False)
    assert torch.equal(net.encoder.layer4[1].conv2.weight, sim.backbone.layer4[1].conv2.weight)


def test_spec_import_is_light():
    code = (
        "import sys, torchgeo_ext.spec, torchgeo_ext, torchgeo_ext.options; "
        "print('torchgeo' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
