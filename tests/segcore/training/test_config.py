"""segcore.training.config: every shipped stage config validates; a file holds only what differs from
its base or the defaults; typos and wrong types are refused."""

import subprocess
from pathlib import Path

import pytest
import yaml

from coarse_seg.train import STAGE as COARSE
from segcore.config import load_config, merge
from segcore.training.cli import main
from segcore.training.config import StageConfig, load_stage_config
from testkit import restated_keys

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted(
    [*ROOT.glob("coarse_seg/config*.yaml"), *ROOT.glob("fine_seg/config*.yaml")]
    + [ROOT / "model_weights" / "recipe" / name for name in ("coarse.yaml", "fine.yaml")]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_stage_config_validates(path):
    config = load_stage_config(path)
    raw = load_config(path)  # the file merged onto its bases
    # what the file says is what the config holds (nothing dropped or renamed on the way)
    assert config.optimizer.grad_clip == raw["optimizer"].get("grad_clip")
    assert config.optimizer.weight_decay == raw["optimizer"].get("weight_decay", 0.0)
    assert list(config.input_size) == raw["input_size"] and config.network.arch == raw["network"]["arch"]


def write(tmp_path, change) -> Path:
    values = load_config(ROOT / "coarse_seg" / "config.tiny.yaml")
    change(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda v: v["optimizer"].update(grad_clp=1.0),
            r"optimizer\.grad_clp: unknown key; did you mean optimizer\.grad_clip\? \(optimizer: name, lr,",
        ),
        (lambda v: v["train"].update(epoch=3), r"train\.epoch: unknown key; did you mean train\.epochs"),
        (
            lambda v: v["semi"].update(rampup_sharee=0.3),
            r"semi\.rampup_sharee: unknown key; did you mean semi\.rampup_share or",
        ),
        (lambda v: v["augment"].update(scael=0.1), r"augment\.scael: unknown key; did you mean augment\.scale"),
        (
            lambda v: v.update(outptu_dir="x"),
            r"outptu_dir: unknown key; did you mean output_dir\? \(top level: store, output_dir,",
        ),
        (lambda v: v.update(xyzzy=1), r"xyzzy: unknown key; \(top level: store,"),
        (
            lambda v: v["network"]["init_args"].update(residual_ouptut=True),
            r"network\.init_args\.residual_ouptut: not an argument of residual_unet3d; did you mean residual_output",
        ),
        (
            lambda v: v["network"]["init_args"].update(deep_supervison=True),
            r"network\.init_args\.deep_supervison: .*did you mean deep_supervision",
        ),
        (
            lambda v: v["network"].update(arch="residual_unet"),
            r"network\.arch='residual_unet': expected one of ad_generic, efficient_context_net, residual_unet3d, "
            r"sd_messenger",
        ),
        (lambda v: v["train"].update(epochs="ten"), r"train\.epochs: Input should be a valid integer"),
        (lambda v: v["optimizer"].update(name="adam"), r"optimizer\.name: Input should be 'adamw' or 'sgd'"),
        (lambda v: v.pop("store"), r"store: Field required"),
        (lambda v: v["semi"].update(method="cps", fourier_confidence=True), r"semi.*needs semi\.weak_strong"),
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
    with pytest.raises(ValueError, match=r"override 'optimizer\.grad_clp=1': optimizer\.grad_clp: unknown key; did yo"):
        load_stage_config(path, ["optimizer.grad_clp=1"])
    with pytest.raises(ValueError, match=r"override 'optimizr\.lr=1': optimizr: unknown key; did you mean optimizer\?"):
        load_stage_config(path, ["optimizr.lr=1"])
    with pytest.raises(ValueError, match=r"network\.init_args\.deep_supervison: not an argument of residual_unet3d"):
        load_stage_config(path, ["network.init_args.deep_supervison=false"])
    with pytest.raises(ValueError, match=r"train\.epochs: Input should be a valid integer"):
        load_stage_config(path, ["train.epochs=1.5"])


@pytest.mark.parametrize("stage", ["coarse_seg", "fine_seg"])
def test_semi_enabled_alone_is_confidence_aware_cps_the_one_method_the_verdict_found_to_pay(stage):
    path = ROOT / stage / "config.yaml"

    def semi(*overrides):
        config = load_stage_config(path, list(overrides))
        s = config.semi
        return s.method, s.weak_strong, s.fourier_confidence, s.pseudo_dice, config.augment.fourier_sources

    assert semi("semi.enabled=true") == ("cacps", True, True, 0.5, "all")
    assert semi("semi.enabled=true", "semi.pseudo_dice=0.3") == ("cacps", True, True, 0.3, "all")  # a variant
    assert semi("semi.enabled=true", "semi.method=cps") == ("cps", False, False, 0.0, "all")  # plain CPS
    assert semi("semi.enabled=true", "semi.weight=0")[4] == "labeled"  # the labels-only pair: no unlabeled batch
    assert semi()[4] == "labeled"  # no semi: nothing but the labeled batch to mix
    base = load_stage_config(path).network.arch
    one_net = ("semi.enabled=true", "semi.networks=1", f"network.init_args.base={base}")
    assert semi(*one_net, "semi.method=ad_generic", "network.arch=ad_generic") == (
        "ad_generic", False, False, 0.0, "labeled",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"semi\.method=cacps is the weak-strong teacher.*use semi\.method=cps"):
        load_stage_config(path, ["semi.enabled=true", "semi.weak_strong=false"])


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


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shipped_file_restates_a_default_or_its_base(path):
    minimal = {"store": "", "output_dir": "", "input_size": [8, 8, 8], "network": {"arch": "residual_unet3d"}}
    defaults = StageConfig.from_mapping(minimal).as_dict()
    for required in ("store", "output_dir", "input_size"):
        del defaults[required]
    del defaults["network"]["arch"]
    assert restated_keys(path, defaults, StageConfig) == []


def test_restating_a_default_or_a_base_value_is_found(tmp_path):
    write_files(tmp_path, {
        "stage.yaml": "store: s\noutput_dir: o\ninput_size: [8, 8, 8]\nnetwork: {arch: residual_unet3d}\n"
                      "train: {epochs: 300, seed: 3}\n",
        "derived.yaml": "base: stage.yaml\ntrain: {seed: 3, epochs: 5}\ninput_size: [8, 8, 8]\n",
    })  # fmt: skip
    defaults = {"train": {"epochs": 300, "seed": 0}}
    assert restated_keys(tmp_path / "stage.yaml", defaults, StageConfig) == ["train.epochs"]
    assert restated_keys(tmp_path / "derived.yaml", defaults, StageConfig) == ["train.seed", "input_size"]


TINY_CHANGES = {
    "store": "dataset/prepared_tiny.lmdb",
    "network": {"init_args": {"base_channels": 8, "depth": 3, "max_channels": 32}},
    "data": {"workers": 0},
    "optimizer": {"lr": 0.003, "warmup_steps": 10},
    "train": {"epochs": 60},
    "augment": {"scale": 0.1, "rotation_degrees": 8.0, "jitter": 0.05},
    "semi": {"rampup_steps": 50},
}
RECIPE_CHANGES = {
    "store": "dataset/prepared_default.lmdb",
    "network": {"init_args": {"base_channels": 8, "depth": 4, "max_channels": 64, "residual_output": True}},
    "data": {"workers": 0},
    "optimizer": {"lr": 0.003, "warmup_steps": 40},
    "train": {"epochs": 30, "val_every": 5},
    "augment": {"scale": 0.1, "rotation_degrees": 8.0, "jitter": 0.05},
    "semi": {"rampup_steps": 50, "rampup_share": None},
}
DERIVED = {
    "coarse_seg/config.tiny.yaml": ("coarse_seg/config.yaml", TINY_CHANGES, "coarse_tiny", [32, 32, 32]),
    "fine_seg/config.tiny.yaml": ("fine_seg/config.yaml", TINY_CHANGES, "fine_tiny", [48, 48, 48]),
    "model_weights/recipe/coarse.yaml": ("coarse_seg/config.yaml", RECIPE_CHANGES, "coarse_default", [48, 48, 48]),
    "model_weights/recipe/fine.yaml": (
        "fine_seg/config.yaml",
        {**RECIPE_CHANGES, "train": {"epochs": 60}},  # the fourth candidate's longer fine stage
        "fine_default",
        [80, 80, 80],
    ),
}


@pytest.mark.parametrize("derived", DERIVED)
def test_a_derived_config_is_its_stage_config_with_the_listed_differences(derived):
    """The tiny and recipe files hold only their differences; these are all of them (the resolved
    configs are those of the full files they replaced)."""
    stage, changes, run_name, input_size = DERIVED[derived]
    expected = merge(load_stage_config(ROOT / stage).as_dict(), changes)
    expected.update(output_dir=f"runs/{run_name}", input_size=input_size)
    assert load_stage_config(ROOT / derived).as_dict() == expected


def write_files(tmp_path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)


BASE = """
store: s.lmdb
output_dir: out
input_size: [16, 16, 16]
network: {arch: residual_unet3d, init_args: {base_channels: 8, depth: 2}}
train: {keep_steps: [5, 10], epochs: 7}
semi: {rampup_share: 0.35}
"""


def test_a_base_is_relative_to_the_file_mappings_merge_and_other_values_replace(tmp_path):
    write_files(tmp_path, {
        "stage/base.yaml": BASE,
        "stage/middle.yaml": "base: base.yaml\ntrain: {epochs: 9}\n",
        "recipe/run.yaml": (
            "base: ../stage/middle.yaml\nnetwork: {init_args: {depth: 3}}\ntrain: {keep_steps: [1]}\n"
            "semi: {rampup_share: null}\n"
        ),
    })  # fmt: skip
    config = load_stage_config(tmp_path / "recipe" / "run.yaml", ["optimizer.grad_clip=3"])
    assert config.network.init_args == {"base_channels": 8, "depth": 3}  # merged key by key
    assert config.train.keep_steps == (1,) and config.train.epochs == 9  # a list replaced; the nearest file wins
    assert config.semi.rampup_share is None and config.optimizer.grad_clip == 3.0  # null replaces; no file names it
    assert config.output_dir == "out"  # a path value is the file's text, taken from the working directory


def test_a_base_loop_a_missing_base_and_a_typo_in_a_base_are_refused_naming_the_file(tmp_path):
    write_files(tmp_path, {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n", "c.yaml": "base: none.yaml\n"})
    with pytest.raises(ValueError, match=r"a\.yaml: base loop: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_stage_config(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'c.yaml'}: base: {tmp_path / 'none.yaml'}: no such file"):
        load_stage_config(tmp_path / "c.yaml")
    write_files(tmp_path, {"base.yaml": BASE + "optimizer: {lr: 0.1, grad_clp: 1}\n", "run.yaml": "base: base.yaml\n"})
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'base.yaml'}: optimizer\.grad_clp: unknown key"):
        load_stage_config(tmp_path / "run.yaml")


def test_a_file_holds_only_what_differs_from_the_defaults(tmp_path):
    write_files(
        tmp_path, {"c.yaml": "store: s\noutput_dir: o\ninput_size: [16, 16, 16]\nnetwork: {arch: residual_unet3d}\n"}
    )
    config = load_stage_config(tmp_path / "c.yaml", ["train.keep_steps=[4]", "network.init_args.deep_supervision=true"])
    assert config == StageConfig.from_mapping(
        {**yaml.safe_load((tmp_path / "c.yaml").read_text()), "train": {"keep_steps": [4]},
         "network": {"arch": "residual_unet3d", "init_args": {"deep_supervision": True}}}
    )  # fmt: skip


@pytest.mark.parametrize("path", ["coarse_seg/config.tiny.yaml", "model_weights/recipe/coarse.yaml"])
def test_print_config_prints_the_resolved_config_and_exits(path, capsys):
    argv = ["--config", str(ROOT / path), "--print-config", "store=/nowhere.lmdb", "train.epochs=2"]
    assert main(COARSE, ROOT / "coarse_seg" / "config.yaml", argv) == 0  # before the store is looked for
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_stage_config(ROOT / path, ["store=/nowhere.lmdb", "train.epochs=2"]).as_dict()
    assert StageConfig.from_mapping(printed).train.epochs == 2


@pytest.mark.parametrize("option", ["--print-config", "--help"])
def test_run_sh_answers_print_config_and_help_once_without_torchrun(option):
    command = ["sh", str(ROOT / "coarse_seg" / "run.sh"), "--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"),
               "--nproc", "2", option, "store=/nowhere.lmdb"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    if option == "--print-config":
        assert result.stdout.count("store: /nowhere.lmdb") == 1, result.stdout  # once, not once per process
        assert yaml.safe_load(result.stdout)["input_size"] == [32, 32, 32]
    else:
        assert result.stdout.count("usage:") == 1
    assert "torch.distributed" not in result.stderr and "rendezvous" not in result.stderr.lower()
