"""Synthetic abdominal CT phantoms with FLARE22 organ labels.

No labelled abdominal CT can be shipped with the project, so tests, benchmarks, the default
model and the semi-supervised experiments run on these. A phantom has a trunk (skin,
subcutaneous fat, muscle wall), spine, ribs, pelvis, lungs and heart above the diaphragm,
psoas muscles, bowel loops with gas, unlabelled vessels, and the 13 FLARE22 organs as
smoothly deformed shapes at anatomically plausible places, imaged with partial-volume blur
and correlated noise on varied scanner grids (spacing, orientation, field of view) and in
varied domains (contrast phase, noise level, HU offset).

Python::

    from segcore.phantom import PhantomDomain, generate_case, write_dataset

    case = generate_case(7, size="small")                       # random domain
    shifted = generate_case(7, size="small", domain=PhantomDomain(phase="arterial", noise_sigma_hu=35))
    training = generate_case(7, size="medium", randomise=True, vary=True)  # random tissue values, varied
                                                                           # anatomy, slabs, narrow fields
    write_dataset("dataset", labeled=8, unlabeled=16, val=4, size="small", seed=0)

Command line (FLARE22 layout; see ``python -m segcore.phantom --help``)::

    python -m segcore.phantom --out dataset --labeled 8 --unlabeled 16 --val 4 --size small --seed 0

Arrays are ``(z, y, x)`` in the stored orientation of :attr:`Phantom.geometry`; images are
int16 HU, labels uint8 FLARE22 ids (:mod:`segcore.labels`). Everything is deterministic
by seed; a case's randomness depends only on ``(seed, split, index)``.
"""

from __future__ import annotations

from segcore.phantom.dataset import SPLITS, case_id, case_seed, write_dataset
from segcore.phantom.generate import OrganMask, Phantom, draw_domain, generate_case
from segcore.phantom.scanner import SIZES
from segcore.phantom.tissues import PHASES, PhantomDomain, sample_domain

__all__ = [
    "PHASES",
    "SIZES",
    "SPLITS",
    "OrganMask",
    "Phantom",
    "PhantomDomain",
    "case_id",
    "case_seed",
    "draw_domain",
    "generate_case",
    "sample_domain",
    "write_dataset",
]
