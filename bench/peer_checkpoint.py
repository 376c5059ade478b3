"""A random-weight checkpoint of TotalSegmentator's ``total --fast`` model (task 297), planned by nnU-Net.

Runs inside the peer environment that ``bench/peer.sh`` makes (TotalSegmentator, nnunetv2, torch;
none of this repository's packages)::

    PEER_VENV/bin/python bench/peer_checkpoint.py --work WORK/nnunet --weights WORK/totalseg_home/nnunet/results

1. **A fake CT dataset**: ``--cases`` volumes at 3 mm (by default 137 x 137 voxels across, the
   410 mm field of view of the benchmark's 512 x 512 phantom, and 128 to 192 slices, a chest and
   abdomen CT of 380 to 580 mm; median 160): air -1000 HU, a body ellipse of fat (-100 HU)
   around soft tissue (40 HU), a spine of bone (700 HU) and small organ blobs (30 to 60 HU), with a
   label map whose ids span all the classes of TotalSegmentator's ``total`` task (read from
   ``totalsegmentator.map_to_binary.class_map["total"]``: 117 organs and the background).
2. **nnU-Net's own planner** on it, as ``nnUNetv2_extract_fingerprint`` and
   ``nnUNetv2_plan_experiment`` run it (default ``ExperimentPlanner``, plans ``nnUNetPlans``):
   spacing, patch size, stages and features come from nnU-Net's rules, not from this file.
3. **The network** built from those plans by the trainer TotalSegmentator names for this model
   (``nnUNetTrainer_4000epochs_NoMirroring``), with random weights, saved as
   ``fold_0/checkpoint_final.pth`` with the keys nnU-Net's predictor reads (``network_weights``,
   ``trainer_name``, ``init_args['configuration']``, ``inference_allowed_mirroring_axes``) and an
   SGD optimizer state the size of the weights, as a trained checkpoint holds (its load time counts).

The model folder lands where TotalSegmentator looks for it (``TOTALSEG_WEIGHTS_PATH``), so it never
downloads. Run time does not depend on what the weights learned. It does depend on the patch size,
which nnU-Net derives from the dataset's median shape and its memory budget for 118 classes: with
the default shapes it plans a 112 x 112 x 128 (x y z) patch at 3 mm, 5 stages of 32 to 320 features
(an image of 137 x 137 x 125 voxels, the phantom at 3 mm, is then 2 x 2 x 1 tiles; a median shorter
than 128 slices would give a 112-slice patch and twice the tiles). The plan is printed.
An existing checkpoint is kept. The last line printed (and ``--summary``'s file) is a JSON summary of the plan.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

TASK_ID = 297
DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"
TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
SPACING_MM = 3.0
HU = {"air": -1000.0, "fat": -100.0, "soft_tissue": 40.0, "bone": 700.0}
BLOBS = (4, 4, 3)  # organ blobs on a 4 x 4 x 3 grid (x y z) inside the body; with the spine 49 labels a case


def model_folder(weights: Path) -> Path:
    """The folder TotalSegmentator loads task 297 from, under ``TOTALSEG_WEIGHTS_PATH``."""
    return weights / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"


def total_labels() -> dict[str, int]:
    """``dataset.json`` labels of TotalSegmentator's ``total`` task: background and its 117 organs."""
    from totalsegmentator.map_to_binary import class_map

    return {"background": 0, **{name: int(index) for index, name in sorted(class_map["total"].items())}}


