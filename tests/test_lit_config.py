"""Typed module configs (defaults only in ``conf/``, unknown keys refused), the one EMA helper (equal to both EMAs
it replaced, state-dict layouts kept), and the `_partial_` optimiser/scheduler of both stages (stage 2 switchable by
config; the flat stage-2 ``optim`` of older checkpoints still builds)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mmgt import checkpoints
from mmgt.lit import config as lit_config
from mmgt.lit.ema import EMA
from mmgt.lit.optim import WarmupCosine
from mmgt.lit.smga import SMGAModule
from mmgt.lit.video import VideoModule
from mmgt.utils.paths import CONF_DIR
from tiny_configs import SMGA_INFO, SMGA_NET, VIDEO_NET

INFO = dict(audio_embed_shape=[5, 2, 8], num_branches=3, frame_size=[16, 24], fps=25.0)
ATT = {"type": "mm_haa", "blocks": ["down"]}


def video(**kw) -> VideoModule:
    torch.manual_seed(0)
    return VideoModule(VIDEO_NET, **{"attention": ATT, "data_info": INFO, **kw})


def smga(**kw) -> SMGAModule:
    torch.manual_seed(0)
    return SMGAModule(SMGA_NET, **{"data_info": SMGA_INFO, **kw})


# ------------------------------------------------------------------------------------------- typed blocks


@pytest.mark.parametrize(("build", "block", "bad"), [
    (video, "sampling", "stepz"), (video, "ema", "decai"), (video, "validation", "max_batch"),
    (video, "scheduler", "beta_sched"), (video, "optim", "warmup"), (smga, "sampling", "guidanse"),
    (smga, "ema", "warm_up"), (smga, "video", "fps"),
])
def test_unknown_keys_are_refused_with_their_path(build, block: str, bad: str) -> None:
    with pytest.raises(ValueError, match=rf"model\.{block}\.{bad}.*known: "):
        build(**{block: {bad: 1}})
    with pytest.raises(ValueError, match=r"loss\.snr_gama"):
        video(loss={"snr_gama": 5.0})


def test_defaults_come_from_the_yaml_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key a block lacks takes the value of conf/ (edited copy -> the edited value); code has no fallback."""
    m = video(sampling={"steps": 2}, ema={"enabled": True}, optim={"weight_decay": 0.0})
    yaml = OmegaConf.load(Path(CONF_DIR) / "model/video.yaml")
    assert m.hparams.sampling["guidance"] == yaml.sampling.guidance and m.hparams.sampling["steps"] == 2
    assert m.ema.decay == yaml.ema.decay == 0.9999  # the drifted code default was 0.999
    assert m.hparams.optim["lr"] == yaml.optim.lr == 1e-5  # the drifted code default was 1e-4
    assert m.hparams.loss == {**OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "loss/video.yaml"))}
    smga_yaml = OmegaConf.load(Path(CONF_DIR) / "model/smga.yaml")
    assert smga().hparams.sampling == OmegaConf.to_container(smga_yaml.sampling)

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    for rel, edit in (("model/video.yaml", ("guidance: 3.5", "guidance: 7.25")),
                      ("model/smga.yaml", ("val_steps: 20", "val_steps: 3"))):
        (conf / rel).write_text((conf / rel).read_text().replace(*edit))
    monkeypatch.setenv("MMGT_CONF_DIR", str(conf))
    lit_config._load.cache_clear()
    try:
        assert video(sampling={"steps": 2}).sampling_settings()["guidance"] == 7.25
        assert smga().hparams.sampling["val_steps"] == 3
        (conf / "model/video.yaml").write_text((conf / "model/video.yaml").read_text().replace("  eta: 0.0\n", ""))
        lit_config._load.cache_clear()
        with pytest.raises(ValueError, match=r"model\.sampling: no value for \['eta'\]"):
            video(sampling={"steps": 2})
    finally:
        monkeypatch.undo()
        lit_config._load.cache_clear()


# ------------------------------------------------------------------------------------------- EMA


def _old_multi_avg_fn(decay: float, warmup: bool):  # type: ignore[no-untyped-def]
    """Stage 1's EMA before the helper: torch AveragedModel with this multi_avg_fn."""
    def fn(avg, new, n):  # type: ignore[no-untyped-def]
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n))) if warmup else decay
        torch._foreach_lerp_(avg, new, 1.0 - d)

    return fn


