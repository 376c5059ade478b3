"""The loop a review leads to, end to end on tiny phantoms: segment a batch with a weak model
(predict.sh), correct two cases through the review station's save API (the phantoms' true labels as
the painting) and accept one, export, prepare, and fine-tune the coarse stage from the weak model
(real torchrun), semi-supervised: the reviewed cases labeled, the rest unlabeled. How much such a
fine-tune gains is measured by ``bench.review_loop``, not here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import torch

from data_prepare.prepare import PrepareConfig, run
from predict.batch import main as predict_main
from review.export import export_labels
from segcore.config import load_config
from segcore.networks.checkpoint import load_checkpoint
from segcore.phantom import write_dataset
from segcore.store import CaseStore
from testkit import TINY_NET, write_tiny_weights
from tests.review.conftest import review_station

ROOT = Path(__file__).resolve().parents[2]


def test_segment_review_export_prepare_and_fine_tune(tmp_path):
    phantoms = tmp_path / "phantoms"
    write_dataset(phantoms, 0, 4, 0, size="small", seed=5, unlabeled_masks=True, progress=False)
    batch, outputs = phantoms / "trainu_images", tmp_path / "masks"
    weak = write_tiny_weights(tmp_path / "weak", coarse_networks=2)  # a pair, as semi-supervised training makes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert predict_main(["-i", str(batch), "-o", str(outputs), "--weights", str(weak), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)

    with review_station(outputs) as url:
        session = httpx.get(f"{url}/api/session").json()
        headers = {session["header"]: session["token"]}
        for case in ("Case_00001", "Case_00002"):  # corrected: the painting is the truth
            truth = (phantoms / "trainu_mask" / f"{case}.nii.gz").read_bytes()
            answer = httpx.put(f"{url}/api/cases/{case}/correction", content=truth, headers=headers)
            assert answer.status_code == 200, answer.text
        assert httpx.post(f"{url}/api/cases/Case_00003/accept", headers=headers).status_code == 200

    data = tmp_path / "data"
    report = export_labels(outputs, data)
    assert report.labeled == {"Case_00001": "corrected", "Case_00002": "corrected", "Case_00003": "accepted"}
    assert report.unlabeled == ["Case_00004"] and not report.skipped
    exported = np.asarray(nib.load(data / "train_mask" / "Case_00001.nii.gz").dataobj)
    truth = np.asarray(nib.load(phantoms / "trainu_mask" / "Case_00001.nii.gz").dataobj)
    assert np.array_equal(exported, truth)

    settings = load_config(ROOT / "data_prepare" / "config.tiny.yaml")
    settings.update(data_root=str(data), out=str(tmp_path / "store.lmdb"), workers=1)
    prepared = run(PrepareConfig(**settings), progress=False)
    assert not prepared.failed, prepared.summary()
    store = CaseStore(tmp_path / "store.lmdb")
    assert sorted(store.ids("labeled")) == ["Case_00001", "Case_00002", "Case_00003"]
    assert store.ids("unlabeled") == ["Case_00004"]
    store.close()

    result = subprocess.run(
        ["sh", str(ROOT / "coarse_seg" / "run.sh"), "--nproc", "1",
         "--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"),
         f"store={tmp_path / 'store.lmdb'}", f"output_dir={tmp_path / 'tuned'}", "train.epochs=1", "train.val_every=1",
         *(f"network.init_args.{key}={value}" for key, value in TINY_NET.items()),
         f"train.init_weights={weak / 'coarse.pt'}", "semi.enabled=true"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    started = next(line for line in result.stdout.splitlines() if f"nets start from {weak / 'coarse.pt'}" in line)
    fresh = set(started.split("fresh: ")[1].split(", "))
    assert fresh <= {"auxiliary_heads", "full_resolution"}, started  # the layers the weak model has are kept
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert tuned["training_state"]["finished"]