def fake_case(shape: tuple[int, int, int], first_label: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU, int16) and its label map (uint8) of ``shape`` voxels (x, y, z).

    The body is an ellipse across x and y filling 80 % of the field of view: fat around soft tissue,
    a round spine of bone behind the centre; organ blobs on a grid inside. The n-th blob is labelled
    ``(first_label + n) % classes + 1``, the spine after the last blob, so that three cases starting
    49 labels apart use every class id.
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    cx, cy = shape[0] / 2, shape[1] / 2
    ax, ay = 0.4 * shape[0], 0.3 * shape[1]
    radius = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
    image = np.full(shape, HU["air"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    image[radius <= 1.0] = HU["fat"]
    image[radius <= 0.8] = HU["soft_tissue"]
    spine = ((x - cx) ** 2 + (y - (cy + 0.6 * ay)) ** 2) <= (0.12 * ay) ** 2
    image[spine] = HU["bone"]
    blob = 0
    for i in range(BLOBS[0]):
        for j in range(BLOBS[1]):
            for k in range(BLOBS[2]):
                centre = (
                    cx + (i - 1.5) * 0.4 * ax,
                    cy + (j - 1.5) * 0.3 * ay - 0.1 * ay,
                    (k + 0.5) * shape[2] / BLOBS[2],
                )
                size = rng.uniform(0.05, 0.08) * min(ax, ay)
                inside = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= size**2
                inside &= ~spine
                image[inside] = rng.uniform(30.0, 60.0)
                labels[inside] = (first_label + blob) % classes + 1
                blob += 1
    labels[spine] = (first_label + blob) % classes + 1
    image += rng.normal(0.0, 10.0, shape).astype(np.float32)  # scanner noise
    return np.round(image).astype(np.int16), labels


def write_dataset(raw: Path, shapes: list[tuple[int, int, int]], labels: dict[str, int]) -> None:
    """nnU-Net's raw dataset layout under ``raw``: ``imagesTr``, ``labelsTr``, ``dataset.json``."""
    import nibabel as nib

    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    classes = len(labels) - 1
    for case, shape in enumerate(shapes):
        image, label = fake_case(shape, case * (int(np.prod(BLOBS)) + 1), classes, seed=case)
        nib.save(nib.Nifti1Image(image, affine), raw / "imagesTr" / f"case_{case:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), raw / "labelsTr" / f"case_{case:03d}.nii.gz")
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(shapes), "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


def plan(work: Path, shapes: list[tuple[int, int, int]], processes: int) -> tuple[dict, dict]:
    """Write the fake dataset under ``work`` and run nnU-Net's fingerprint and planner on it.

    Returns:
        ``(plans, dataset_json)`` as nnU-Net wrote them.
    """
    folders = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}
    for variable, folder in folders.items():  # read by nnunetv2.paths when used
        os.environ[variable] = str(work / folder)
        (work / folder).mkdir(parents=True, exist_ok=True)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    write_dataset(work / "raw" / DATASET, shapes, total_labels())
    extract_fingerprints([TASK_ID], num_processes=processes, check_dataset_integrity=True, verbose=False)
    plans_identifier = plan_experiments([TASK_ID])
    plans = json.loads((work / "preprocessed" / DATASET / f"{plans_identifier}.json").read_text())
    dataset_json = json.loads((work / "raw" / DATASET / "dataset.json").read_text())
    return plans, dataset_json


def random_checkpoint(plans: dict, dataset_json: dict, seed: int = 0) -> dict:
    """A checkpoint of the network ``plans`` describe, with random weights, as nnU-Net's trainer saves one
    (the dictionary to ``torch.save``)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring import (
        nnUNetTrainer_4000epochs_NoMirroring,
    )
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.manual_seed(seed)
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    network = nnUNetTrainer_4000epochs_NoMirroring.build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=True,  # as trained; the predictor rebuilds it without, same parameters
    )
    # nnUNetTrainer's optimizer; a trained checkpoint holds its momentum buffers, one per parameter
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    for parameter in network.parameters():
        optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 4000,
        "init_args": {
            "plans": plans, "configuration": CONFIGURATION, "fold": 0, "dataset_json": dataset_json, "device": "cpu",
        },
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": None,  # NoMirroring: no test-time mirroring
        "random_weights_for_timing": True,
    }  # fmt: skip
    return checkpoint


def summary(folder: Path) -> dict:
    """The plan's figures that set the model's cost, read back from ``folder``."""
    import torch

    plans = json.loads((folder / "plans.json").read_text())
    configuration = plans["configurations"][CONFIGURATION]
    architecture = configuration.get("architecture", {}).get("arch_kwargs", {})
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    return {
        "model_folder": str(folder),
        "spacing": configuration["spacing"],
        "patch_size": configuration["patch_size"],
        "patch_axes": "z y x" if list(plans["transpose_forward"]) == [0, 1, 2] else "transposed",  # SimpleITK's
        "median_image_size_in_voxels": configuration.get("median_image_size_in_voxels"),
        "n_stages": architecture.get("n_stages"),
        "features_per_stage": architecture.get("features_per_stage"),
        "classes": len(json.loads((folder / "dataset.json").read_text())["labels"]),
        # the decoder holds the encoder too: count each stored tensor once
        "parameters": sum({tensor.data_ptr(): tensor.numel() for tensor in weights.values()}.values()),
        "checkpoint_mb": round(checkpoint.stat().st_size / 1e6, 1),
    }


def make_model(folder: Path, work: Path, shape: list[int], cases: int, processes: int) -> None:
    """Plan on ``cases`` fake cases around ``shape`` (x y z voxels) in ``work``; write ``plans.json``,
    ``dataset.json`` and the random-weight checkpoint into ``folder``."""
    import torch

    x, y, z = shape
    # z from -20 % to +20 % around the median, as CTs differ in length
    shapes = [(x, y, round(z * factor)) for factor in np.linspace(0.8, 1.2, cases)]
    plans, dataset_json = plan(work, shapes, processes)
    checkpoint = random_checkpoint(plans, dataset_json)
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    partial = checkpoint_path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.rename(checkpoint_path)  # whole or absent: a stopped run never leaves half a checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the fake dataset and nnU-Net's planning files")
    parser.add_argument("--weights", type=Path, required=True, help="TOTALSEG_WEIGHTS_PATH")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[137, 137, 160],
        help="the fake cases' median size in voxels at 3 mm (x y z); z varies by -20 %% to +20 %% across cases",
    )  # fmt: skip
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="fingerprint worker processes")
    parser.add_argument("--summary", type=Path, help="also write the plan's summary (JSON) here")
    args = parser.parse_args()
    folder = model_folder(args.weights)
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    if checkpoint_path.exists():
        print(f"kept {checkpoint_path}")
    else:
        make_model(folder, args.work, args.shape, args.cases, args.processes)
    figures = json.dumps(summary(folder))
    if args.summary:
        args.summary.write_text(figures + "\n")
    print(figures)


if __name__ == "__main__":
    main()
