"""The pre-registered rules of experiments.ssl_verdict and how it pairs runs with controls, on hand-made figures."""

from __future__ import annotations

import argparse
import json
from unittest import mock

import numpy as np
import pytest

from experiments.ssl_verdict import (
    PAIR,
    Settings,
    arm_names,
    dsc_of,
    equal_time_sentence,
    fingerprint,
    finished,
    is_done,
    needs_control,
    only_arms,
    paired,
    parse_args,
    paths_of,
    phase_b_jobs,
    plateau,
    read_results,
    report,
    seed_numbers,
    small_first,
    start_tag,
    to_run,
    unit,
    verdict,
    via_control,
)
from experiments.ssl_verdict import (
    test_subsets as subsets_of,
)
from segcore.networks.checkpoint import CHECKPOINT_FORMAT_VERSION, save_checkpoint


def test_s1_is_the_first_validation_within_0_01_of_the_median_of_the_last_three():
    curve = [(150, 0.30), (300, 0.60), (450, 0.695), (600, 0.71), (750, 0.70), (900, 0.72), (1050, 0.71)]
    s1, final = plateau(curve)
    assert final == pytest.approx(0.71)  # median of 0.70, 0.72, 0.71
    assert s1 == 600  # 0.695 is 0.015 short; 0.71 is the first within 0.01


def test_a_curve_that_peaks_and_falls_back_plateaus_at_its_final_level():
    curve = [(100, 0.5), (200, 0.8), (300, 0.7), (400, 0.69), (500, 0.7)]
    assert plateau(curve) == (200, pytest.approx(0.7))  # 0.8 is above final - 0.01: counts


def test_a_rising_curve_plateaus_only_at_its_end_and_an_empty_one_is_refused():
    assert plateau([(100, 0.1), (200, 0.2), (300, 0.3), (400, 0.4)])[0] == 300  # final is 0.3 (median of 0.2..0.4)
    with pytest.raises(ValueError, match="empty"):
        plateau([])


@pytest.mark.parametrize(
    "gain, interval, headroom, worst, valid, expected",
    [
        (0.03, (0.01, 0.05), 0.08, -0.01, True, "unlabeled data pays"),
        (
            0.03,
            (0.01, 0.05),
            0.16,
            -0.01,
            True,
            "gain +0.0300 < +0.0400 needed",
        ),  # 25 % of the headroom is more than 0.02
        (0.03, (-0.01, 0.05), 0.08, 0.0, True, "not above 0"),
        (0.03, (0.01, 0.05), 0.08, -0.03, True, "an organ loses -0.0300"),
        (0.015, (0.01, 0.02), 0.06, 0.0, True, "gain +0.0150 < +0.0200 needed"),
        (0.10, (0.05, 0.15), 0.30, 0.0, False, "inconclusive"),
    ],
)
def test_the_verdict_follows_the_success_criterion(gain, interval, headroom, worst, valid, expected):
    assert expected in verdict(gain, interval, headroom, worst, valid)


def _job(seed: int, arm: str, after: tuple[str, ...] = ()) -> dict:
    return {"phase": "B", "seed": seed, "arm": arm, "run_dir": f"/nowhere/seed{seed}/{arm}", "after": list(after)}


def test_a_missing_start_checkpoint_is_remade_just_before_the_first_run_that_needs_it():
    starts = [_job(seed, "supervised_pair_s1") for seed in (0, 1, 2)]
    arms = [
        _job(1, "cacps", ("/nowhere/seed1/supervised_pair_s1/last.pt",)),
        _job(2, "cacps", ("/nowhere/seed2/supervised_pair_s1/last.pt",)),
        _job(0, "cps", ("/nowhere/seed0/supervised_pair_s1/last.pt",)),
    ]
    done = [{"phase": "B", "seed": seed, "arm": arm} for seed in (0, 1, 2) for arm in ("supervised_pair_s1",)]
    done.append({"phase": "B", "seed": 0, "arm": "cacps"})
    order = [(j["seed"], j["arm"], bool(j.get("rerun"))) for j in to_run([*starts, _job(0, "cacps"), *arms], done)]
    assert order == [
        (1, "supervised_pair_s1", True), (1, "cacps", False),
        (2, "supervised_pair_s1", True), (2, "cacps", False),
        (0, "supervised_pair_s1", True), (0, "cps", False),
    ]  # fmt: skip


