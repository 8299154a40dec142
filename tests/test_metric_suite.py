"""Metric suites as collections: a new metric is a class + a config entry, built and logged without touching the
suite; declared inputs decide what each member gets; stage 1 is configured like stage 2; DDP-exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmgt.metrics import (
    PSNR,
    BeatAlignment,
    FrechetGestureDistance,
    GestureDiversity,
    GestureMetrics,
    GestureSuite,
    KeypointL2,
    MetricSuite,
    Suite,
    SuiteMetric,
    build_suite,
)
from mmgt.metrics.video import to_unit
from mmgt.utils.paths import CONF_DIR

# the heavy feature networks are not what these tests are about
NO_NETS = {"lpips": False, "fvd": False, "sync": False}


class ToyMAE(SuiteMetric):
    """The example new metric: mean absolute error of frames in [0, 1], per clip then over clips (sum states: exact
    under DDP). It takes the suite's ``input_range`` setting and has one option of its own."""

    full_state_update = False
    name = "toy_mae"
    settings = ("input_range",)

    def __init__(self, scale: float = 1.0, input_range: tuple[float, float] = (-1.0, 1.0), **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale, self.input_range = float(scale), tuple(input_range)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, generated: torch.Tensor, reference: torch.Tensor) -> None:
        diff = to_unit(generated, self.input_range) - to_unit(reference, self.input_range)
        per_clip = diff.abs().flatten(1).mean(1).double() * self.scale
        self.last = per_clip.tolist()
        self.total += per_clip.sum()
        self.clips += per_clip.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.clips

    def per_clip(self) -> dict[str, list[float]]:
        return {self.names()[0]: list(self.last)}


class ToyLoudness(SuiteMetric):
    """A metric that needs the suite's ``audio``: mean absolute sample of the clips' audio."""

    full_state_update = False
    name = "toy_loudness"
    inputs = ("generated", "audio")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, generated: torch.Tensor, audio: torch.Tensor) -> None:
        per_clip = audio.abs().double().mean(1)
        self.last = per_clip.tolist()
        self.total += per_clip.sum()
        self.clips += audio.shape[0]

    def per_clip(self) -> dict[str, list[float]]:
        return {self.names()[0]: list(self.last)}

    def compute(self) -> torch.Tensor:
        return self.total / self.clips


TOY = f"{__name__}.ToyMAE"
LOUD = f"{__name__}.ToyLoudness"


