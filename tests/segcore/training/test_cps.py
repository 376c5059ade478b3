"""Cross pseudo supervision and uncertainty-based image filtering."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segcore.networks.checkpoint import load_checkpoint
from segcore.store import CaseStore, StoreWriter, write_selection
from segcore.training.cli import round_configs
from segcore.training.config import StageConfig
from segcore.training.cps import (
    IGNORE,
    CPSConfig,
    balanced_weights,
    present_organ_dice_loss,
    pseudo_label_loss,
    pseudo_labels,
    sigmoid_rampup,
    view_consistent_labels,
)
from segcore.training.engine import Stage
from segcore.training.uif import load_domains, per_domain_summary, select, uncertainty_scores, write_scores

ROOT = Path(__file__).resolve().parents[3]


def test_pseudo_label_is_the_teachers_argmax_including_background():
    teacher = torch.full((1, 14, 1, 1, 3), -5.0)
    teacher[0, 0, 0, 0, 0] = 5.0  # background wins: pseudo-label 0, not dropped or shifted
    teacher[0, 13, 0, 0, 1] = 5.0  # left kidney: 13
    teacher[0, 1, 0, 0, 2] = 5.0  # liver: 1
    assert pseudo_labels(teacher).flatten().tolist() == [0, 13, 1]

    student = torch.randn((1, 14, 1, 1, 3), requires_grad=True)
    expected = F.cross_entropy(student, torch.tensor([[[[0, 13, 1]]]]))
    torch.testing.assert_close(pseudo_label_loss(student, pseudo_labels(teacher)), expected)


def test_no_gradient_reaches_the_teacher():
    teacher = torch.randn((2, 14, 2, 2, 2), requires_grad=True)
    student = torch.randn((2, 14, 2, 2, 2), requires_grad=True)
    pseudo_label_loss(student, pseudo_labels(teacher)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_confidence_threshold_ignores_unsure_voxels():
    teacher = torch.zeros((1, 14, 1, 1, 2))
    teacher[0, 3, 0, 0, 0] = 10.0  # sure: spleen
    teacher[0, 3, 0, 0, 1] = 0.5  # unsure: softmax top ~0.12
    assert pseudo_labels(teacher, confidence=0.9).flatten().tolist() == [3, IGNORE]
    student = torch.randn((1, 14, 1, 1, 2))
    expected = F.cross_entropy(student[..., :1], torch.tensor([[[[3]]]]))
    torch.testing.assert_close(pseudo_label_loss(student, pseudo_labels(teacher, 0.9)), expected)


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
        write_selection(writer.path, "uif_test", unlabeled[:2])
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
            "semi.enabled=true", "semi.method=cps", "semi.rounds=2", "semi.uif_keep=2", "semi.unlabeled_batch_size=1",
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


def test_view_consistent_labels_trust_voxels_where_the_teachers_views_agree():
    weak = torch.full((1, 14, 1, 1, 3), -4.0)
    weak[0, 5, 0, 0, :] = 4.0  # aorta everywhere on the weak view
    strong = weak.clone()
    strong[0, 5, 0, 0, 1] = -4.0  # the style change moved the middle voxel ...
    strong[0, 6, 0, 0, 1] = 6.0  # ... to the IVC, more sharply than the weak view's aorta
    labels, confidence = view_consistent_labels(weak, strong)
    assert labels.flatten().tolist() == [5, 6, 5]  # argmax of the mean logits
    assert confidence[0, 0, 0, 0] == pytest.approx(1.0) and confidence[0, 0, 0, 2] == pytest.approx(1.0)
    p_weak, p_strong = torch.softmax(weak[0, :, 0, 0, 1], 0), torch.softmax(strong[0, :, 0, 0, 1], 0)
    kl = float((p_strong * (p_strong.log() - p_weak.log())).sum())
    assert confidence[0, 0, 0, 1] == pytest.approx(math.exp(-kl), rel=1e-4) and kl > 1


def test_voxel_weights_scale_each_voxels_cross_entropy():
    student = torch.randn((1, 14, 1, 1, 3), requires_grad=True)
    targets = torch.tensor([[[[2, 7, IGNORE]]]])
    weights = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    per_voxel = F.cross_entropy(student[..., :2], targets[..., :2], reduction="none")
    # Mean over the non-ignored voxels of weight x CE: the zero-weight voxel counts in the mean, not the sum.
    torch.testing.assert_close(pseudo_label_loss(student, targets, weights), per_voxel[..., 0].sum() / 2)
    pseudo_label_loss(student, targets, weights).backward()
    assert student.grad[..., 1].abs().sum() == 0 and student.grad[..., 0].abs().sum() > 0


def test_pseudo_dice_counts_only_organs_present_in_the_pseudo_label():
    targets = torch.zeros((1, 4, 4, 4), dtype=torch.long)
    targets[0, :2] = 1  # liver in half the volume; no other organ
    perfect = F.one_hot(targets, 14).movedim(-1, 1).float() * 40.0
    assert present_organ_dice_loss(perfect, targets).item() == pytest.approx(0.0, abs=1e-4)
    wrong = perfect.clone()
    wrong[:, 3] = wrong[:, 1] + 20  # spleen predicted where the liver is
    loss = present_organ_dice_loss(wrong, targets)
    assert loss.item() == pytest.approx(1.0, abs=1e-3)  # liver Dice 0; absent spleen is not averaged in
    ignored = targets.clone()
    ignored[0, :2] = IGNORE
    assert present_organ_dice_loss(wrong, ignored).item() == 0.0  # no organ left to score
    with_dice = pseudo_label_loss(wrong, targets, dice_weight=0.5)
    assert with_dice.item() == pytest.approx(pseudo_label_loss(wrong, targets).item() + 0.5 * loss.item(), rel=1e-5)


def test_rampup_share_and_config_checks():
    assert CPSConfig(rampup_share=0.35).rampup_length(1000) == 350
    assert CPSConfig(rampup_steps=40).rampup_length(1000) == 40
    with pytest.raises(ValueError, match="weak_strong"):
        CPSConfig(fourier_confidence=True)
    with pytest.raises(ValueError, match="round_init"):
        CPSConfig(round_init="warm")
    with pytest.raises(TypeError):
        CPSConfig(rampup_sharee=0.3)  # a typo is refused


def test_uif_does_not_call_a_case_certain_because_both_nets_missed_its_small_organs():
    """Both nets confident on the liver; the adrenal either found by both, or missed by both with doubt."""

    def case(adrenal_probability: float) -> torch.Tensor:
        probabilities = torch.zeros((14, 8, 8, 8))
        probabilities[0] = 0.99
        probabilities[2] = 0.01
        probabilities[:, 1:5, 1:5, 1:5] = 0.0
        probabilities[1, 1:5, 1:5, 1:5], probabilities[0, 1:5, 1:5, 1:5] = 0.95, 0.05
        probabilities[:, 6, 6, 6] = 0.0
        probabilities[7, 6, 6, 6], probabilities[0, 6, 6, 6] = adrenal_probability, 1 - adrenal_probability
        return probabilities

    found, missed = case(0.9), case(0.4)
    rows = [
        {"case_id": "found", **uncertainty_scores(found, found)},
        {"case_id": "missed", **uncertainty_scores(missed, missed)},
    ]
    assert rows[1]["uncertainty"] > rows[0]["uncertainty"]  # scored only over argmax foreground it would rank first
    assert select(rows, 1) == ["found"]


def test_uif_disagreement_is_voxel_level_so_organs_weigh_by_size():
    liver_only = torch.zeros((14, 8, 8, 8))
    liver_only[0] = 1.0
    liver_only[:, :4] = 0.0
    liver_only[1, :4] = 1.0  # 256 liver voxels
    other = liver_only.clone()
    other[:, 7, 7, 7] = 0.0
    other[8, 7, 7, 7] = 1.0  # one net adds a one-voxel adrenal
    scores = uncertainty_scores(liver_only, other)
    assert scores["disagreement"] == pytest.approx(1 / 257)  # per-organ Dice averaging would say 0.5


def test_uif_reports_its_pick_per_domain(tmp_path):
    manifest = tmp_path / "phantom_cases.json"
    manifest.write_text(json.dumps([
        {"id": "a", "domain_group": "arterial+noisy"}, {"id": "b", "domain_group": "portal_venous"},
        {"id": "c", "domain_group": "arterial+noisy"},
    ]))  # fmt: skip
    domains = load_domains(manifest)
    assert domains == {"a": "arterial+noisy", "b": "portal_venous", "c": "arterial+noisy"}
    (tmp_path / "groups.json").write_text(json.dumps(domains))  # a plain mapping serves as well
    assert load_domains(tmp_path / "groups.json") == domains
    (tmp_path / "old.json").write_text(json.dumps([{"id": "a", "domain": {"phase": "arterial"}}]))
    with pytest.raises(ValueError, match="old.json: record 'a' has no id and domain_group"):
        load_domains(tmp_path / "old.json")
    rows = [{"case_id": case_id, "domain": domains[case_id]} for case_id in "abc"]
    assert per_domain_summary(rows, ["a", "b"]) == "arterial+noisy 1/2, portal_venous 1/1"
    write_scores([{**row, "entropy": 0, "disagreement": 0, "uncertainty": 0, "foreground_fraction": 0}
                  for row in rows], ["a"], tmp_path / "uif.csv")  # fmt: skip
    with (tmp_path / "uif.csv").open() as stream:
        assert [row["domain"] for row in csv.DictReader(stream)] == [
            "arterial+noisy",
            "portal_venous",
            "arterial+noisy",
        ]


def test_uif_selection_names_are_unique_per_run_and_stable(tmp_path):
    config = StageConfig.from_mapping({
        "store": "store.lmdb", "output_dir": str(tmp_path / "run_a"), "fold": 0, "input_size": [16, 16, 16],
        "network": {"arch": "residual_unet3d"}, "semi": {"enabled": True, "rounds": 2},
    })  # fmt: skip
    stage = Stage("coarse", "coarse_image", "coarse_label")
    name_a = round_configs(config, stage)[1].semi.unlabeled_split
    assert name_a == round_configs(StageConfig.from_mapping(config.as_dict()), stage)[1].semi.unlabeled_split
    other_dir = replace(config, output_dir=str(tmp_path / "run_b"))
    other_keep = replace(config, semi=replace(config.semi, uif_keep=0.3))
    names = {name_a, *(round_configs(c, stage)[1].semi.unlabeled_split for c in (other_dir, other_keep))}
    assert len(names) == 3 and all(n.startswith("uif_coarse_fold0_round1_") for n in names)
    previous = replace(config, semi=replace(config.semi, round_init="previous"))
    assert round_configs(previous, stage)[1].semi.init_from == str(tmp_path / "run_a" / "round0" / "last.pt")
    assert round_configs(config, stage)[1].semi.init_from is None
    expected_dirs = [str(tmp_path / "run_a" / f"round{r}") for r in (0, 1)]
    assert [c.output_dir for c in round_configs(config, stage)] == expected_dirs


def test_a_uif_pick_never_writes_into_the_lmdb_other_runs_read(phantom_root, tiny_store, tmp_path):
    """Readers are lock-free, so an LMDB write could reuse pages a running reader still walks."""
    from data_prepare.prepare import PrepareConfig, run
    from segcore.config import load_config
    from segcore.store import write_selection

    store_copy = tmp_path / "store.lmdb"
    subprocess.run(["cp", "-r", str(tiny_store), str(store_copy)], check=True)
    data = store_copy / "data.mdb"
    before = data.read_bytes()
    reader = CaseStore(store_copy)
    unlabeled = reader.ids("unlabeled")  # a reader holds the store open, as another training run would
    write_selection(store_copy, "uif_coarse_fold0_round1_abc", unlabeled[:2])
    assert reader.selection("uif_coarse_fold0_round1_abc") == unlabeled[:2]  # visible to the open reader
    assert data.read_bytes() == before
    reader.close()  # LMDB allows one environment per path and process: the writer below needs this one
    with StoreWriter(store_copy) as writer:  # opening a writer and re-putting equal splits writes nothing
        writer.put_splits(writer.read_splits())
    assert data.read_bytes() == before
    with pytest.raises(ValueError, match="selection name"):
        write_selection(store_copy, "../escape", [])
    # A data_prepare re-run that changes nothing leaves the LMDB as it was, and the pick with it.
    settings = load_config(ROOT / "data_prepare" / "config.tiny.yaml")
    settings.update(data_root=str(phantom_root), out=str(store_copy), workers=1)
    assert not run(PrepareConfig(**settings), progress=False).failed
    assert data.read_bytes() == before
    assert CaseStore(store_copy).selection("uif_coarse_fold0_round1_abc") == unlabeled[:2]


def test_selections_stored_in_the_lmdb_by_older_versions_still_read(tiny_store, tmp_path):
    store_copy = tmp_path / "store.lmdb"
    subprocess.run(["cp", "-r", str(tiny_store), str(store_copy)], check=True)
    with StoreWriter(store_copy) as writer:
        splits = writer.read_splits()
        splits["selections"] = {"old_pick": ["Case_00001"]}
        writer.put_splits(splits)
    store = CaseStore(store_copy)
    assert store.selection("old_pick") == ["Case_00001"]
    with pytest.raises(KeyError, match="stored: old_pick"):
        store.selection("missing")