def test_a_finished_run_whose_checkpoint_no_one_needs_is_not_run_again():
    done = [{"phase": "B", "seed": 0, "arm": "supervised_pair_s1"}]
    assert to_run([_job(0, "supervised_pair_s1"), _job(0, "upper_bound")], done) == [_job(0, "upper_bound")]


def _last(run_dir, finished_run: bool) -> str:
    run_dir.mkdir(parents=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "networks": [],
        "training_state": {"finished": finished_run},
    }
    save_checkpoint(run_dir / "last.pt", payload)
    return str(run_dir / "last.pt")


def test_only_the_last_checkpoint_of_a_finished_run_counts_as_finished(tmp_path):
    assert finished(_last(tmp_path / "done", True))
    assert not finished(_last(tmp_path / "running", False))  # a run writes last.pt all along
    assert not finished(tmp_path / "never" / "last.pt")


def test_a_start_run_stopped_half_way_is_run_again_before_the_runs_it_starts(tmp_path):
    start = {**_job(0, "supervised_pair_s1"), "run_dir": str(tmp_path / "start")}
    arm = _job(0, "cacps", (_last(tmp_path / "start", False),))
    order = to_run([start, arm], [{"phase": "B", "seed": 0, "arm": "supervised_pair_s1"}])
    assert [(j["arm"], bool(j.get("rerun"))) for j in order] == [("supervised_pair_s1", True), ("cacps", False)]


def _line(seed: int, arm: str, start: str | None = None, dsc: float = 0.5) -> dict:
    line = {"phase": "B", "seed": seed, "arm": arm, "checkpoints": {"last": {"cases": {"c0": {"dsc": [dsc] * 13}}}}}
    return {**line, "start": start} if start else line


def test_a_run_is_compared_only_with_a_control_from_the_same_start():
    results = [_line(0, "pair_continue"), _line(1, "pair_continue"), _line(0, "cps", "ab12cd34"), _line(1, "cps")]
    assert paired(results, "cps", "pair_continue") == ["1"]  # seed 0's cps began from another start
    results.append(_line(0, "pair_continue", "ab12cd34"))
    assert paired(results, "cps", "pair_continue") == ["0/ab12cd34", "1"]
    assert dsc_of(results, "B", "pair_continue", "last", ["c0"], ["0/ab12cd34"]).shape == (1, 1, 13)


def test_an_arm_from_another_start_is_done_only_once_its_control_ran_from_it_too():
    item = _job(0, "cps", ("/nowhere/seed0/supervised_pair_s1/last.pt",))
    assert is_done(item, [_line(0, "cps")])  # from the recorded start
    orphan = [_line(0, "pair_continue"), _line(0, "cps", "ab12cd34")]
    assert not is_done(item, orphan)  # its control came from the recorded start: run it again
    assert is_done(item, [*orphan, _line(0, "pair_continue", "ab12cd34")])
    assert is_done(_job(0, "supervised_pair_long"), [_line(0, "supervised_pair_long", "zz")])  # no start to share


def test_a_remade_start_is_the_recorded_one_only_if_it_scores_the_same_on_every_case():
    results = [_line(0, "supervised_pair_s1", dsc=0.6608)]
    same = fingerprint(_line(0, "supervised_pair_s1", dsc=0.6608)["checkpoints"]["last"])
    other = fingerprint(_line(0, "supervised_pair_s1", dsc=0.6609)["checkpoints"]["last"])
    assert start_tag(results, 0, same) is None
    assert start_tag(results, 0, other) == other and len(other) == 8
    assert start_tag(results, 1, same) == same  # nothing recorded for seed 1


def test_an_arm_from_another_start_queues_its_control_once():
    cps, uif = _job(0, "cps"), _job(0, "cps_uif")
    assert not needs_control(cps, None, [], [])  # the recorded start: the recorded control serves
    assert needs_control(cps, "ab12cd34", [_line(0, "pair_continue")], [])
    assert not needs_control(uif, "ab12cd34", [], [{**_job(0, "pair_continue"), "start": "ab12cd34"}])
    assert not needs_control(cps, "ab12cd34", [_line(0, "pair_continue", "ab12cd34")], [])
    assert not needs_control(_job(0, "pair_continue"), "ab12cd34", [], [])


