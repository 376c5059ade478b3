"""The typed configuration of a training stage (``coarse_seg/config.yaml``, ``fine_seg/config.yaml``).

Every section is a dataclass with its defaults here, in one place. :func:`load_stage_config`
reads a YAML file (and the ``base`` it names: :mod:`segcore.config`), applies ``key=value``
overrides and validates the result. Keys are checked against these dataclasses, not against the
file, so a file holds only what differs from the defaults (or from its base) and an override may
set any key. An unknown or misspelled key anywhere (``optimizer.grad_clp``, or a constructor
argument the architecture does not take: ``network.init_args.residual_ouput``), a value of the
wrong type (``train.epochs: ten``) or a rule a section checks itself (``semi.fourier_confidence``
without ``semi.weak_strong``) is refused with the file and its dotted path, before anything is
trained::

    config = load_stage_config("coarse_seg/config.yaml", ["train.epochs=10"])
    config.optimizer.grad_clip          # 12.0
    config.as_dict()                    # plain data: what a run writes to its config.yaml

The ``augment`` and ``semi`` sections are :class:`segcore.training.augment.AugmentConfig` and
:class:`segcore.training.cps.CPSConfig`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

from segcore.config import did_you_mean, load_config
from segcore.networks import NETWORKS
from segcore.training.augment import AugmentConfig
from segcore.training.cps import CPS_METHODS, OWN_NETWORK_METHODS, CPSConfig

STRICT = ConfigDict(extra="forbid")
"""Pydantic's validation of every section: unknown keys are errors."""


@dataclass(frozen=True)
class NetworkConfig:
    """``network``: the architecture (a key of :data:`segcore.networks.NETWORKS`) and its constructor
    arguments (those not given take the constructor's defaults)."""

    __pydantic_config__ = STRICT
    arch: str
    init_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in NETWORKS:
            raise ValueError(f"network.arch={self.arch!r}: expected one of {', '.join(sorted(NETWORKS))}")
        kind = NETWORKS[self.arch]
        named = getattr(kind, "argument_names", None)  # a wrapper (ad_generic): its base's arguments
        accepted = named(self.init_args) if named else list(inspect.signature(kind).parameters)
        for key in self.init_args:
            if key not in accepted:
                guess = did_you_mean(key, accepted)
                raise ValueError(
                    f"network.init_args.{key}: not an argument of {self.arch}; {guess}(it takes: {', '.join(accepted)})"
                )


