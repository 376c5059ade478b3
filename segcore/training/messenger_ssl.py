"""S&D-Messenger's semi-supervised step (``semi.method: sd_messenger``; Zhang et al., ICCV 2023 /
TMI, ``xmed-lab/SD-Messenger``), on a :class:`segcore.networks.messenger.MessengerNet`.

Each step, with a labeled batch and an unlabeled batch of the same size:

1. the pseudo-label of the unlabeled batch is the network's own argmax on it (eval mode: each
   case alone, no gradient, no threshold);
2. the **semantic messenger** (labeled to unlabeled) is a CutMix: a ``cutmix_size``³ block of each
   labeled case and its labels is pasted into its unlabeled partner and the partner's
   pseudo-label, at the same place, the block's centre drawn inside the labeled case's organs' box;
3. one pass over the labeled and the mixed batch together (the **domain messenger** inside the net
   lets the labeled features attend to the unlabeled ones);
4. the loss: the labeled half's Dice + cross-entropy weighted by GenericSSL's difficulty-aware
   class weights (:class:`segcore.training.generic_ssl.DifficultyWeights`, which the released code
   also uses); the mixed half's (Dice + cross-entropy) / 2 against the mixed labels; the mean
   squared difference of the labeled and the mixed logits inside the pasted block; the last two
   ramped up (``weight`` × the sigmoid ramp-up) and the sum divided by 3, as the original sums
   the three and divides by 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segcore.networks.messenger import MessengerNet
from segcore.training.generic_ssl import OneNetworkStep, batch_dice


def cutmix_blocks(
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor,
    pseudo: torch.Tensor,
    size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste a ``size``³ block of each labeled case (image and labels) into its unlabeled partner
    (image and pseudo-label) at the same place; the block's centre is drawn inside the labeled
    case's foreground box (anywhere when it has none), the block kept inside the volume.

    Returns:
        The mixed images ``(N, 1, D, H, W)``, the mixed labels ``(N, D, H, W)`` and the pasted
        blocks' mask ``(N, D, H, W)`` (bool).
    """
    mixed, mixed_labels = unlabeled.clone(), pseudo.clone()
    mask = torch.zeros_like(pseudo, dtype=torch.bool)
    for index in range(images.shape[0]):
        found = (labels[index] > 0).nonzero()
        low = found.min(0).values.tolist() if len(found) else [0, 0, 0]
        high = found.max(0).values.tolist() if len(found) else [s - 1 for s in labels.shape[1:]]
        region = []
        for axis, extent in enumerate(labels.shape[1:]):
            centre = int(torch.randint(low[axis], high[axis] + 1, (1,), generator=generator))
            width = min(size, extent)
            start = min(max(centre - width // 2, 0), extent - width)
            region.append(slice(start, start + width))
        block = (index, *region)
        mixed[index, :, region[0], region[1], region[2]] = images[index, :, region[0], region[1], region[2]]
        mixed_labels[block] = labels[block]
        mask[block] = True
    return mixed, mixed_labels, mask


class SemanticDomainStep(OneNetworkStep):
    """One S&D-Messenger step of the one :class:`MessengerNet` (see the module)."""

    network, method = MessengerNet, "sd_messenger"

    def __init__(self, trainer, config):
        if config.unlabeled_batch_size != trainer.config.data.batch_size:
            raise ValueError(
                f"semi.method=sd_messenger pairs every labeled case with an unlabeled one: semi.unlabeled_batch_size "
                f"({config.unlabeled_batch_size}) must equal data.batch_size ({trainer.config.data.batch_size})"
            )
        super().__init__(trainer, config)

    def __call__(self, trainer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        from segcore.training.augment import random_fourier_mix
        from segcore.training.cps import sigmoid_rampup
        from segcore.training.losses import deep_supervision_loss, dice_ce_loss

        member = trainer.members[0]
        net: MessengerNet = member.module
        config, deep = self.config, trainer.deep(member)
        images, labels = trainer.prepare_batch(batch, with_labels=True)
        images = random_fourier_mix(images, images, trainer.augment, trainer.generator)  # as the control's
        unlabeled, _ = trainer.prepare_batch(self.unlabeled.next(), with_labels=False)
        count = min(images.shape[0], unlabeled.shape[0])  # a short last batch on either side: pair what pairs
        images, labels, unlabeled = images[:count], labels[:count], unlabeled[:count]
        net.eval()
        with torch.no_grad():
            pseudo = trainer.run(member.net, unlabeled).float().argmax(1)
        net.train()
        mixed, mixed_labels, block = cutmix_blocks(
            images, labels, unlabeled, pseudo, config.cutmix_size, trainer.generator
        )
        outputs = trainer.run(member.net, torch.cat([images, mixed]), deep)
        logits = outputs[0] if deep else outputs
        classes = net.init_args["num_classes"]
        weights = self.difficulty.update(batch_dice(logits[:count].detach().argmax(1), labels, classes))
        weights = weights.to(images.device)
        if deep:
            labeled = deep_supervision_loss([out[:count] for out in outputs], labels, weights)
            learned = deep_supervision_loss([out[count:] for out in outputs], mixed_labels) / 2
        else:
            labeled = dice_ce_loss(logits[:count], labels, weights)
            learned = dice_ce_loss(logits[count:], mixed_labels) / 2
        inside = block[:, None].expand_as(logits[:count])
        consistency = F.mse_loss(logits[:count].float()[inside], logits[count:].float()[inside])
        weight = config.weight * sigmoid_rampup(trainer.step, self.rampup_steps)
        trainer.optimize(member, (labeled + weight * (learned + consistency)) / 3)
        return {
            "loss/labeled": labeled.item(), "loss/unlabeled": learned.item(), "loss/consistency": consistency.item(),
            "sd_weight": weight,
        }  # fmt: skip