def test_results_from_two_starts_of_one_seed_are_both_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [_line(0, "cps"), _line(0, "cps", "ab12cd34"), _line(0, "cps", dsc=0.9)]  # the third repeats the first
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    kept = read_results(path, "key")
    assert [(unit(r), r["checkpoints"]["last"]["cases"]["c0"]["dsc"][0]) for r in kept] == [
        ("0", 0.5), ("0/ab12cd34", 0.5),
    ]  # fmt: skip


def test_arms_chosen_by_name_run_seed_by_seed_with_only_the_starts_they_need():
    start = "/nowhere/seed{}/supervised_pair_s1/last.pt".format
    order = [
        {**_job(1, "supervised_pair_s1"), "rerun": True}, _job(1, "cps_uif", (start(1),)),
        {**_job(2, "supervised_pair_s1"), "rerun": True}, _job(2, "cps", (start(2),)),
        _job(0, "dense_pretrain"), _job(1, "dense_pretrain"),
        _job(0, "supervised_pair_long"), _job(1, "supervised_pair_long"),
    ]  # fmt: skip
    picked = [(j["seed"], j["arm"]) for j in only_arms(order, ["dense_pretrain", "supervised_pair_long", "cps_uif"])]
    assert picked == [
        (0, "dense_pretrain"), (0, "supervised_pair_long"),
        (1, "supervised_pair_s1"), (1, "cps_uif"), (1, "dense_pretrain"), (1, "supervised_pair_long"),
    ]  # fmt: skip
    never_run = [_job(0, "supervised_pair_s1"), _job(0, "cps", (start(0),)), _job(0, "upper_bound")]
    assert [j["arm"] for j in only_arms(never_run, ["cps"])] == ["supervised_pair_s1", "cps"]


def test_seeds_chosen_by_number_keep_their_own_starts_only():
    start = "/nowhere/seed{}/supervised_pair_s1/last.pt".format
    order = [
        {**_job(1, "supervised_pair_s1"), "rerun": True}, _job(1, "cacps", (start(1),)),
        {**_job(2, "supervised_pair_s1"), "rerun": True}, _job(2, "cacps", (start(2),)),
        _job(2, "ad_generic", (start(2),)),
    ]  # fmt: skip
    assert [(j["seed"], j["arm"]) for j in only_arms(order, None, [2])] == [
        (2, "supervised_pair_s1"), (2, "cacps"), (2, "ad_generic"),
    ]  # fmt: skip
    assert [(j["seed"], j["arm"]) for j in only_arms(order, ["cacps"], [1])] == [
        (1, "supervised_pair_s1"),
        (1, "cacps"),
    ]
    assert seed_numbers("1, 2") == [1, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="one"):
        seed_numbers("one")


def test_an_unknown_arm_name_is_refused_before_anything_runs():
    assert arm_names("cps, cacps") == ["cps", "cacps"]
    with pytest.raises(argparse.ArgumentTypeError, match="dense_pretrian"):
        arm_names("dense_pretrian")


def test_a_seed_outside_the_design_is_refused_rather_than_running_nothing(capsys):
    assert parse_args(["--seeds", "2"])[0].seeds == [2]
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "1,5"])
    assert "--seeds 5: not a seed of the design (its seeds: 0, 1, 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--seeds", "1"])  # --quick trains seed 0 only


def test_parallel_changes_how_many_run_at_once_not_the_design_the_results_are_keyed_by():
    args, settings = parse_args(["--parallel", "1"])
    assert args.parallel == 1 and settings.parallel == 2  # the results' key is built from the settings
    assert parse_args([])[0].parallel is None
    with pytest.raises(SystemExit):
        parse_args(["--parallel", "0"])


def _scored(phase: str, arm: str, dsc: float, cases: list[str], curve=()) -> dict:
    scores = {"cases": {case: {"dsc": [dsc] * 13} for case in cases}}
    return {"phase": phase, "seed": 0, "arm": arm, "curve": list(curve), "train_s": 1.0,
            "checkpoints": {"last": scores, "best": scores}}  # fmt: skip


def _results(cases: list[str], arms: dict[str, float]) -> list[dict]:
    flat = [(100, 0.5), (200, 0.7), (300, 0.7), (400, 0.7)]
    lines = [_scored("A", "supervised_pair", 0.60, cases, flat), _scored("A", "upper_bound", 0.70, cases, flat)]
    return lines + [_scored("B", arm, dsc, cases) for arm, dsc in arms.items()]


