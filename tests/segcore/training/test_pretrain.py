"""Dense pre-training: corresponding points, the contrastive loss, and the encoder checkpoint path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segcore.networks import build_network
from segcore.networks.checkpoint import load_checkpoint
from segcore.training import pretrain
from segcore.training.augment import AugmentConfig, random_affines
from segcore.training.pretrain import corresponding_points, dense_contrastive_loss, info_nce, load_encoder

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "coarse_seg" / "config.tiny.yaml"


def translation(x: float) -> torch.Tensor:
    """``(1, 3, 4)`` affine of a view shifted by ``x`` along the last (x) axis, normalised units."""
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.eye(3)
    theta[0, 0, 3] = x
    return theta


def test_corresponding_points_are_one_source_point_seen_inside_both_views():
    generator = torch.Generator().manual_seed(0)
    config = AugmentConfig(spatial_probability=1.0, rotation_degrees=15.0, scale=0.2, jitter=0.1)
    thetas_a, thetas_b = random_affines(3, config, generator), random_affines(3, config, generator)
    points_a, points_b = corresponding_points(thetas_a, thetas_b, 50, 0.125, generator)
    assert points_a.shape == points_b.shape == (3, 50, 3)
    source_a = points_a @ thetas_a[:, :, :3].transpose(1, 2) + thetas_a[:, None, :, 3]
    source_b = points_b @ thetas_b[:, :, :3].transpose(1, 2) + thetas_b[:, None, :, 3]
    torch.testing.assert_close(source_a, source_b, atol=1e-5, rtol=0)
    assert points_a.abs().max() <= 1 - 0.125 and points_b.abs().max() <= 1 - 0.125 + 1e-6


def shifted_views(channels: int = 16, size: int = 8):
    """Feature maps of two views of one random volume: view b is view a moved by one voxel in x
    (b's voxel i is a's voxel i + 1), so b's affine is a's plus one voxel, 2 / size."""
    volume = torch.randn(1, channels, size, size, size + 2, generator=torch.Generator().manual_seed(3))
    return [volume[..., :size]], [volume[..., 1 : size + 1]], 2 / size


def test_the_loss_is_low_only_with_the_true_correspondence_not_one_voxel_off():
    view_a, view_b, voxel = shifted_views()
    generator = torch.Generator().manual_seed(1)

    def loss(shift: float) -> tuple[float, float]:
        """The loss at the points for view b's affine, and the loss of view a against itself there."""
        generator.manual_seed(1)
        points_a, points_b = corresponding_points(translation(0.0), translation(shift), 64, 1 / 8, generator)
        ideal = dense_contrastive_loss(view_a, view_a, points_a, points_a, temperature=0.2)
        return float(dense_contrastive_loss(view_a, view_b, points_a, points_b, temperature=0.2)), float(ideal)

    (true, ideal), (off_by_one, _), (none, _) = loss(voxel), loss(2 * voxel), loss(0.0)
    # the true correspondence samples exactly the same features in both views: the ideal loss
    assert true == pytest.approx(ideal, abs=1e-5)
    assert off_by_one > 2 * true and none > 2 * true


def test_the_loss_pulls_positives_together_and_pushes_negatives_apart():
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(32, 16, generator=generator).requires_grad_()
    b = torch.randn(32, 16, generator=generator).requires_grad_()

    @torch.no_grad()
    def similarities():
        cos = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
        off = ~torch.eye(32, dtype=torch.bool)
        retrieved = (cos.argmax(1) == torch.arange(32)).float().mean()  # the positive is the nearest
        return float(cos.diagonal().mean()), float(cos[off].mean()), float(retrieved)

    positive_before, negative_before, retrieved_before = similarities()
    optimizer = torch.optim.SGD([a, b], lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        info_nce(a, b, 0.2).backward()
        optimizer.step()
    positive_after, negative_after, retrieved_after = similarities()
    assert positive_after > positive_before + 0.5
    assert negative_after < negative_before
    assert retrieved_before < 0.2 and retrieved_after > 0.9


def run_pretraining(tiny_store, out: Path, *overrides: str) -> Path:
    argv = ["--config", str(TINY), "--device", "cpu", f"store={tiny_store}", f"output_dir={out}"]
    argv += ["train.epochs=1", "train.max_steps=2", "pretrain.points=16", "optimizer.lr=0.01", *overrides]
    assert pretrain.main(argv) == 0
    return out / "encoder.pt"


def test_fine_tuning_starts_from_the_pretrained_encoder_with_a_fresh_decoder(tiny_store, tmp_path):
    from tests.segcore.training.test_training import train

    encoder = run_pretraining(tiny_store, tmp_path / "pretrain")
    saved = load_checkpoint(encoder)
    assert saved["kind"] == pretrain.ENCODER_KIND
    assert saved["networks"][0]["state_dict"] and all(
        key.startswith(("stem.", "encoder.")) for key in saved["networks"][0]["state_dict"]
    )
    # A zero learning rate keeps every net where it started.
    pair = ["semi.enabled=true", "semi.weight=0", "train.epochs=1", "optimizer.lr=0.0"]
    fresh = train(tiny_store, tmp_path / "fresh", *pair)
    tuned = train(tiny_store, tmp_path / "tuned", *pair, f"train.init_encoder={encoder}")
    for fresh_net, tuned_net in zip(fresh["networks"], tuned["networks"]):
        for name, value in tuned_net["state_dict"].items():
            if name in saved["networks"][0]["state_dict"]:
                torch.testing.assert_close(value, saved["networks"][0]["state_dict"][name], msg=name)
            else:
                torch.testing.assert_close(value, fresh_net["state_dict"][name], msg=name)
    # pre-training moved the encoder away from the initialisation both runs drew for net 0
    assert not torch.equal(
        fresh["networks"][0]["state_dict"]["stem.0.weight"], saved["networks"][0]["state_dict"]["stem.0.weight"]
    )
    # the two decoders stay differently initialised
    assert not torch.equal(
        tuned["networks"][0]["state_dict"]["head.weight"], tuned["networks"][1]["state_dict"]["head.weight"]
    )


def test_an_encoder_of_another_shape_or_a_plain_checkpoint_is_refused(tiny_store, tmp_path):
    from tests.segcore.training.test_training import train

    encoder = run_pretraining(tiny_store, tmp_path / "pretrain")
    wider = build_network("residual_unet3d", base_channels=4, depth=3, max_channels=32)
    with pytest.raises(ValueError, match=r"encoder\.pt: its encoder does not fit this network \(base_channels 8 vs 4"):
        load_encoder(wider, encoder)
    train(tiny_store, tmp_path / "plain", "train.epochs=1")
    with pytest.raises(ValueError, match="not an encoder written by dense pre-training"):
        load_encoder(
            build_network("residual_unet3d", base_channels=8, depth=3, max_channels=32), tmp_path / "plain" / "last.pt"
        )


def test_pretraining_resumes_at_its_step(tiny_store, tmp_path):
    out = tmp_path / "pretrain"
    run_pretraining(tiny_store, out, "train.max_steps=1")
    assert load_checkpoint(out / "last.pt")["step"] == 1
    (out / "encoder.pt").unlink()
    run_pretraining(tiny_store, out, "train.max_steps=3", "train.epochs=3", "--resume")
    assert load_checkpoint(out / "last.pt")["step"] == 3
    assert load_checkpoint(out / "encoder.pt")["pretrain"]["steps"] == 3
