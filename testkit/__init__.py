"""Test support shared by the test suite and the benchmarks (they import it; neither imports the other).

* :data:`REAL_DATA`: the real CT files beside the repository (``../shared/data/real``);
* tiny random-weight coarse and fine checkpoints (:func:`write_tiny_weights`). Random weights may
  predict no organ at all; to make the crop path run, the coarse net's final 1x1x1 convolution
  gets a large bias on one class, so that class wins in every voxel (the box is then the whole
  volume). ``winner=0`` makes background win everywhere: the empty-coarse case. The fine net keeps
  its random weights: its output varies in space, which is what the geometry tests need (a wrong
  flip or permutation changes the labels);
* hand-made NIfTI files (:func:`nifti_with_header`, :data:`CT_AFFINE`, :func:`small_ct`) and the
  head of a multipart upload (:func:`upload_head`) for the input-hardening tests and the hostile
  load benchmark.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml

from segcore.labels import HU_WINDOW
from segcore.networks import build_network
from segcore.networks.checkpoint import make_payload, network_entry, save_checkpoint

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
"""The real CT files (measurement only: never to train or to choose settings)."""

TINY_NET = {"base_channels": 4, "depth": 3, "max_channels": 16}
STAGES = {"coarse": ("residual_unet3d", [16, 16, 16]), "fine": ("efficient_context_net", [24, 24, 24])}
WINNER_BIAS = 100.0


def tiny_payload(stage: str, *, winner: int | None = None, seed: int = 0, networks: int = 1) -> dict:
    """A checkpoint payload of ``networks`` tiny nets (seeds ``seed``, ``seed + 1``, ...: a pair for
    cross pseudo supervision starts differently); ``winner``: the class given a bias that wins everywhere."""
    arch, input_size = STAGES[stage]
    entries = []
    for index in range(networks):
        torch.manual_seed(seed + index)
        net = build_network(arch, **TINY_NET)
        if winner is not None:
            with torch.no_grad():
                net.head.bias[winner] += WINNER_BIAS
        entries.append(network_entry(net, input_size))
    return make_payload(stage, entries, input_size, HU_WINDOW, {"test": True})


def write_tiny_weights(
    folder: Path, *, coarse_winner: int = 1, notice: str | None = None, coarse_networks: int = 1
) -> Path:
    """``folder/coarse.pt`` (``coarse_networks`` nets; class ``coarse_winner`` wins everywhere) and
    ``folder/fine.pt`` (random), both carrying ``notice`` if given."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"notice": notice} if notice else {}
    coarse = tiny_payload("coarse", winner=coarse_winner, networks=coarse_networks)
    save_checkpoint(folder / "coarse.pt", {**coarse, **extra})
    save_checkpoint(folder / "fine.pt", {**tiny_payload("fine", seed=1), **extra})
    return folder


def nifti_with_header(path, data, affine, edit=None):
    """Write ``data`` under nibabel's header for ``affine`` after ``edit(header)``, byte for byte as
    edited (nibabel's own writer would repair a zero or negative pixdim)."""
    header = nib.Nifti1Image(data, affine).header
    header["vox_offset"] = 352
    if edit is not None:
        edit(header)
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    return path


CT_AFFINE = np.array([[-3.0, 0, 0, 90], [0, -3.0, 0, 80], [0, 0, 3.0, -60], [0, 0, 0, 1]])


def small_ct(shape=(8, 7, 6), dtype=np.int16):
    return np.random.default_rng(0).integers(-1000, 400, size=shape).astype(dtype)


def upload_head(length: int, key: str | None = None, boundary: str = "B0undary") -> bytes:
    lines = [
        "POST /segment HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {length}",
        *([f"X-API-Key: {key}"] if key else []),
    ]
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ct.nii.gz"\r\n\r\n'
    return ("\r\n".join(lines) + "\r\n\r\n" + part).encode()


def restated_keys(path: Path, defaults: dict, schema: type) -> list[str]:
    """The dotted keys a config file sets to the value it would have without them: its base's
    resolved value, or (for a file without a base) ``defaults``, the schema's. A free-form mapping
    (``network.init_args``) counts as one value."""
    from segcore.config import BASE_KEY, read_config

    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop(BASE_KEY, None)
    reference = read_config(path.parent / base, schema) if base else defaults
    found = []
    for dotted, value in _leaves(values):
        known, current = True, reference
        for part in dotted.split("."):
            if not (isinstance(current, dict) and part in current):
                known = False
                break
            current = current[part]
        if known and _plain(current) == _plain(value):
            found.append(dotted)
    return found


def _leaves(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "init_args":
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _plain(value):
    return [_plain(item) for item in value] if isinstance(value, list | tuple) else value