@dataclass(frozen=True)
class DataConfig:
    """``data``: batch size and loader workers per process, and the HU window (clip, then z-score)."""

    __pydantic_config__ = STRICT
    batch_size: int = 2
    workers: int = 2
    hu_window: tuple[float, float] = (-325.0, 325.0)


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizer``: AdamW or SGD (Nesterov); the learning-rate ``schedule`` after a linear
    warm-up: ``poly`` (decay to zero over ``train.epochs``), ``wsd`` (constant, then a linear
    cool-down over the last ``decay_share`` of the run's steps; :func:`segcore.training.engine.wsd_schedule`)
    or ``constant`` (no decay: a probe of where the rate stops paying);
    ``grad_clip`` is the largest gradient norm (null: no clipping)."""

    __pydantic_config__ = STRICT
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.0
    momentum: float = 0.99  # sgd only
    warmup_steps: int = 0
    schedule: Literal["poly", "wsd", "constant"] = "poly"
    decay_share: float = 0.2  # wsd only
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.decay_share <= 1:
            raise ValueError(f"optimizer.decay_share={self.decay_share}: expected a share in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """``train``: length, validation, seed, precision (``auto | fp16 | bf16 | off``), layout, compile;
    ``keep_steps``: also keep a copy of ``last.pt`` as ``step<N>.pt`` at the first save at or past
    each step N; ``init_encoder``: an ``encoder.pt`` of dense pre-training
    (:mod:`segcore.training.pretrain`) every net's stem and encoder start from (decoders fresh);
    ``init_weights``: a trained checkpoint of this stage every net starts from, layers it lacks
    fresh (:mod:`segcore.training.warm_start`)."""

    __pydantic_config__ = STRICT
    epochs: int = 300
    val_every: int = 10
    seed: int = 0
    amp: Literal["auto", "fp16", "bf16", "off"] | bool = "auto"  # YAML reads an unquoted off as false
    max_steps: int | None = None
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False
    keep_steps: tuple[int, ...] = ()
    init_encoder: str | None = None
    init_weights: str | None = None

    def __post_init__(self) -> None:
        if self.init_encoder and self.init_weights:
            raise ValueError("train.init_encoder and train.init_weights: give one start, not both")


@dataclass(frozen=True)
class PretrainConfig:
    """``pretrain``: dense pre-training of the encoder (:mod:`segcore.training.pretrain`): points
    per volume, InfoNCE temperature, the projection head's hidden and output channels."""

    __pydantic_config__ = STRICT
    points: int = 256
    temperature: float = 0.2
    hidden_channels: int = 64
    out_channels: int = 32


@dataclass(frozen=True)
class StageConfig:
    """One stage's whole configuration."""

    __pydantic_config__ = STRICT
    store: str
    output_dir: str
    network: NetworkConfig
    input_size: tuple[int, int, int]
    fold: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    semi: CPSConfig = field(default_factory=CPSConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        if self.train.compile and self.network.init_args.get("deep_supervision"):
            # Measured: after two AdamW steps a compiled deeply supervised net's weights differ from
            # the plain net's beyond float-order rounding (the compiled plain-loss net matches).
            raise ValueError(
                "train.compile=true with network.init_args.deep_supervision=true: the compiled net does not "
                "train like the plain one yet; turn one of them off"
            )
        arch = self.network.arch
        if arch in OWN_NETWORK_METHODS and not (self.semi.enabled and self.semi.method == arch):
            # a net with the method's extra decoders or messengers, trained without them, would
            # train a plain net's layers and leave the rest at their zero start
            raise ValueError(f"network.arch={arch} is trained by semi.method={arch} (with semi.enabled) only")
        if self.augment.fourier_sources == "auto":
            pseudo_labels = self.semi.enabled and self.semi.method in CPS_METHODS and self.semi.weight > 0
            self.augment.fourier_sources = "all" if pseudo_labels else "labeled"
        if self.augment.fourier_sources == "all" and not self.semi.enabled:
            raise ValueError("augment.fourier_sources=all needs semi.enabled (the unlabeled batches are the sources)")
        if self.semi.enabled and self.semi.init_from and (self.train.init_weights or self.train.init_encoder):
            raise ValueError("semi.init_from with train.init_weights or train.init_encoder: give one start, not both")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> StageConfig:
        """Validate plain data (a YAML mapping) into a config.

        Raises:
            ValueError: every problem, one per line, each with its dotted key.
        """
        try:
            return _ADAPTER.validate_python(values)
        except ValidationError as error:
            raise ValueError(f"{source}: " + "; ".join(_problem(e) for e in error.errors())) from None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able data (tuples as lists), every default filled in."""
        return json.loads(json.dumps(asdict(self)))


_ADAPTER = TypeAdapter(StageConfig)


def _problem(error: dict[str, Any]) -> str:
    """One validation error as ``dotted.key: reason``. A section's own rule (a ``ValueError`` of a
    ``__post_init__``) names its keys itself, so it is given as it was raised."""
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}"


def load_stage_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> StageConfig:
    """Read a stage's YAML file and its bases, apply ``key=value`` overrides, every key checked
    against :class:`StageConfig` (:func:`segcore.config.load_config`), and validate the values
    (:meth:`StageConfig.from_mapping`)."""
    return StageConfig.from_mapping(load_config(path, overrides, schema=StageConfig), str(path))