def _videos(seed: int, b: int = 3, t: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(b, t, 3, size, size, generator=g) * 2 - 1
    return (ref + 0.3 * torch.randn(ref.shape, generator=g)).clamp(-1, 1), ref


def _expected_mae(gen: torch.Tensor, ref: torch.Tensor, scale: float, width: float = 2.0) -> float:
    return float(((gen - ref).abs() / width).flatten(1).mean(1).double().mean()) * scale


# ------------------------------------------------------------------------------------- a new metric from config
def test_toy_metric_is_built_from_a_yaml_entry_and_logged_under_its_name(tmp_path: Path) -> None:
    # the contributor's yaml: a new option of the `metrics` group that adds one entry naming the class
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "with_toy.yaml").write_text(
        "defaults:\n  - quick\n  - _self_\n"
        f"toy:\n  _target_: {TOY}\n  scale: 2.0\n")
    overrides = [f"hydra.searchpath=[file://{tmp_path}]", "metrics=with_toy", f"paths.root_dir={tmp_path}",
                 "metrics.input_range=[-2.0,2.0]", *(f"metrics.{k}.enabled=false" for k in NO_NETS)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
        # the same entry from the command line, without any file
        cli = compose("evaluate", overrides=[*overrides[2:], f"+metrics.toy._target_={TOY}", "+metrics.toy.scale=2.0"])
    assert cli.metrics.toy == cfg.metrics.toy
    gen, ref = _videos(0)
    # built as mmgt.evaluate and VideoModule build it (hydra instantiate of the group node), and with build_suite
    for suite in (instantiate(cfg.metrics, _convert_="all"), build_suite(cfg.metrics, MetricSuite)):
        assert isinstance(suite, MetricSuite) and list(suite.metrics) == ["psnr", "ssim", "toy"]
        assert suite.names == ["psnr", "ssim", "toy_mae"]
        toy = suite.metrics["toy"]
        assert toy.scale == 2.0 and toy.input_range == (-2.0, 2.0)  # its option, and the suite's setting
        suite.update(gen[:2], ref[:2])
        assert suite.last_per_clip()["toy_mae"] == pytest.approx(
            [_expected_mae(gen[i:i + 1], ref[i:i + 1], 2.0, 4.0) for i in range(2)], rel=1e-6)
        suite.update(gen[2:], ref[2:])
        out = suite.compute()
        assert list(out) == ["psnr", "ssim", "toy_mae"]
        assert out["toy_mae"] == pytest.approx(_expected_mae(gen, ref, 2.0, 4.0), rel=1e-6)
        plain = PSNR(input_range=(-2.0, 2.0))
        plain.update(gen, ref)
        assert out["psnr"] == float(plain.compute())  # the built-ins are untouched by the addition


def test_entries_replace_disable_and_rename() -> None:
    suite = MetricSuite(**NO_NETS, ssim=False, psnr={"_target_": TOY, "name": "mae"}, toy={"_target_": TOY},
                        off={"_target_": "no.such.Module", "enabled": False})  # a disabled entry is not even imported
    assert list(suite.metrics) == ["psnr", "toy"] and suite.names == ["mae", "toy_mae"]
    with pytest.raises(ValueError, match="both log `toy_mae`"):
        MetricSuite(**NO_NETS, a={"_target_": TOY}, b={"_target_": TOY})
    with pytest.raises(ValueError, match="metrics.nope: not a built-in metric of MetricSuite .*`_target_`"):
        MetricSuite(**NO_NETS, nope={"scale": 2})
    with pytest.raises(TypeError, match="metrics.mean: MeanMetric is not a suite metric"):
        MetricSuite(**NO_NETS, mean={"_target_": "torchmetrics.MeanMetric"})
    with pytest.raises(TypeError, match="not a metric suite class"):
        build_suite({"_target_": f"{__name__}.ToyMAE"}, MetricSuite)


# ------------------------------------------------------------------------------------- declared inputs
def test_declared_inputs_decide_what_each_member_gets() -> None:
    gen, ref = _videos(1)
    audio = torch.rand(3, 4 * 640) - 0.5
    suite = MetricSuite(**NO_NETS, ssim=False, loud={"_target_": LOUD})
    with pytest.warns(UserWarning, match="MetricSuite.update without audio: loud \\(toy_loudness\\) not updated"):
        suite.update(gen, ref)
    out = suite.compute()
    assert math.isnan(out["toy_loudness"]) and out["psnr"] > 0  # skipped, and said so; the others updated
    suite.update(gen, ref, audio=audio)
    assert list(suite.last_per_clip()) == ["psnr", "toy_loudness"]
    suite.update(gen, ref)
    assert list(suite.last_per_clip()) == ["psnr"]  # per-clip rows of that call only, no stale ones of the skipped
    suite.reset()
    suite.update(gen, ref, audio=audio)
    assert suite.compute()["toy_loudness"] == pytest.approx(float(audio.abs().double().mean()), rel=1e-9)
    # a reference-free input list set by config: the member gets only what it declares
    only_gen = MetricSuite(**NO_NETS, ssim=False, psnr=False, loud={"_target_": LOUD, "inputs": ["generated", "audio"]})
    only_gen.update(gen, None, audio=audio)
    assert only_gen.update_count == 1 and only_gen.metrics["loud"].update_count == 1
    # inputs the suite does not give are refused when the suite is built, unknown call arguments when it is called
    with pytest.raises(ValueError, match="needs \\['poses'\\], but MetricSuite.update gives"):
        MetricSuite(**NO_NETS, loud={"_target_": LOUD, "inputs": ["poses"]})
    with pytest.raises(TypeError, match="GestureSuite.update got \\['keypoints'\\]"):
        Suite.update(GestureSuite(), gen, ref, keypoints=None)


# ------------------------------------------------------------------------------------- stage 1 like stage 2
def _poses(seed: int, b: int = 4, n: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, n, 134, 3, generator=g) * 0.1
    audio = torch.randn(b, n * 640, generator=g) * 0.01
    audio[:, ::6400] *= 100
    return {"pred": pred, "target": pred + 0.05 * torch.randn(pred.shape, generator=g),
            "vis": torch.rand(b, n, 134, generator=g) > 0.2, "audio": audio}


def test_gesture_suite_from_the_config_group_equals_the_metrics(tmp_path: Path) -> None:
    # stage 1 reads the group's gesture option at model.metrics (conf/model/smga.yaml: `/metrics@metrics: gesture`,
    # appended here while that file still has its own block); the root `metrics` stays stage 2's video suite
    listed = "/metrics@metrics" in str(OmegaConf.load(Path(CONF_DIR) / "model" / "smga.yaml").get("defaults"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"{'' if listed else '+'}metrics@model.metrics=gesture",
                                          "model.metrics.feature_dim=16", f"paths.root_dir={tmp_path}"])
    assert cfg.metrics._target_ == "mmgt.metrics.MetricSuite"
    suite = build_suite(cfg.model.metrics, GestureSuite)
    legacy = build_suite({"feature_dim": 16, "beat_sigma": 3.0}, GestureSuite)  # hparams of older checkpoints
    old_surface = GestureMetrics(feature_dim=16)
    p = _poses(2)
    for s in (suite, legacy):
        s.update(p["pred"], p["target"], vis=p["vis"], audio=p["audio"])
    old_surface.update(p["pred"], p["target"], p["vis"], p["audio"])

    l2, fgd = KeypointL2(), FrechetGestureDistance(16)
    div, div_dg = GestureDiversity(16), GestureDiversity(16, variant="diffgesture")
    beat, beat_dg = BeatAlignment(), BeatAlignment(variant="diffgesture")
    l2.update(p["pred"], p["target"], p["vis"])
    fgd.update(p["pred"], p["target"], p["vis"])
    for d in (div, div_dg):
        d.update(p["pred"], p["target"], p["vis"])
    for b in (beat, beat_dg):
        b.update(p["pred"], p["audio"], reference=p["target"], vis=p["vis"])
    expected = {k: float(v) for m in (l2, fgd, div, div_dg, beat, beat_dg) for k, v in m.results().items()}
    assert suite.names == list(expected)
    assert suite.compute() == expected and legacy.compute() == expected  # the same numbers, the same names
    old = {k: float(v) for k, v in old_surface.compute().items()}  # returned as float32 tensors
    assert list(old) == list(expected) and old == pytest.approx(expected, rel=1e-6, nan_ok=True)
    assert old_surface.l2.update_count == 1
    # without audio beat alignment is skipped (nan; stage 1 logs finite values only)
    suite.reset()
    with pytest.warns(UserWarning, match="without audio"):
        suite.update(p["pred"], p["target"], vis=p["vis"])
    out = suite.compute()
    assert math.isnan(out["beat_align_bailando"]) and math.isnan(out["beat_align_bailando_real"])
    assert out["l2_lips"] > 0


def test_stored_suite_configs_pass_the_checkpoint_check(tmp_path: Path) -> None:
    from mmgt.checkpoints import check_stored_config
    from mmgt.errors import CheckpointError

    for name in ("default", "quick", "gesture"):
        node = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "metrics" / f"{name}.yaml"))
        check_stored_config({"metrics": {**node, "psnr2": {"_target_": "mmgt.metrics.video.PSNR"}}}, "x.ckpt")
    with pytest.raises(CheckpointError, match="metrics.toy._target_"):  # a class outside mmgt is not stored data
        check_stored_config({"metrics": {"_target_": "mmgt.metrics.MetricSuite", "toy": {"_target_": TOY}}}, "x.ckpt")