@pytest.mark.parametrize("setting", ["mixed", "shift"])
def test_every_judged_arm_gets_its_own_verdict_against_the_control(setting):
    cases = ["Case_00001", "Case_00002", "Case_00003"]
    arms = {"supervised_pair_s1": 0.6, "pair_continue": 0.60, "cacps": 0.61, "ad_generic": 0.65, "sd_messenger": 0.58,
            "single_continue": 0.59}  # fmt: skip
    subsets = {"in-domain": cases[:1], "shifted": cases, "all": cases}
    settings = Settings(seeds=(0,), phase_a_steps=400)
    text, figures = report(_results(cases, arms), subsets, np.full(13, 100.0), settings, setting)
    assert "VERDICT (cacps): unlabeled data does not pay here: cacps vs pair_continue: gain +0.0100" in text
    late = ", by the same criterion, added after the verdict" if setting == "mixed" else ""
    assert f"VERDICT (ad_generic{late}): not yet decided (1 of 1 seeds)" not in text  # one seed is all of them here
    assert f"VERDICT (ad_generic{late}): unlabeled data pays: ad_generic beats pair_continue by +0.0500" in text
    assert f"VERDICT (sd_messenger{late}): unlabeled data does not pay here: sd_messenger vs pair_continue" in text
    assert figures["ad_generic_verdict"].startswith("unlabeled data pays")
    assert figures["differences"]["ad_generic-cacps/last/shifted"]["mean"] == pytest.approx(0.04)
    assert figures["differences"]["sd_messenger-cacps/last/shifted"]["mean"] == pytest.approx(-0.03)
    assert figures["differences"]["ad_generic-single_continue/last/shifted"]["mean"] == pytest.approx(0.06)


def test_setting_2_groups_its_test_cases_by_phase_and_keeps_its_own_files(tmp_path):
    settings = Settings()
    mixed, shift = paths_of(tmp_path, settings), paths_of(tmp_path, settings, setting="shift")
    assert len({mixed.data_root, shift.data_root}) == 2 and len({mixed.store, shift.store}) == 2
    assert len({mixed.manifest, shift.manifest}) == 2
    records = [
        {"id": "Case_00001", "domain": {"phase": "portal_venous", "noise_sigma_hu": 35.0}},  # noisy: shifted in 1
        {"id": "Case_00002", "domain": {"phase": "arterial", "noise_sigma_hu": 8.0}},
        {"id": "Case_00003", "domain": {"phase": "portal_venous", "noise_sigma_hu": 8.0}},
    ]
    stored = ["Case_00001", "Case_00002", "Case_00003"]
    for paths in (mixed, shift):
        paths.manifest.write_text(json.dumps(records))
    with mock.patch("segcore.store.CaseStore") as store:
        store.return_value.ids.return_value = stored
        assert subsets_of(mixed)["in-domain"] == ["Case_00003"]
        assert subsets_of(shift)["in-domain"] == ["Case_00001", "Case_00003"]
        assert subsets_of(shift)["shifted"] == ["Case_00002"]
    assert parse_args(["--setting", "shift"])[0].setting == "shift"
    with pytest.raises(SystemExit):
        parse_args(["--setting", "shifted"])


def test_two_arms_without_a_common_start_meet_through_the_control_each_ran_beside():
    results = [
        _line(0, "pair_continue", dsc=0.60), _line(0, "cacps", dsc=0.63),  # the recorded start: +0.03
        _line(0, "pair_continue", "ab12cd34", 0.50), _line(0, "pair_equal_time", "ab12cd34", 0.52),  # another: +0.02
    ]  # fmt: skip
    assert paired(results, "cacps", "pair_equal_time") == []  # no start in common
    assert via_control(results, "cacps", "pair_equal_time", ["c0"]) == pytest.approx([0.01])
    assert via_control(results, "pair_equal_time", "cacps", ["c0"]) == pytest.approx([-0.01])
    assert via_control([*results, _line(1, "sd_messenger", "ff")], "sd_messenger", "cacps", ["c0"]) is None


@pytest.mark.parametrize(
    ("interval", "seeds", "reading"),
    [
        ((0.001, 0.02), 3, "cacps keeps its gain at equal wall time"),
        ((-0.02, -0.001), 3, "the labels-only pair trained as long in wall time is better than cacps"),
        ((-0.01, 0.01), 3, "at equal wall time cacps and the labels-only pair cannot be told apart"),
        ((0.001, 0.02), 2, "not yet decided (2 of 3 seeds); so far: cacps keeps its gain"),
    ],
)
def test_the_equal_wall_time_check_reads_its_interval_as_pre_registered(interval, seeds, reading):
    sentence = equal_time_sentence({"mean": sum(interval) / 2, "ci95": list(interval)}, seeds, 3)
    assert sentence.startswith(reading)


