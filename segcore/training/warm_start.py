"""Starting a stage's nets from a trained model (``train.init_weights``).

Fine-tuning a trained model (the default one, or a user's own) on new data, or giving a model that
answers at half resolution a full-resolution output stage, without training it again from scratch::

    sh fine_seg/run.sh train.init_weights=model_weights/fine.pt network.init_args.output_stride=1 ...

Every net of the run takes the checkpoint's weights of every layer it shares with it (same name,
same shape). The constructor arguments in :data:`OUTPUT_ARGS` only change the layers at the output
(the full-resolution stage, the heads): they may differ. A head goes to the head of the net that
reads the same decoder level (:func:`head_levels`): a half-resolution model's head, which reads
decoder level 0, becomes a deeply supervised full-resolution net's level-0 auxiliary head, and the
new main head, which reads the full-resolution stage, starts fresh with that stage; output layers
the net has no place for (a full-resolution stage given to a half-resolution net) are left out.
A net with ``residual_output`` (``network.init_args.residual_output=true``) gives the
half-resolution head its own place, the ``half_resolution_head``, under a full-resolution
correction that starts at zero: it answers exactly as the model it started from until it trains.
Anything else must match: the stage, the architecture, the other constructor arguments (widths,
depth, classes), and every other layer of the checkpoint must exist in the net with its shape.

A checkpoint holding several nets (a CPS pair) gives net ``i`` to net ``i``; one net given to a run
of several would start them all alike, which cross pseudo supervision cannot use, so it is refused.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from segcore.networks import build_network, network_spec
from segcore.networks.checkpoint import LEGACY_INIT_ARGS, load_checkpoint

OUTPUT_ARGS = ("output_stride", "full_resolution_channels", "deep_supervision", "residual_output")
"""Constructor arguments that only change the layers at the output: they may differ from the checkpoint's."""
FULL_RESOLUTION = -1
"""The level of the full-resolution stage in :func:`head_levels`."""


def head_levels(net: nn.Module) -> dict[str, int]:
    """Each head's name prefix -> the decoder level it reads (0: half resolution; -1: the
    full-resolution stage)."""
    heads = {"head.": FULL_RESOLUTION if net.output_stride == 1 else 0}
    if net.residual_output:
        heads["half_resolution_head."] = 0
    return heads | {f"auxiliary_heads.{index}.": level for index, level in enumerate(net.auxiliary_head_levels)}


def _moved(state: dict, source: dict[str, int], target: dict[str, int]) -> dict:
    """``state`` with each head under the name of ``target``'s head of the same level; heads and
    full-resolution layers ``target`` has no place for are left out."""
    names = {level: prefix for prefix, level in target.items()}
    moved = {}
    for name, tensor in state.items():
        prefix = next((p for p in source if name.startswith(p)), None)
        if prefix is not None:
            if source[prefix] in names:
                moved[names[source[prefix]] + name[len(prefix) :]] = tensor
        elif not (name.startswith("full_resolution.") and FULL_RESOLUTION not in names):
            moved[name] = tensor
    return moved


def warm_start(nets: list[nn.Module], path: str | Path, stage: str) -> list[str]:
    """Load a trained checkpoint's weights into ``nets`` (in place).

    Args:
        nets: the run's networks (one, or two for CPS).
        path: a checkpoint of this project (``model_weights/fine.pt``, a run's ``best.pt``).
        stage: ``"coarse"`` or ``"fine"``: the checkpoint must be of the same stage.

    Returns:
        The names of the parameters and buffers the checkpoint did not hold (left as initialised),
        sorted.

    Raises:
        ValueError: naming ``path`` and the reason: not a checkpoint, another stage, architecture
            or constructor argument, a layer the nets lack or hold in another shape, or fewer
            networks than the run trains (more than one).
    """
    payload = load_checkpoint(path)
    if payload.get("stage") != stage:
        raise ValueError(f"{path}: a {payload.get('stage')} checkpoint, this is the {stage} stage")
    entries = payload["networks"]
    if len(nets) > 1 and len(entries) < len(nets):
        raise ValueError(
            f"{path}: holds {len(entries)} network(s) for {len(nets)}: the nets of cross pseudo supervision "
            "must start differently"
        )
    if len(nets) == 1:  # the net inference uses
        entries = [entries[payload.get("inference", {}).get("ensemble", [0])[0]]]
    states = [_state_for(net, entry, path) for net, entry in zip(nets, entries)]  # every net checked first
    fresh = set()
    for net, state in zip(nets, states):
        own = net.state_dict()
        net.load_state_dict({**own, **state})
        fresh |= set(own) - set(state)
    return sorted(fresh)


def _state_for(net: nn.Module, entry: dict, path: str | Path) -> dict:
    """The weights of the checkpoint's net ``entry`` under ``net``'s names, or a ValueError naming ``path``."""
    spec = network_spec(net)
    theirs = {**LEGACY_INIT_ARGS, **entry["init_args"]}
    differ = [f"arch {entry['arch']} vs {spec['arch']}"] if entry["arch"] != spec["arch"] else []
    differ += [
        f"{key} {theirs.get(key)} vs {value}"
        for key, value in spec["init_args"].items()
        if key not in OUTPUT_ARGS and theirs.get(key) != value
    ]
    if differ:
        raise ValueError(f"{path}: its network does not fit this one ({'; '.join(differ)})")
    own = net.state_dict()
    state = _moved(entry["state_dict"], head_levels(build_network(entry["arch"], **theirs)), head_levels(net))
    foreign = [name for name, tensor in state.items() if name not in own or own[name].shape != tensor.shape]
    if foreign:
        raise ValueError(f"{path}: holds layers this network lacks or has in another shape ({', '.join(foreign)})")
    return state