# ------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, init_file: str, out_file: str, gen, ref, audio) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    suite = MetricSuite(**NO_NETS, toy={"_target_": TOY}, loud={"_target_": LOUD})
    shard = [slice(0, 3), slice(3, 4)][rank]  # uneven shards
    suite.update(gen[shard], ref[shard], audio=audio[shard])
    suite.update(gen[shard], ref[shard])  # loud skipped on this call
    out = suite.compute()
    if rank == 0:
        Path(out_file).write_text(json.dumps(out))
    dist.destroy_process_group()


def test_a_configured_metric_is_exact_under_ddp(tmp_path: Path) -> None:
    gen, ref = _videos(3, b=4)
    audio = torch.rand(4, 4 * 640) - 0.5
    single = MetricSuite(**NO_NETS, toy={"_target_": TOY}, loud={"_target_": LOUD})
    single.update(gen, ref, audio=audio)  # what both ranks together see
    with pytest.warns(UserWarning, match="without audio"):
        single.update(gen, ref)
    expected = single.compute()
    out_file = tmp_path / "ddp.json"
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "store"), str(out_file), gen, ref, audio), nprocs=2,
                       join=True, start_method="fork")
    got = json.loads(out_file.read_text())
    assert list(got) == list(expected) == ["psnr", "ssim", "toy_mae", "toy_loudness"]
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