def _phase_b_jobs(tmp_path, setting: str) -> list[dict]:
    """A setting's phase-B jobs for S1 = 2,100 (S2 = 1,050), 6 training cases, under ``tmp_path``."""
    with mock.patch("experiments.ssl_verdict.train_size", return_value=6):
        return phase_b_jobs(paths_of(tmp_path, Settings(), setting=setting), Settings(), tmp_path / "runs", 2100)


@pytest.mark.parametrize("setting", ["mixed", "shift"])
def test_the_equal_wall_time_pair_continues_the_start_for_s2_times_cacps_cost_in_setting_1_only(tmp_path, setting):
    jobs = _phase_b_jobs(tmp_path, setting)
    equal_time = [j for j in jobs if j["arm"] == "pair_equal_time"]
    if setting == "shift":
        assert equal_time == []
        return
    assert [j["seed"] for j in equal_time] == [0, 1, 2]
    (command,) = equal_time[0]["commands"]
    assert "train.max_steps=3006" in command  # round(1050 x 2525.8 / 882.2)
    assert all(override in command for override in PAIR)  # the control's own pair, labels only
    start = tmp_path / "runs" / "phase_b" / "seed0" / "supervised_pair_s1" / "last.pt"
    assert f"semi.init_from={start}" in command and equal_time[0]["after"] == [str(start)]
    assert [j["arm"] for j in jobs][-6:-3] == ["pair_equal_time"] * 3  # the sixth tier, before the seventh


@pytest.mark.parametrize("setting", ["mixed", "shift"])
def test_a_and_d_at_its_own_unlabeled_weight_changes_only_the_weight_and_its_ramp_in_setting_1_only(tmp_path, setting):
    jobs = _phase_b_jobs(tmp_path, setting)
    heavy = [j for j in jobs if j["arm"] == "ad_generic_w10"]
    if setting == "shift":
        assert heavy == []
        return
    assert [j["arm"] for j in jobs][-3:] == ["ad_generic_w10"] * 3  # the last tier
    (command,) = next(j["commands"] for j in jobs if j["arm"] == "ad_generic" and j["seed"] == 0)
    (heavy_command,) = heavy[0]["commands"]
    changed = set(heavy_command) ^ set(command)
    assert changed == {
        "semi.weight=1.0", "semi.rampup_share=0.35", "semi.weight=10.0", "semi.rampup_share=1.0",
        f"output_dir={tmp_path / 'runs' / 'phase_b' / 'seed0' / 'ad_generic'}",
        f"output_dir={tmp_path / 'runs' / 'phase_b' / 'seed0' / 'ad_generic_w10'}",
        "train.keep_steps=[525]",  # its pseudo-labels are scored half-way too
    }  # fmt: skip
    assert heavy[0]["pseudo"] == {"ad_generic_w10@half": "step525.pt", "ad_generic_w10@end": "last.pt"}


def test_a_and_d_at_its_own_weight_is_judged_and_compared_with_a_and_d_from_the_same_starts():
    cases = ["Case_00001", "Case_00002", "Case_00003"]
    arms = {"supervised_pair_s1": 0.6, "pair_continue": 0.60, "cacps": 0.63, "ad_generic": 0.58, "ad_generic_w10": 0.61}
    subsets = {"in-domain": cases[:1], "shifted": cases, "all": cases}
    text, figures = report(_results(cases, arms), subsets, np.full(13, 100.0), Settings(seeds=(0,)))
    assert figures["differences"]["ad_generic_w10-ad_generic/last/shifted"]["mean"] == pytest.approx(0.03)
    assert figures["differences"]["ad_generic_w10-pair_continue/last/shifted"]["mean"] == pytest.approx(0.01)
    assert "VERDICT (ad_generic_w10, by the same criterion, added after the verdict): unlabeled data does not" in text


def test_per_organ_lines_put_the_adrenals_gallbladder_and_pancreas_first():
    from segcore.labels import ORGANS

    names = list(ORGANS.values())
    order = [names[i] for i in small_first(names)]
    assert order[:4] == ["right_adrenal_gland", "left_adrenal_gland", "gallbladder", "pancreas"]
    assert sorted(order) == sorted(names) and order[4] == "liver"  # every organ once, the rest in label order


