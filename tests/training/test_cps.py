"""Cross pseudo supervision and uncertainty-based image filtering."""

from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segcore.checkpoint import load_checkpoint
from segcore.store import CaseStore, StoreWriter
from segcore.training.cps import IGNORE, balanced_weights, cps_loss, pseudo_labels, sigmoid_rampup
from segcore.training.uif import select, uncertainty_scores, write_scores

ROOT = Path(__file__).resolve().parents[2]


def test_pseudo_label_is_the_teachers_argmax_including_background():
    teacher = torch.full((1, 14, 1, 1, 3), -5.0)
    teacher[0, 0, 0, 0, 0] = 5.0  # background wins: pseudo-label 0, not dropped or shifted
    teacher[0, 13, 0, 0, 1] = 5.0  # left kidney: 13
    teacher[0, 1, 0, 0, 2] = 5.0  # liver: 1
    assert pseudo_labels(teacher).flatten().tolist() == [0, 13, 1]

    student = torch.randn((1, 14, 1, 1, 3), requires_grad=True)
    expected = F.cross_entropy(student, torch.tensor([[[[0, 13, 1]]]]))
    torch.testing.assert_close(cps_loss(student, teacher), expected)


def test_no_gradient_reaches_the_teacher():
    teacher = torch.randn((2, 14, 2, 2, 2), requires_grad=True)
    student = torch.randn((2, 14, 2, 2, 2), requires_grad=True)
    cps_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_confidence_threshold_ignores_unsure_voxels():
    teacher = torch.zeros((1, 14, 1, 1, 2))
    teacher[0, 3, 0, 0, 0] = 10.0  # sure: spleen
    teacher[0, 3, 0, 0, 1] = 0.5  # unsure: softmax top ~0.12
    assert pseudo_labels(teacher, confidence=0.9).flatten().tolist() == [3, IGNORE]
    student = torch.randn((1, 14, 1, 1, 2))
    expected = F.cross_entropy(student[..., :1], torch.tensor([[[[3]]]]))
    torch.testing.assert_close(cps_loss(student, teacher, confidence=0.9), expected)


def test_class_balance_weights_rare_classes_up():
    targets = torch.tensor([0] * 96 + [7] * 4)
    weights = balanced_weights(targets, 14)
    assert weights[7] / weights[0] == pytest.approx(math.sqrt(96 / 4))
    assert weights[1] == 0 and weights[[0, 7]].mean() == pytest.approx(1.0)


def test_sigmoid_rampup_follows_its_definition():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(s, 100) for s in range(0, 101, 10)]
    assert values == sorted(values)


def softmax_case(logit_scale: float, agree: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two nets' softmax over an 8^3 volume with a liver block; sharper logits = more certain."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((14, 8, 8, 8), generator=generator) * 0.1
    logits[1, 2:6, 2:6, 2:6] += logit_scale
    logits[0] += logit_scale / 2
    other = logits.clone()
    if not agree:
        other[1, 2:6, 2:6, 2:6] -= 2 * logit_scale
        other[3, 2:6, 2:6, 2:6] += 2 * logit_scale
    return torch.softmax(logits, 0), torch.softmax(other, 0)


def test_uif_ranks_confident_cases_above_uncertain_ones_reproducibly(tiny_store, tmp_path):
    cases = {
        "sure_a": softmax_case(8.0, agree=True, seed=0),
        "sure_b": softmax_case(6.0, agree=True, seed=1),
        "flat": softmax_case(0.5, agree=True, seed=2),
        "disagree": softmax_case(8.0, agree=False, seed=3),
    }
    rows = [{"case_id": name, **uncertainty_scores(*probabilities)} for name, probabilities in cases.items()]
    scores = {row["case_id"]: row for row in rows}
    assert scores["sure_a"]["disagreement"] == 0 and scores["disagree"]["disagreement"] == 1
    assert scores["sure_a"]["entropy"] < scores["sure_b"]["entropy"] < scores["flat"]["entropy"]
    assert select(rows, 2) == ["sure_a", "sure_b"]
    assert select(rows, 0.5) == ["sure_a", "sure_b"]
    assert select(list(reversed(rows)), 2) == ["sure_a", "sure_b"]  # order of scoring does not matter

    # Nothing predicted: the least useful case, ranked last.
    empty = torch.zeros((14, 4, 4, 4))
    empty[0] = 1
    assert uncertainty_scores(empty, empty)["uncertainty"] == 2.0

    write_scores(rows, ["sure_a", "sure_b"], tmp_path / "uif.csv")
    with (tmp_path / "uif.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert [r["case_id"] for r in table][:2] == ["sure_a", "sure_b"] and table[0]["selected"] == "1"

    store_copy = tmp_path / "store.lmdb"
    subprocess.run(["cp", "-r", str(tiny_store), str(store_copy)], check=True)
    unlabeled = CaseStore(store_copy).ids("unlabeled")
    with StoreWriter(store_copy) as writer:
        writer.put_selection("uif_test", unlabeled[:2])
    store = CaseStore(store_copy)
    assert store.selection("uif_test") == unlabeled[:2]
    assert len(store.fold(0)[0]) > 0  # the folds survive the write
    with pytest.raises(KeyError, match="no selection named 'missing'"):
        store.selection("missing")


def test_two_process_cps_rounds_keep_both_nets_in_sync_and_store_the_uif_pick(tiny_store, tmp_path):
    store_copy = tmp_path / "store.lmdb"
    subprocess.run(["cp", "-r", str(tiny_store), str(store_copy)], check=True)
    out = tmp_path / "cps"
    result = subprocess.run(
        [
            "sh", str(ROOT / "coarse_seg" / "run.sh"), "--nproc", "2",
            "--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"),
            f"store={store_copy}", f"output_dir={out}", "train.epochs=2", "train.val_every=1",
            "semi.enabled=true", "semi.rounds=2", "semi.uif_keep=2", "semi.unlabeled_batch_size=1",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    for round_dir in (out / "round0", out / "round1"):
        state = load_checkpoint(round_dir / "last.pt")["training_state"]
        digests = state["rank_weight_digests"]
        assert len(digests) == 2 and len(digests[0]) == 2  # 2 ranks x 2 nets
        assert digests[0] == digests[1]  # each net identical on both ranks
        assert digests[0][0] != digests[0][1]  # and the two nets differ
        assert state["finished"]

    with (out / "round0" / "uif.csv").open() as stream:
        table = list(csv.DictReader(stream))
    store = CaseStore(store_copy)
    name = load_checkpoint(out / "round1" / "last.pt")["config"]["semi"]["unlabeled_split"]
    assert name.startswith("uif_coarse_fold0_round1_")  # unique per run: hash of output dir and config
    picked = store.selection(name)
    assert len(table) == len(store.ids("unlabeled")) and len(picked) == 2
    assert picked == [row["case_id"] for row in table[:2]]
    assert (out / "best.pt").read_bytes() == (out / "round1" / "best.pt").read_bytes()
