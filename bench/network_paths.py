"""Ways to run the production-size networks on the CPU: seconds per forward pass and agreement.

Run from the repository root::

    .venv/bin/python -m bench.network_paths                 # torch paths only
    .venv/bin/python -m bench.network_paths --onnx          # + ONNX Runtime (optional packages, below)

Both production nets (coarse ``residual_unet3d`` at 160³, fine ``efficient_context_net`` at
192³, random weights, the same for every path), batch 1, ``torch.inference_mode``, the threads
torch uses by default (all cores). Paths: torch fp32; torch bf16 autocast; torch fp32 and bf16 in
channels-last-3d; ONNX Runtime fp32 on the CPU execution provider (the net exported with
``torch.onnx.export``, all graph optimisations on). Each path: one warm-up, then the median of
``--repeats`` passes; against torch fp32: the largest absolute logit difference and the share of
voxels whose argmax agrees (random weights make many near-ties, so this is a lower bound on what
a trained model shows). The logits are what the predictor takes: a full-resolution net's
output (the default), or with ``--output-stride 2`` a half-resolution net's before its final ×2
upsampling (which the predictor does itself, :func:`segcore.volumes.resample.upsampled_softmax`).

ONNX Runtime is not a dependency of the project; to measure it::

    .venv/bin/pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2

Figures are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.timing import call_seconds
from segcore.networks import build_network

PRODUCTION = {"residual_unet3d": 160, "efficient_context_net": 192}


class PredictorOutput(torch.nn.Module):
    """The logits the predictor takes from a net: a half-resolution net's before its final
    upsampling (the predictor does that with the softmax), a full-resolution net's as they are."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, half_resolution=self.net.output_stride == 2)


def seconds(run, repeats: int) -> float:
    return statistics.median(call_seconds(run, repeats))


def torch_paths(net: torch.nn.Module, image: torch.Tensor) -> dict:
    """name -> a function giving float32 logits."""

    def run(dtype: torch.dtype, channels_last: bool):
        model = net.to(memory_format=torch.channels_last_3d) if channels_last else net
        x = image.contiguous(memory_format=torch.channels_last_3d) if channels_last else image

        def forward() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                return model(x).float()

        return forward

    return {
        "torch fp32": run(torch.float32, False),
        "torch bf16 autocast": run(torch.bfloat16, False),
        "torch fp32 channels-last": run(torch.float32, True),
        "torch bf16 channels-last": run(torch.bfloat16, True),
    }


def onnx_path(net: torch.nn.Module, image: torch.Tensor, folder: Path):
    import onnxruntime

    path = folder / "net.onnx"
    torch.onnx.export(net, (image,), str(path), input_names=["image"], output_names=["logits"], dynamo=True)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = image.numpy()
    return lambda: torch.from_numpy(session.run(["logits"], {"image": array})[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-stride", type=int, default=1, choices=[1, 2], help="full (1) or half (2) resolution")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime (needs the optional packages)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    for arch, size in PRODUCTION.items():
        torch.manual_seed(0)
        net = PredictorOutput(build_network(arch, output_stride=args.output_stride).eval())
        image = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))
        paths = torch_paths(net, image)
        with tempfile.TemporaryDirectory() as folder:
            if args.onnx:
                paths["onnxruntime fp32"] = onnx_path(net, image, Path(folder))
            reference = paths["torch fp32"]()
            print(f"\n{arch} at {size}³:")
            for name, run in paths.items():
                logits = run()
                took = seconds(run, args.repeats)
                difference = (logits - reference).abs().max().item()
                agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
                print(f"  {name:<26} {took:6.3f} s   max |logit diff| {difference:.4f}   argmax agrees {agree:.4%}")
            net.net.to(memory_format=torch.contiguous_format)


if __name__ == "__main__":
    main()