def test_the_equal_wall_time_pair_from_another_start_is_done_only_once_its_control_ran_from_it_too():
    item = _job(0, "pair_equal_time", ("/nowhere/seed0/supervised_pair_s1/last.pt",))
    orphan = [_line(0, "pair_continue"), _line(0, "pair_equal_time", "ab12cd34")]
    assert not is_done(item, orphan)
    assert is_done(item, [*orphan, _line(0, "pair_continue", "ab12cd34")])


def test_the_equal_wall_time_sentence_is_written_even_when_cacps_and_its_pair_share_a_start():
    cases = ["Case_00001", "Case_00002", "Case_00003"]
    arms = {"supervised_pair_s1": 0.6, "pair_continue": 0.60, "cacps": 0.63, "pair_equal_time": 0.61}
    subsets = {"in-domain": cases[:1], "shifted": cases, "all": cases}
    text, figures = report(_results(cases, arms), subsets, np.full(13, 100.0), Settings(seeds=(0,)))
    assert figures["via_control"]["cacps-pair_equal_time/shifted"]["mean"] == pytest.approx(0.02)
    assert "EQUAL WALL TIME: cacps keeps its gain at equal wall time: cacps - pair_equal_time +0.0200" in text
    assert figures["equal_time_verdict"].endswith("+0.0200 [+0.0200, +0.0200]")  # every case +0.02: no spread


def test_arms_of_the_other_setting_are_refused():
    assert parse_args(["--arms", "pair_equal_time"])[0].arms == ["pair_equal_time"]
    with pytest.raises(SystemExit):
        parse_args(["--setting", "shift", "--arms", "pair_equal_time"])


def test_a_verdict_from_remade_starts_is_decided_once_every_seed_has_run():
    cases = ["Case_00001", "Case_00002", "Case_00003"]
    lines = _results(cases, {"supervised_pair_s1": 0.6})
    lines += [{**_scored("B", arm, dsc, cases), "start": "ab12cd34"} for arm, dsc in
              (("pair_continue", 0.60), ("ad_generic", 0.58))]  # fmt: skip
    subsets = {"in-domain": cases[:1], "shifted": cases, "all": cases}
    text, figures = report(lines, subsets, np.full(13, 100.0), Settings(seeds=(0,), phase_a_steps=400))
    assert figures["ad_generic_verdict"].startswith("unlabeled data does not pay here")  # not "not yet decided"


def test_a_run_resumed_in_a_later_call_says_its_wall_time_is_only_that_call_s(tmp_path):
    from experiments.ssl_verdict import run_job

    done, resumed = tmp_path / "done", tmp_path / "resumed"
    (resumed / "round0").mkdir(parents=True)
    (resumed / "round0" / "last.pt").write_bytes(b"")  # stopped after a checkpoint: the next call resumes it
    lines = {}

    def train(command, output, threads):  # leaves a finished run's checkpoint, as training would
        output.mkdir(parents=True, exist_ok=True)
        (output / "last.pt").write_bytes(b"")
        return 5.0

    for run_dir in (done, resumed):
        command = ["python", "-m", "coarse_seg.train", f"output_dir={run_dir}"]
        job = {"phase": "B", "seed": 0, "arm": "cacps", "run_dir": str(run_dir), "commands": [command],
               "store": "s", "data_root": "d"}  # fmt: skip
        with (
            mock.patch("experiments.ssl_verdict.train_arm", side_effect=train),
            mock.patch("experiments.ssl_verdict.score_checkpoint", return_value={"cases": {}}),
        ):
            lines[run_dir.name] = run_job(job)
    assert lines["done"]["train_s"] == 5.0 and lines["done"]["resumed"] is False
    assert lines["resumed"]["resumed"] is True

    cases = ["Case_00001"]
    results = _results(cases, {"pair_continue": 0.6, "cacps": 0.61})
    results[-1]["resumed"] = True
    settings = Settings(seeds=(0,), phase_a_steps=400)
    text, _ = report(results, {"in-domain": cases, "shifted": cases, "all": cases}, np.full(13, 100.0), settings)
    assert "(1 s, resumed)" in text and "(1 s)" in text  # cacps resumed, pair_continue ran in one call