class _OldVideoEMA(nn.Module):
    """Stage 2's EMA before the helper (mmgt.lit.video.EMA), verbatim."""

    def __init__(self, named_params: Sequence[tuple[str, nn.Parameter]], decay: float = 0.999,
                 warmup: bool = True) -> None:
        super().__init__()
        self.decay, self.warmup = float(decay), bool(warmup)
        self.names = [n for n, _ in named_params]
        for n, p in named_params:
            self.register_buffer(n.replace(".", "__"), p.detach().clone().float())
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def shadows(self) -> list[torch.Tensor]:
        return [getattr(self, n.replace(".", "__")) for n in self.names]

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        d = self.decay
        if self.warmup:
            n = float(self.steps)
            d = min(d, (1 + n) / (10 + n))
        torch._foreach_lerp_(self.shadows(), [p.detach().float() for p in params], 1 - d)


def _perturb(net: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for b in net.buffers():
            if b.is_floating_point():
                b.add_(1.0)


@pytest.mark.parametrize("warmup", [True, False])
def test_smga_ema_equals_averaged_model(warmup: bool) -> None:
    m = smga(ema={"decay": 0.9, "warmup": warmup})
    old = AveragedModel(m.net, multi_avg_fn=_old_multi_avg_fn(0.9, warmup)).requires_grad_(False)
    for step in range(6):
        _perturb(m.net, step)
        m.update_ema()
        old.update_parameters(m.net)
        new_sd, old_sd = m.ema.state_dict(), old.state_dict()
        assert list(new_sd) == list(old_sd) and all(torch.equal(new_sd[k], old_sd[k]) for k in old_sd)
    assert m.ema.count == 6 and any(k.startswith("module.") for k in new_sd)
    # an AveragedModel checkpoint loads (strict) into the module, and the inference view holds the average
    state = {**{f"net.{k}": v for k, v in m.net.state_dict().items()}, **{f"ema.{k}": v for k, v in old_sd.items()}}
    fresh = smga(ema={"decay": 0.9, "warmup": warmup})
    fresh.load_state_dict(state, strict=True)
    fresh.inference_view()
    assert all(torch.equal(v, old.module.state_dict()[k]) for k, v in fresh.net.state_dict().items())


def test_video_ema_equals_the_old_class() -> None:
    m = video(substage="a", ema={"enabled": True, "decay": 0.95})
    named = m._trainable_params()
    old = _OldVideoEMA(named, 0.95)
    assert list(m.ema.state_dict()) == list(old.state_dict())
    params = [p for _, p in named]
    for step in range(5):
        _perturb(m.net, step)
        m.update_ema()
        old.update(params)
    assert all(torch.equal(a, b) for a, b in zip(m.ema.shadows(), old.shadows(), strict=True))
    assert int(m.ema.steps) == int(old.steps) == 5
    fresh = video(substage="a", ema={"enabled": True, "decay": 0.95})
    fresh.load_state_dict({**{f"net.{k}": v for k, v in m.net.state_dict().items()},
                           **{f"ema.{k}": v for k, v in old.state_dict().items()}}, strict=True)
    before = [p.detach().clone() for _, p in fresh._trainable_params()]
    with fresh.ema_weights():
        assert all(torch.equal(p, s) for (_, p), s in zip(fresh._trainable_params(), old.shadows(), strict=True))
    assert all(torch.equal(p, b) for (_, p), b in zip(fresh._trainable_params(), before, strict=True))


def test_ema_helper_conventions() -> None:
    """copy_of: the first update copies (AveragedModel); of_params: the average starts at construction."""
    lin = nn.Linear(2, 2)
    full, part = EMA.copy_of(lin, 0.5, True), EMA.of_params(list(lin.named_parameters()), 0.5, True)
    target = [p.detach() + 1 for p in lin.parameters()]
    full.update(target, list(lin.buffers()))
    part.update(target)
    assert all(torch.equal(s, t) for s, t in zip(full.shadows(), target, strict=True))
    d = min(0.5, 2 / 11)
    assert all(torch.allclose(s, d * p.detach() + (1 - d) * t) for s, p, t in
               zip(part.shadows(), lin.parameters(), target, strict=True))


# ------------------------------------------------------------------------------------------- optimisers


def test_stage2_optimiser_switches_by_config() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    over = ["experiment=video_stage_a", "model.metrics=null", "model.optim._target_=torch.optim.SGD",
            "+model.optim.momentum=0.9", "~model.optim.betas", "~model.optim.eps", "model.lr_scheduler=null"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=over)
    m = instantiate(cfg.model, data_info=INFO, _recursive_=False)
    opt = m.configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 0.01
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=video_stage_a", "model.metrics=null"])
    out = instantiate(cfg.model, data_info=INFO, _recursive_=False).configure_optimizers()
    assert type(out["optimizer"]) is torch.optim.AdamW and type(out["lr_scheduler"]["scheduler"]) is WarmupCosine
    assert tuple(out["optimizer"].param_groups[0]["betas"]) == (0.9, 0.999)
    assert out["lr_scheduler"]["interval"] == "step"


def _old_video_schedule(opt: torch.optim.Optimizer, warm: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The stage-2 schedule before WarmupCosine (constant after the warm-up)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm) if warm > 0 else 1.0)


