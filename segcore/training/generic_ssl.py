"""The pieces of GenericSSL's Aggregating & Decoupling (A&D; Wang & Li, NeurIPS 2023,
``xmed-lab/GenericSSL``), rewritten for this product's 3-D nets.

A&D trains one shared encoder and three decoders: a *diffusion* decoder D_ξ that denoises noisy
one-hot labels given the image (on labeled cases), a *labeled* decoder D_ψ trained with
difficulty-aware class weights (on labeled cases), and an *unlabeled* decoder D_θ trained on
pseudo-labels made by the other two (on unlabeled cases), whose weights also follow an
exponential moving average of theirs. Predictions come from D_θ. Here:

* :class:`LabelDiffusion`: the forward noising of a one-hot label (``x₀ = 2·onehot − 1``, a linear
  β schedule from 1e-4 to 0.02 over 1,000 steps) and deterministic DDIM sampling (η = 0) over a
  few evenly spaced steps, the model predicting ``x₀`` (clamped to [−1, 1] at every step, as the
  original's ``clip_denoised``);
* :class:`DifficultyWeights`: the class weights of D_ψ's loss from the history of D_ξ's per-class
  Dice (classes being learnt get less weight, classes being unlearnt or still poor more);
* :func:`ema_parameters_`: D_θ's parameters pulled towards the mean of D_ξ's and D_ψ's, by name.
* :func:`pseudo_labels`: what D_θ learns from on an unlabeled case (D_ξ's DDIM answer and D_ψ's softmax).

The constants are the original code's (``code/train_diffusion.py``, ``code/DiffVNet``): momentum
0.98 (an average over 50 iterations), exponent 1/5, EMA decay 0.99.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segcore.networks.aggregating import AggregatingDecouplingNet


class LabelDiffusion:
    """Gaussian diffusion of one-hot labels in ``[-1, 1]`` (DDPM's linear schedule) and its DDIM sampler."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.steps = steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        """ᾱ_t for t = 0 .. steps − 1."""

    def _alpha(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t as a tensor broadcasting over ``like`` (``t``: an int or one step per batch item)."""
        alpha = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()].to(like.device, like.dtype)
        return alpha.reshape(-1, *([1] * (like.ndim - 1))) if alpha.ndim else alpha

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε``: ``x₀`` noised to step ``t`` (per batch item)."""
        alpha = self._alpha(t, x0)
        return alpha.sqrt() * x0 + (1.0 - alpha).sqrt() * noise

    def ddim_timesteps(self, count: int) -> list[int]:
        """``count`` steps evenly spaced from 0 to ``steps − 1``, both included (the original's
        ``space_timesteps``): 10 of 1,000 are 0, 111, 222, …, 999."""
        if count < 2:
            raise ValueError(f"DDIM needs at least 2 steps, got {count}")
        stride = (self.steps - 1) / (count - 1)
        return [round(index * stride) for index in range(count)]

    def ddim_step(self, x_t: torch.Tensor, t: int, t_prev: int, x0: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step (η = 0) from ``t`` to ``t_prev`` given the predicted ``x₀``:
        the noise the prediction implies, ``ε = (x_t − √ᾱ_t x₀) / √(1 − ᾱ_t)``, carried to ``t_prev``."""
        alpha, alpha_prev = self._alpha(t, x_t), self._alpha(t_prev, x_t)
        noise = (x_t - alpha.sqrt() * x0) / (1.0 - alpha).sqrt()
        return alpha_prev.sqrt() * x0 + (1.0 - alpha_prev).sqrt() * noise

    @torch.no_grad()
    def sample(
        self,
        denoise: Callable[[torch.Tensor, int], torch.Tensor],
        shape: Sequence[int],
        count: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """DDIM from pure noise over :meth:`ddim_timesteps` (``count``), ``denoise(x_t, t)`` giving
        the predicted ``x₀``; returns the last prediction of ``x₀`` (each clamped to [−1, 1])."""
        x = torch.randn(tuple(shape), generator=generator).to(device)  # drawn where the generator lives
        timesteps = self.ddim_timesteps(count)
        x0 = x
        for index in reversed(range(count)):
            t = timesteps[index]
            x0 = denoise(x, t).float().clamp(-1.0, 1.0)
            if index:
                x = self.ddim_step(x, t, timesteps[index - 1], x0)
        return x0


def batch_dice(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int, smooth: float = 1e-8) -> torch.Tensor:
    """Per class (background included) Dice of two label maps over the whole batch:
    ``(2|P∩L| + smooth) / (|P| + |L| + smooth)``; 1 for a class in neither."""
    predicted, labels = predicted.reshape(-1).long(), labels.reshape(-1).long()
    both = torch.bincount(labels[predicted == labels], minlength=num_classes).double()
    sizes = torch.bincount(predicted, minlength=num_classes).double() + torch.bincount(labels, minlength=num_classes)
    return (2 * both + smooth) / (sizes + smooth)


class DifficultyWeights:
    """GenericSSL's difficulty-aware class weights, from a history of per-class Dice ``d``.

    Each update: ``Δ = d − d_prev``; a class is *learning* by ``[Δ > 0] Δ log(d / d_prev)`` and
    *unlearning* by ``[Δ ≤ 0] Δ log(d / d_prev)`` (both ≥ 0), each averaged with ``momentum``;
    the difficulty is ``((unlearning + ε) / (learning + ε)) ** exponent`` and the weight
    ``difficulty × avg(1 − d) × classes``, where ``avg(1 − d)`` is averaged with ``momentum`` too
    (starting at 1). No normalisation across classes: a poor, unlearning class weighs most.
    """

    def __init__(self, num_classes: int, momentum: float = 0.98, exponent: float = 0.2, epsilon: float = 1e-8):
        self.num_classes, self.momentum, self.exponent, self.epsilon = num_classes, momentum, exponent, epsilon
        self.previous = torch.full((num_classes,), epsilon, dtype=torch.float64)
        self.learning = torch.zeros(num_classes, dtype=torch.float64)
        self.unlearning = torch.zeros(num_classes, dtype=torch.float64)
        self.poorness = torch.ones(num_classes, dtype=torch.float64)

    def update(self, dice: torch.Tensor) -> torch.Tensor:
        """Take this step's per-class Dice (each > 0, as :func:`batch_dice` gives); the class weights."""
        dice = dice.detach().to(torch.float64).cpu()
        delta = dice - self.previous
        change = delta * torch.log(dice / self.previous)
        learn, unlearn = torch.where(delta > 0, change, 0.0), torch.where(delta <= 0, change, 0.0)
        self.previous = dice
        keep = self.momentum
        self.learning = keep * self.learning + (1 - keep) * learn
        self.unlearning = keep * self.unlearning + (1 - keep) * unlearn
        self.poorness = keep * self.poorness + (1 - keep) * (1 - dice)
        difficulty = ((self.unlearning + self.epsilon) / (self.learning + self.epsilon)) ** self.exponent
        return (difficulty * self.poorness * self.num_classes).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"previous": self.previous, "learning": self.learning, "unlearning": self.unlearning,
                "poorness": self.poorness}  # fmt: skip

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.to(torch.float64))


@torch.no_grad()
def ema_parameters_(target: nn.Module, sources: Sequence[nn.Module], decay: float = 0.99) -> int:
    """``target ← decay · target + (1 − decay) · mean(sources)``, parameter by parameter, matched by
    name; a parameter some source lacks, or that a source shares with the target (a shared
    encoder), is left alone. Returns how many parameters moved."""
    named = [dict(source.named_parameters()) for source in sources]
    moved = 0
    for name, parameter in target.named_parameters():
        partners = [parameters.get(name) for parameters in named]
        if any(p is None or p is parameter or p.shape != parameter.shape for p in partners):
            continue
        mean = torch.stack([p.detach() for p in partners]).mean(0)
        parameter.mul_(decay).add_(mean, alpha=1 - decay)
        moved += 1
    return moved


def gaussian_smooth(volumes: torch.Tensor, sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    """Each channel of ``(N, C, D, H, W)`` smoothed by a separable 3-D Gaussian (``size`` voxels, edges replicated)."""
    offsets = torch.arange(size, dtype=torch.float32, device=volumes.device) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(volumes.dtype)
    channels, pad = volumes.shape[1], size // 2
    out = volumes
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = size
        weight = kernel.reshape(shape).expand(channels, 1, *shape[2:]).contiguous()
        padding = [0, 0, 0, 0, 0, 0]
        padding[2 * (2 - axis)], padding[2 * (2 - axis) + 1] = pad, pad
        out = F.conv3d(F.pad(out, padding, mode="replicate"), weight, groups=channels)
    return out


@torch.no_grad()
def pseudo_labels(
    net: AggregatingDecouplingNet,
    images: torch.Tensor,
    diffusion: LabelDiffusion,
    ddim_steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A&D's pseudo-labels ``(N, D, H, W)`` of ``images`` ``(N, 1, D, H, W)``: the argmax of the
    Gaussian-smoothed soft Gumbel-softmax (τ 1) of D_ξ's DDIM answer (``ddim_steps`` steps from
    noise drawn by ``generator``) plus D_ψ's softmax; what D_θ is trained on."""
    shape = (images.shape[0], net.init_args["num_classes"], *images.shape[2:])

    def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
        return net.denoise(images, x_t, torch.full((shape[0],), t, device=images.device))

    sampled = diffusion.sample(denoise, shape, ddim_steps, generator, images.device)
    soft = F.gumbel_softmax(sampled.float(), tau=1.0, hard=False, dim=1)
    return (gaussian_smooth(soft) + torch.softmax(net.labeled(images).float(), dim=1)).argmax(1)


class OneNetworkStep:
    """What the one-network methods share: the check of the run's one net, the unlabeled stream,
    the ramp-up length, GenericSSL's difficulty weights and their resumable state."""

    network: type[nn.Module] = nn.Module
    method = ""

    def __init__(self, trainer, config):
        from segcore.training.cps import unlabeled_stream

        if len(trainer.members) != 1 or not isinstance(trainer.members[0].module, self.network):
            raise ValueError(
                f"semi.method={self.method} trains one network of network.arch {self.method} (semi.networks: 1)"
            )
        self.config = config
        self.unlabeled = unlabeled_stream(trainer, config)
        self.rampup_steps = config.rampup_length(trainer.total_steps)
        self.difficulty = DifficultyWeights(trainer.members[0].module.init_args["num_classes"])

    def state_dict(self) -> dict[str, Any]:
        return {"unlabeled": self.unlabeled.state_dict(), "difficulty": self.difficulty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("unlabeled"):
            self.unlabeled.load_state_dict(state["unlabeled"])
        if state.get("difficulty"):
            self.difficulty.load_state_dict(state["difficulty"])


class AggregatingDecouplingStep(OneNetworkStep):
    """One A&D step (``semi.method: ad_generic``) of the one :class:`AggregatingDecouplingNet`:

    1. D_θ's parameters ← ``ema_decay`` · D_θ + (1 − ``ema_decay``) · mean(D_ξ, D_ψ) (by name; the
       shared encoder is not touched);
    2. D_ξ denoises the labeled batch's noisy one-hot labels at random steps: Dice + CE against
       the labels; its per-class Dice updates the difficulty weights;
    3. D_ψ on the labeled batch: Dice + CE weighted by the difficulty (every output of a deeply
       supervised net);
    4. no gradient: the pseudo-label of the unlabeled batch is the argmax of the Gaussian-smoothed
       soft Gumbel-softmax of D_ξ's DDIM answer (``ddim_steps`` steps) plus D_ψ's softmax;
    5. D_θ on the unlabeled batch: Dice + CE against the pseudo-label, weighted by
       ``weight`` × the sigmoid ramp-up;

    one optimiser step on the sum.
    """

    network, method = AggregatingDecouplingNet, "ad_generic"

    def __init__(self, trainer, config):
        if trainer.context.distributed:  # its three decoders are run one by one, outside DDP's forward
            raise ValueError(
                "semi.method=ad_generic runs in one process (--nproc 1): its gradients are not synchronised"
            )
        super().__init__(trainer, config)
        self.diffusion = LabelDiffusion()

    def __call__(self, trainer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        from segcore.training.augment import random_fourier_mix
        from segcore.training.cps import sigmoid_rampup
        from segcore.training.losses import deep_supervision_loss, dice_ce_loss

        member = trainer.members[0]
        net: AggregatingDecouplingNet = member.module
        config, deep = self.config, trainer.deep(member)
        ema_parameters_(net.unlabeled, [net.diffusion, net.labeled], config.ema_decay)
        images, labels = trainer.prepare_batch(batch, with_labels=True)
        images = random_fourier_mix(images, images, trainer.augment, trainer.generator)  # as the control's
        unlabeled, _ = trainer.prepare_batch(self.unlabeled.next(), with_labels=False)
        classes = net.init_args["num_classes"]
        device = images.device
        clean = F.one_hot(labels, classes).permute(0, 4, 1, 2, 3).float() * 2 - 1
        steps = torch.randint(0, self.diffusion.steps, (images.shape[0],), generator=trainer.generator).to(device)
        noise = torch.randn(clean.shape, generator=trainer.generator).to(device)
        with trainer.autocast():
            denoised = net.denoise(images, self.diffusion.q_sample(clean, steps, noise), steps)
        denoising = dice_ce_loss(denoised, labels)
        weights = self.difficulty.update(batch_dice(denoised.detach().argmax(1), labels, classes)).to(device)
        labeled = trainer.run(net.labeled, images, deep)
        decoupled = deep_supervision_loss(labeled, labels, weights) if deep else dice_ce_loss(labeled, labels, weights)
        with trainer.autocast():
            pseudo = pseudo_labels(net, unlabeled, self.diffusion, config.ddim_steps, trainer.generator)
        student = trainer.run(net.unlabeled, unlabeled, deep)
        learned = deep_supervision_loss(student, pseudo) if deep else dice_ce_loss(student, pseudo)
        weight = config.weight * sigmoid_rampup(trainer.step, self.rampup_steps)
        trainer.optimize(member, denoising + decoupled + weight * learned)
        return {
            "loss/denoising": denoising.item(), "loss/labeled": decoupled.item(), "loss/unlabeled": learned.item(),
            "ad_weight": weight, "difficulty/max": float(weights.max()),
        }  # fmt: skip
