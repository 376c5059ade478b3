"""segcore.training.config: every shipped stage config validates; typos and wrong types are refused."""

from pathlib import Path

import pytest
import yaml

from segcore.training.config import StageConfig, load_stage_config

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted(
    [*ROOT.glob("coarse_seg/config*.yaml"), *ROOT.glob("fine_seg/config*.yaml")]
    + [ROOT / "model_weights" / "recipe" / name for name in ("coarse.yaml", "fine.yaml")]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_stage_config_validates(path):
    config = load_stage_config(path)
    raw = yaml.safe_load(path.read_text())
    # what the file says is what the config holds (nothing dropped or renamed on the way)
    assert config.optimizer.grad_clip == raw["optimizer"].get("grad_clip")
    assert config.optimizer.weight_decay == raw["optimizer"].get("weight_decay", 0.0)
    assert list(config.input_size) == raw["input_size"] and config.network.arch == raw["network"]["arch"]


def write(tmp_path, change) -> Path:
    values = yaml.safe_load((ROOT / "coarse_seg" / "config.tiny.yaml").read_text())
    change(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v["optimizer"].update(grad_clp=1.0), r"optimizer\.grad_clp: Unexpected keyword"),
        (lambda v: v["train"].update(epoch=3), r"train\.epoch: Unexpected keyword"),
        (lambda v: v["semi"].update(rampup_sharee=0.3), r"semi\.rampup_sharee: Unexpected keyword"),
        (lambda v: v["augment"].update(scael=0.1), r"augment\.scael: Unexpected keyword"),
        (lambda v: v.update(outptu_dir="x"), r"outptu_dir: Unexpected keyword"),
        (lambda v: v["train"].update(epochs="ten"), r"train\.epochs: Input should be a valid integer"),
        (lambda v: v["optimizer"].update(name="adam"), r"optimizer\.name: Input should be 'adamw' or 'sgd'"),
        (lambda v: v.pop("store"), r"store: Field required"),
        (lambda v: v["semi"].update(fourier_confidence=True), r"semi.*needs semi\.weak_strong"),
        (lambda v: v["augment"].update(fourier_sources="all"), r"fourier_sources=all needs semi\.enabled"),
    ],
)
def test_a_bad_key_or_value_in_a_yaml_file_is_refused_with_its_path(tmp_path, change, message):
    path = write(tmp_path, change)
    with pytest.raises(ValueError, match=message) as refused:
        load_stage_config(path)
    assert str(refused.value).startswith(f"{path}: ")  # the file, then the key


def test_overrides_are_validated_like_the_file():
    path = ROOT / "coarse_seg" / "config.tiny.yaml"
    assert load_stage_config(path, ["optimizer.grad_clip=null"]).optimizer.grad_clip is None
    assert load_stage_config(path, ["train.amp=off"]).train.amp is False  # YAML's unquoted off
    with pytest.raises(ValueError, match="has no key 'optimizer.grad_clp'"):
        load_stage_config(path, ["optimizer.grad_clp=1"])
    with pytest.raises(ValueError, match=r"train\.epochs: Input should be a valid integer"):
        load_stage_config(path, ["train.epochs=1.5"])


def test_defaults_live_in_the_config_and_a_run_writes_them_all(tmp_path):
    minimal = {
        "store": "s.lmdb",
        "output_dir": "out",
        "input_size": [16, 16, 16],
        "network": {"arch": "residual_unet3d"},
    }
    config = StageConfig.from_mapping(minimal)
    assert config.optimizer.grad_clip is None and config.optimizer.warmup_steps == 0 and config.semi.enabled is False
    written = config.as_dict()
    assert written["optimizer"]["weight_decay"] == 0.0 and written["augment"]["fourier_sources"] == "labeled"
    assert StageConfig.from_mapping(written) == config  # a run's config.yaml reads back to the same config