def test_old_flat_video_optim_builds_and_resumes(tmp_path: Path) -> None:
    """hparams by the old rules (flat optim, EMA without warmup, partial blocks) -> the same optimiser and
    schedule; their optimiser/scheduler states load; build_module rebuilds the module."""
    old_hp = {"lr": 3e-4, "weight_decay": 0.01, "betas": [0.9, 0.99], "eps": 1e-8, "warmup_steps": 3,
              "schedule": "constant", "total_steps": None, "min_lr_ratio": 0.0}
    m = video(substage="b", optim=old_hp, ema={"enabled": True, "decay": 0.99, "init_from_ema": True},
              sampling={"steps": 2, "guidance": 2.0, "context_frames": 2, "context_overlap": 1})
    out = m.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert type(opt) is torch.optim.AdamW and m.ema.warmup
    ref = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4, weight_decay=0.01, betas=(0.9, 0.99))
    old = _old_video_schedule(ref, 3)
    group, ref_group = opt.param_groups[0], ref.param_groups[0]
    assert all(group[k] == ref_group[k] for k in ("lr", "weight_decay", "eps", "initial_lr"))
    assert tuple(group["betas"]) == (0.9, 0.99)
    for _ in range(5):
        opt.step(), sched.step(), ref.step(), old.step()
        assert sched.get_last_lr() == old.get_last_lr()
    assert sched.state_dict() == old.state_dict()  # the factor is a closure: only the step is stored, as before
    fresh = video(substage="b", optim=old_hp).configure_optimizers()["lr_scheduler"]["scheduler"]
    fresh.load_state_dict(old.state_dict())  # a scheduler state written before WarmupCosine
    assert fresh.last_epoch == 5
    path = tmp_path / "old.ckpt"
    hp = dict(m.hparams)
    hp["optim"] = old_hp
    hp.pop("lr_scheduler")
    hp["ema"] = {"enabled": True, "decay": 0.99, "init_from_ema": True}
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp}, path)
    rebuilt = checkpoints.build_module(checkpoints.read(path), "video")
    shadows = dict(zip(m.ema.names, m.ema.shadows(), strict=True))
    assert all(torch.equal(p, shadows[n]) for n, p in rebuilt.net.named_parameters() if n in shadows)
    assert rebuilt.ema is None and rebuilt.hparams.ema["warmup"] is True


def test_one_optimiser_helper_for_both_stages() -> None:
    node = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}
    sched = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 2, "interval": "epoch"}
    a = smga(optim=node, scheduler=sched).configure_optimizers()
    b = video(optim=node, lr_scheduler=sched).configure_optimizers()
    for out in (a, b):
        assert type(out["optimizer"]) is torch.optim.SGD and out["optimizer"].param_groups[0]["lr"] == 0.5
        assert type(out["lr_scheduler"]["scheduler"]) is torch.optim.lr_scheduler.StepLR
        assert out["lr_scheduler"]["interval"] == "epoch"
    assert type(smga(optim=node).configure_optimizers()) is torch.optim.SGD
