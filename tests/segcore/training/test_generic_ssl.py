"""A&D's pieces on hand-made tensors: the label diffusion and its DDIM step, the difficulty-aware
weights on a hand-made Dice history, the EMA of decoder weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segcore.training.generic_ssl import DifficultyWeights, LabelDiffusion, batch_dice, ema_parameters_, pseudo_labels


def alpha_bar(t: int, steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> float:
    """ᾱ_t of the linear schedule, by hand."""
    return math.prod(1 - (start + (end - start) * s / (steps - 1)) for s in range(t + 1))


def test_forward_noise_mixes_label_and_noise_by_the_schedule():
    diffusion = LabelDiffusion()
    x0, noise = torch.ones(2, 3, 2, 2, 2), torch.zeros(2, 3, 2, 2, 2)
    noised = diffusion.q_sample(x0, torch.tensor([0, 500]), noise)
    assert noised[0].flatten()[0].item() == pytest.approx(math.sqrt(1 - 1e-4), rel=1e-6)
    assert noised[1].flatten()[0].item() == pytest.approx(math.sqrt(alpha_bar(500)), rel=1e-5)
    pure = diffusion.q_sample(torch.zeros(1, 1, 1, 1, 1), 999, torch.ones(1, 1, 1, 1, 1))
    assert pure.item() == pytest.approx(math.sqrt(1 - alpha_bar(999)), rel=1e-5) and pure.item() > 0.99


def test_ddim_steps_are_evenly_spaced_and_a_step_keeps_the_noise_of_a_right_guess():
    diffusion = LabelDiffusion()
    assert diffusion.ddim_timesteps(10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert diffusion.ddim_timesteps(5) == [0, 250, 500, 749, 999]
    x0 = torch.tensor([[-1.0, 1.0, -1.0]])
    noise = torch.tensor([[0.3, -1.2, 0.7]])
    x_t = diffusion.q_sample(x0, 749, noise)
    # x0 guessed right: x_{t_prev} = √ᾱ_prev x0 + √(1 − ᾱ_prev) ε with the same ε (η = 0)
    step = diffusion.ddim_step(x_t, 749, 500, x0)
    expected = [
        math.sqrt(alpha_bar(500)) * a + math.sqrt(1 - alpha_bar(500)) * e for a, e in zip([-1, 1, -1], [0.3, -1.2, 0.7])
    ]
    assert step.flatten().tolist() == pytest.approx(expected, rel=1e-5)


def test_sampling_returns_the_last_clamped_guess_and_asks_at_every_step_from_noise_to_zero():
    diffusion = LabelDiffusion()
    asked = []

    def denoise(x_t, t):
        asked.append(t)
        return torch.full_like(x_t, 3.0 if t else -0.25)  # out of range at first: clamped

    x0 = diffusion.sample(denoise, (1, 2, 2, 2, 2), 5, torch.Generator().manual_seed(0))
    assert asked == [999, 749, 500, 250, 0]
    assert torch.equal(x0, torch.full((1, 2, 2, 2, 2), -0.25))


def test_batch_dice_counts_every_class_background_included():
    predicted = torch.tensor([[0, 1, 1, 2]])
    labels = torch.tensor([[0, 1, 2, 2]])
    dice = batch_dice(predicted, labels, 4)
    assert dice.tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 1.0])  # class 3 in neither: 1


def test_difficulty_weights_follow_a_hand_made_dice_history():
    weights = DifficultyWeights(2)
    history = [[0.5, 0.5], [0.6, 0.4], [0.7, 0.3]]  # class 0 learnt, class 1 unlearnt
    learn, unlearn, poor, previous = [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1e-8, 1e-8]
    for dice in history:
        got = weights.update(torch.tensor(dice))
        expected = []
        for c in range(2):
            delta = dice[c] - previous[c]
            change = delta * math.log(dice[c] / previous[c])
            learn[c] = 0.98 * learn[c] + 0.02 * (change if delta > 0 else 0.0)
            unlearn[c] = 0.98 * unlearn[c] + 0.02 * (change if delta <= 0 else 0.0)
            poor[c] = 0.98 * poor[c] + 0.02 * (1 - dice[c])
            expected.append(((unlearn[c] + 1e-8) / (learn[c] + 1e-8)) ** 0.2 * poor[c] * 2)
            previous[c] = dice[c]
        assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert got[1] > 5 * got[0]  # the class being unlearnt weighs most


def test_the_ema_moves_the_target_towards_the_sources_mean_and_leaves_shared_weights():
    torch.manual_seed(0)
    shared = nn.Conv3d(1, 2, 1)

    def decoder(value: float, extra: bool = False) -> nn.Module:
        net = nn.Module()
        net.encoder = shared  # one encoder object for all three
        net.head = nn.Conv3d(2, 3, 1)
        nn.init.constant_(net.head.weight, value)
        nn.init.constant_(net.head.bias, value)
        if extra:
            net.time = nn.Linear(4, 2)  # only the diffusion decoder has it
        return net

    theta, xi, psi = decoder(1.0), decoder(3.0, extra=True), decoder(5.0)
    encoder_before = shared.weight.clone()
    moved = ema_parameters_(theta, [xi, psi], decay=0.99)
    assert moved == 2  # head.weight and head.bias; the shared encoder and xi's time layer left alone
    assert torch.allclose(theta.head.weight, torch.full_like(theta.head.weight, 0.99 * 1 + 0.01 * 4))
    assert torch.equal(shared.weight, encoder_before)
    assert torch.equal(xi.head.weight, torch.full_like(xi.head.weight, 3.0))  # sources untouched


def test_an_ad_generic_run_trains_its_three_decoders_from_a_trained_net(tiny_store, tiny_supervised, tmp_path):
    """The real command (coarse_seg/run.sh, torchrun, one process): A&D from a supervised net (its
    weights in the three decoders), unlabeled batches, DDIM pseudo-labels, a checkpoint that
    predicts with the unlabeled decoder."""
    from segcore.networks.checkpoint import build_networks, load_checkpoint
    from tests.segcore.training.conftest import run_tiny

    run_tiny(
        tiny_store, tmp_path / "ad", "network.arch=ad_generic", "network.init_args.base=residual_unet3d",
        "semi.enabled=true", "semi.method=ad_generic", "semi.networks=1", "semi.unlabeled_batch_size=1",
        "semi.ddim_steps=2", f"semi.init_from={tiny_supervised}",
    )  # fmt: skip
    payload = load_checkpoint(tmp_path / "ad" / "last.pt")
    assert [entry["arch"] for entry in payload["networks"]] == ["ad_generic"]
    assert payload["training_state"]["finished"]
    (net,) = build_networks(payload, torch.device("cpu"), verify=True)  # its probe output reproduced
    with torch.inference_mode():
        logits = net(torch.zeros(1, 1, *payload["inference"]["input_size"]))
    assert logits.shape[1] == 14


class HandMadeAD:
    """An A&D net whose decoders give hand-made answers: D_ξ ``x0`` logits, D_ψ ``labeled`` logits."""

    def __init__(self, x0: torch.Tensor, labeled: torch.Tensor):
        self.init_args = {"num_classes": x0.shape[1]}
        self.x0, self.answer, self.asked = x0, labeled, []

    def denoise(self, images: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x_t.shape == self.x0.shape and images.shape[0] == t.shape[0]
        self.asked.append(int(t[0]))
        return self.x0

    def labeled(self, images: torch.Tensor) -> torch.Tensor:
        return self.answer


def halves(classes: int = 3, size: int = 8) -> torch.Tensor:
    """Logits of a case whose left half is class 1 and right half class 2, with a margin far past [−1, 1]."""
    logits = torch.full((1, classes, size, size, size), -10.0)
    logits[:, 1, ..., : size // 2] = 10.0
    logits[:, 2, ..., size // 2 :] = 10.0
    return logits


def test_pseudo_labels_follow_the_diffusion_answer_where_the_labeled_decoder_is_indifferent():
    images = torch.zeros(1, 1, 8, 8, 8)
    net = HandMadeAD(halves(), torch.zeros(1, 3, 8, 8, 8))
    labels = pseudo_labels(net, images, LabelDiffusion(), 5, torch.Generator().manual_seed(0))
    assert net.asked == [999, 749, 500, 250, 0]  # one D_ξ answer per DDIM step (3 · 999 / 4 rounds to 749)
    assert labels.shape == (1, 8, 8, 8)
    truth = halves().argmax(1)
    assert (labels == truth).float().mean() > 0.9  # the Gumbel noise may flip a few voxels, not the picture


def test_pseudo_labels_follow_a_certain_labeled_decoder_against_the_diffusion_answer():
    certain = torch.zeros(1, 3, 8, 8, 8)
    certain[:, 0] = 50.0  # D_ψ: background everywhere, softmax 1
    net = HandMadeAD(halves(), certain)
    labels = pseudo_labels(net, torch.zeros(1, 1, 8, 8, 8), LabelDiffusion(), 5, torch.Generator().manual_seed(0))
    assert torch.equal(labels, torch.zeros(1, 8, 8, 8, dtype=torch.long))  # 1 + smoothed share beats < 1
