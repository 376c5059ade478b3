"""The nets' convolution and norm layers against PyTorch's stock ones, on the CPU: seconds and agreement.

Run from the repository root::

    .venv/bin/python -m bench.layer_kernels                          # the default model, 1 and all threads
    .venv/bin/python -m bench.layer_kernels --weights runs/default_model/weights --production

The nets build their spatial convolutions from :class:`segcore.networks.blocks.Conv3d` (oneDNN
wherever PyTorch's 2-D size rule would pick its im2col kernel) and their norms from
:class:`~segcore.networks.blocks.InstanceNorm` (a group norm of one channel per group). The
*stock* nets are the same nets, same weights, with ``nn.Conv3d`` and ``nn.InstanceNorm3d`` put
back. Three tables:

* **layers**: one layer at a time on the shapes the default model has (batch 1, inference, and
  forward + backward), stock vs ours;
* **nets**: each checkpoint's first net at its input size: a forward pass (batch 1,
  ``torch.inference_mode``) and a training step (batch 2: forward with the auxiliary heads where
  the net has them, a mean of the logits, backward), stock vs ours; the largest logit difference
  and the share of voxels whose argmax agrees;
* with ``--production``, the production-size nets (random weights, coarse 160³, fine 192³), the
  forward pass only.

Medians of ``--repeats`` after a warm-up, at one thread and at the default thread count. Figures
are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from torch import nn

from bench.timing import call_seconds
from segcore.networks import build_network
from segcore.networks.blocks import Conv3d, ConvNormAct, InstanceNorm
from segcore.networks.checkpoint import build_networks, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # (input shape, out channels, kernel, stride): the default model's convolutions
    ((1, 1, 80, 80, 80), 8, 3, 1),  # fine: full-resolution image branch
    ((1, 8, 80, 80, 80), 8, (3, 1, 1), 1),  # fine: full-resolution mixing
    ((1, 16, 80, 80, 80), 8, (1, 3, 3), 1),  # fine: full-resolution mixing of image and decoder
    ((1, 8, 40, 40, 40), 8, (1, 3, 3), 1),  # fine: level 0
    ((1, 16, 20, 20, 20), 16, (1, 3, 3), 1),  # fine: level 1
    ((1, 32, 10, 10, 10), 32, 3, 1),  # a deep level
    ((1, 1, 48, 48, 48), 8, 3, 1),  # coarse: full-resolution image branch
    ((1, 16, 24, 24, 24), 16, 3, 1),  # coarse: level 0
    ((1, 8, 80, 80, 80), 14, 1, 1),  # a 1x1x1 head: PyTorch's kernel in both (a control)
]
NORMS = [(1, 8, 80, 80, 80), (1, 16, 40, 40, 40), (2, 16, 40, 40, 40), (2, 32, 20, 20, 20)]


def stock(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with ``nn.Conv3d`` and ``nn.InstanceNorm3d`` in place of the project's layers."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is Conv3d:
                child.__class__ = nn.Conv3d
            elif type(child) is InstanceNorm:
                norm = nn.InstanceNorm3d(child.num_channels, eps=child.eps, affine=True)
                norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    return net


def median_ms(work, repeats: int) -> float:
    return 1000 * statistics.median(call_seconds(work, repeats))


def training_step(net: nn.Module, x: torch.Tensor):
    auxiliary = bool(getattr(net, "init_args", {}).get("deep_supervision"))

    def step():
        net.zero_grad(set_to_none=True)
        outputs = net(x, auxiliary=True) if auxiliary else [net(x)]
        sum(output.float().mean() for output in outputs).backward()

    return step


def layer_row(name: str, ours: nn.Module, shape: tuple[int, ...], repeats: int) -> None:
    """One layer, stock vs ours: inference, then forward + backward, at batch ``shape[0]``."""
    theirs = stock(nn.Sequential(ours))[0]
    x = torch.randn(shape)
    with torch.inference_mode():
        a, b = median_ms(lambda: theirs(x), repeats), median_ms(lambda: ours(x), repeats)
    xg = x.clone().requires_grad_()
    c = median_ms(lambda: theirs(xg).sum().backward(), repeats)
    d = median_ms(lambda: ours(xg).sum().backward(), repeats)
    print(f"{name:<42} {a:9.2f} {b:9.2f} {a / b:6.2f} | {c:13.2f} {d:6.2f} {c / d:6.2f}")


def layer_table(repeats: int) -> None:
    print("layer                                       stock ms   ours ms  ratio | fwd+bwd stock   ours  ratio")
    for shape, out_channels, kernel, stride in LAYERS:
        conv = ConvNormAct(shape[1], out_channels, kernel, stride=stride)[0]  # the nets' own convolution
        layer_row(f"conv {tuple(shape[1:])} -> {out_channels}, k {kernel}", conv, shape, repeats)
    for shape in NORMS:
        layer_row(f"norm {shape}", InstanceNorm(shape[1]), shape, repeats)


def net_row(label: str, net: nn.Module, size: list[int], repeats: int, train: bool) -> None:
    theirs = stock(net)
    x = torch.randn(1, 1, *size)
    with torch.inference_mode():
        a, b = median_ms(lambda: theirs(x), repeats), median_ms(lambda: net(x), repeats)
        expected, actual = theirs(x), net(x)
    agree = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    line = (f"{label:<34} forward {a:8.1f} {b:8.1f} ms {a / b:5.2f}x  max |logit diff| "
            f"{(expected - actual).abs().max().item():.1e}, argmax agrees {100 * agree:.4f} %")  # fmt: skip
    if train:
        xb = torch.randn(2, 1, *size)
        net.train()
        theirs.train()
        c = median_ms(training_step(theirs, xb), repeats)
        d = median_ms(training_step(net, xb), repeats)
        net.eval()
        line += f" | train step {c:8.1f} {d:8.1f} ms {c / d:5.2f}x"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.layer_kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, action="append", help="a folder with coarse.pt, fine.pt "
                        "(repeatable; default model_weights)")  # fmt: skip
    parser.add_argument("--production", action="store_true", help="also the production-size nets (forward only)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and torch's default)")
    args = parser.parse_args(argv)
    folders = args.weights or [REPO_ROOT / "model_weights"]
    default_threads = torch.get_num_threads()
    for threads in args.threads or sorted({1, default_threads}):
        torch.set_num_threads(threads)
        print(f"== {threads} thread(s), torch {torch.__version__}; stock / ours")
        layer_table(args.repeats)
        for folder in folders:
            for stage in ("coarse", "fine"):
                payload = load_checkpoint(folder / f"{stage}.pt")
                net = build_networks(payload)[0]
                net_row(f"{folder.name}/{stage}.pt {payload['inference']['input_size']}", net,
                        payload["inference"]["input_size"], args.repeats, train=True)  # fmt: skip
        if args.production:
            for arch, size in (("residual_unet3d", 160), ("efficient_context_net", 192)):
                torch.manual_seed(0)
                net = build_network(arch).eval()
                net_row(f"production {arch} {size}^3", net, [size] * 3, max(1, args.repeats // 2), train=False)
    torch.set_num_threads(default_threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
