"""The Hydra config tree: every option of every group composes and resolves; run folders never collide."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mmgt.utils.paths import CONF_DIR

GROUPS = ("data", "model", "loss", "mask", "attention", "size", "trainer", "logger", "callbacks", "experiment")
ROOTS = ("train", "evaluate", "generate", "prepare")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(name: str, overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[*overrides, f"paths.root_dir={tmp_path}",
                                                   f"paths.output_dir={tmp_path / 'run'}"])
    return OmegaConf.to_container(cfg, resolve=True)  # every interpolation must resolve


def test_design_group_options_exist() -> None:
    """The config group option names are part of the interface (README, scripts and tests use them)."""
    required = {
        "data": {"pats", "synthetic"}, "model": {"smga", "video"}, "loss": {"smga", "smga_no_face", "video"},
        "mask": {"none", "boxes", "union"}, "attention": {"none", "cross", "haa", "mm_haa"},
        "trainer": {"cpu", "gpu", "ddp", "ddp_cpu", "multinode"}, "logger": {"tensorboard", "csv"},
        "size": {"tiny", "full"},
        "experiment": {"quickstart_smga", "quickstart_video", "smga_pats", "video_stage_a_pats", "video_stage_b_pats"},
    }
    for group, names in required.items():
        assert names <= set(_options(group)), (group, names - set(_options(group)))
    for root in ROOTS:
        assert (Path(CONF_DIR) / f"{root}.yaml").exists(), root


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_option_composes(group: str, tmp_path: Path) -> None:
    for option in _options(group):
        cfg = _compose("train", [f"{group}={option}"], tmp_path)
        assert cfg["trainer"]["_target_"] == "lightning.pytorch.Trainer"


def test_every_experiment_composes(tmp_path: Path) -> None:
    for option in _options("experiment"):
        cfg = _compose("train", [f"experiment={option}"], tmp_path)
        assert cfg["model"]["_target_"].startswith("mmgt.lit."), option
        assert cfg["data"]["stage"] in ("smga", "video"), option


def test_other_roots_compose(tmp_path: Path) -> None:
    for root in ("evaluate", "generate", "prepare"):
        cfg = _compose(root, [], tmp_path)
        assert cfg["task_name"] == root


def test_quickstart_is_tiny_cpu_synthetic(tmp_path: Path) -> None:
    cfg = _compose("train", ["experiment=quickstart_smga"], tmp_path)
    assert cfg["size"]["name"] == "tiny" and cfg["trainer"]["accelerator"] == "cpu"
    assert cfg["data"]["root"] == f"{tmp_path}/data/synthetic" and cfg["data"]["synthetic"]["generate_if_missing"]
    assert cfg["data"]["mask"]["mode"] == cfg["mask"]["mode"]  # the one mask config reaches the DataModule


def test_loss_weights_override_from_command_line(tmp_path: Path) -> None:
    on = _compose("train", ["experiment=quickstart_smga"], tmp_path)
    off = _compose("train", ["experiment=quickstart_smga", "loss=smga_no_face"], tmp_path)
    assert on["model"]["loss"] == on["loss"] and off["model"]["loss"] == off["loss"]
    assert on["loss"] != off["loss"]
