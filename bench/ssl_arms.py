"""Seconds per training step of each arm of ``experiments.ssl_verdict``, one after the other.

Run from the repository root, on a quiet machine (``uptime`` first)::

    .venv/bin/python -m bench.ssl_arms                    # every phase-B arm, 10 steps each
    .venv/bin/python -m bench.ssl_arms --arms pair_continue ad_generic --steps 20 --rounds 3

Each arm is the verdict's own run (``coarse_seg/config.tiny.yaml`` at 48³, the recipe, the arm's
overrides from :data:`experiments.ssl_verdict.ARM_OVERRIDES`, batch 2 labeled + 2 unlabeled, one
thread) as a real :class:`~segcore.training.engine.Trainer` over a temporary store of random
cases, its step function timed after one warm-up step (:func:`bench.training_step.measure`; the
unlabeled batch is read from the store inside the step, as in training). ``single_continue`` is one
net on labels (no ``semi``). Every arm runs in a fresh subprocess; with ``--rounds`` the arms are
run round after round in turn, so that a slow spell of a shared machine falls on all of them. The
table gives each arm's median over its rounds and its ratio to ``pair_continue`` (the control, a
pair of nets on labels only). Figures are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.timing import in_subprocess
from experiments.ssl_verdict import ARM_OVERRIDES, CONTROL, RECIPE, TRAIN_CONFIG

ARMS = ["pair_continue", "cacps", "cps", "ad_generic", "sd_messenger", "single_continue"]
SIZE = 48


def overrides_of(arm: str) -> list[str]:
    return [f"input_size=[{SIZE},{SIZE},{SIZE}]", *RECIPE, *ARM_OVERRIDES.get(arm, [])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round after one warm-up (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the arms (default 1)")
    args = parser.parse_args(argv)
    arms = list(dict.fromkeys([CONTROL, *args.arms]))  # the control first: every ratio needs it
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs; {SIZE}³, one thread, "
          f"{args.steps} steps after 1 warm-up, {args.rounds} round(s)", flush=True)  # fmt: skip
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    for round_index in range(args.rounds):
        for arm in arms:
            task = {"stage_name": "coarse", "amp": "off", "device_name": "cpu", "steps": args.steps,
                    "config_path": TRAIN_CONFIG, "overrides": overrides_of(arm), "size": SIZE, "unlabeled": 2,
                    "threads": 1}  # fmt: skip
            result = in_subprocess("bench.training_step", task)
            seconds[arm].append(result["seconds"])
            print(f"  round {round_index + 1} {arm}: {result['seconds']:.3f} s/step, peak {result['peak_gb']:.2f} GB; "
                  f"steps " + ", ".join(f"{s:.2f}" for s in result["step_seconds"]), flush=True)  # fmt: skip
    control = statistics.median(seconds[CONTROL])
    print("\n| arm | s/step (median of rounds) | × pair_continue |\n|---|---|---|")
    for arm in arms:
        median = statistics.median(seconds[arm])
        print(f"| `{arm}` | {median:.3f} | {median / control:.2f} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
