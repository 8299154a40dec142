"""VideoModule (stage 2): sub-stage groups, stage-A -> B hand-over, diffusion objective, CFG dropout, EMA, Lightning
loop with validation media, Hydra experiment configs, and (slow) a learning check on the synthetic corpus."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from mmgt.lit.video import VideoModule, load_net_state, snr_weights
from tiny_configs import VIDEO_NET

NET = VIDEO_NET
INFO = dict(audio_embed_shape=[5, 2, 8], num_branches=3, frame_size=[16, 24], fps=25.0)
K, H, W = 3, 16, 24
# batch 16, 16 px, EMA, 1 loader worker: ~5 min on 2 cores. Held-out PSNR measured (2026-11-26): init 7.1 dB,
# trained 28.1 dB, flat mean colour 15.2 dB, copy reference 22.3 dB (28.7 dB trained with 0 workers, another data
# order). 500 steps at batch 32, or batch 8, did not beat copy-reference reliably.
STEPS_LEARN = 1000
COPY_MARGIN_DB = 3.0  # trained minus copy-reference (5.8 / 6.4 dB measured; 2.8-4.3 dB other seeds, 1 speaker, no EMA)
# the original's 8-bit AdamW (bitsandbytes, the `bnb` extra): the learning test also runs with it when asked; it costs
# another ~330 s on 2 cores, which would push `make test` past CI's time budget (tests/test_levers.py checks on every
# run that 8-bit AdamW fits a batch like AdamW)
LEARN_8BIT_SKIP = "the 8-bit AdamW learning run takes ~330 s: set MMGT_LEARN_8BIT=1 to run it"
ADAMW_8BIT = {"_target_": "bitsandbytes.optim.AdamW8bit", "_partial_": True, "weight_decay": 0.01}
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None



def make_batch(b: int = 2, n: int = 3, seed: int = 0) -> dict:
    """A random batch of the stage-2 contract (COMMON.md / tests/test_datamodule.py)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, K, n, H // 4, W // 4, generator=g)
    return dict(frames=torch.rand(b, n, 3, H, W, generator=g) * 2 - 1,
                pose_images=torch.rand(b, n, 3, H, W, generator=g),
                masks=masks,
                ref_frame=torch.rand(b, 3, H, W, generator=g) * 2 - 1,
                audio_emb=torch.randn(b, n, 5, 2, 8, generator=g), keypoints=torch.rand(b, n, 134, 3, generator=g),
                audio=torch.randn(b, n * 640, generator=g), clip_id=[f"c{i}" for i in range(b)],
                start=torch.arange(b), speaker=torch.zeros(b, dtype=torch.long))


def module(substage: str = "a", attention: str | dict = "mm_haa", seed: int = 0, **kw) -> VideoModule:
    torch.manual_seed(seed)
    att = attention if isinstance(attention, dict) else {"type": attention, "blocks": ["down"]}
    args = dict(attention=att, loss={"snr_gamma": 5.0, "noise_offset": 0.05},
                optim={"lr": 1e-3}, substage=substage, sampling={"steps": 2, "guidance": 2.0, "context_frames": 2,
                                                                 "context_overlap": 1}, data_info=INFO)
    args.update(kw)
    return VideoModule(NET, **args)


def randomise_audio_branches(m: VideoModule) -> None:
    g = torch.Generator().manual_seed(3)
    for mod in m.net.audio_modules.values():
        for p in mod.proj:
            p.weight.data = torch.randn(p.weight.shape, generator=g) * 0.3


# ----------------------------------------------------------------------------------------------- objective


def test_snr_weights_per_sample() -> None:
    m = module()
    t = torch.tensor([0, 500, 999])
    w = snr_weights(m.alphas_cumprod, t, 5.0, plus_one=True)
    assert w.shape == (3,)
    assert w[0] == pytest.approx(5 / (1 + float(m.alphas_cumprod[0] / (1 - m.alphas_cumprod[0]))), rel=1e-4)
    assert w[2] == pytest.approx(1.0)  # zero terminal SNR: SNR=0 -> min(1, 5)/1
    assert snr_weights(m.alphas_cumprod, t, 5.0, plus_one=False)[2] == pytest.approx(0.0)
    assert torch.equal(snr_weights(m.alphas_cumprod, t, None), torch.ones(3))
    # one schedule for training and sampling: zero-SNR, v-prediction, trailing
    cfg = m.sampler().scheduler.config
    assert cfg.prediction_type == "v_prediction" and cfg.rescale_betas_zero_snr and cfg.timestep_spacing == "trailing"
    assert torch.allclose(m.sampler().scheduler.alphas_cumprod, m.scheduler.alphas_cumprod)
    assert float(m.alphas_cumprod[-1]) < 1e-6


def test_cfg_dropout_is_per_sample(monkeypatch) -> None:
    m = module("b", loss={"drop_image": 0.5, "drop_audio": 0.5})
    torch.manual_seed(0)
    img, aud = m._drops(64)
    assert 0 < int(img.sum()) < 64 and 0 < int(aud.sum()) < 64 and not torch.equal(img, aud)
    m.hparams.loss["cfg_per_sample"] = False  # legacy: one draw per batch
    img, aud = m._drops(64)
    assert int(img.sum()) in (0, 64) and int(aud.sum()) in (0, 64)
    # the draws reach the network
    seen = {}
    orig = m.net.forward

    def spy(*a, **kw):
        seen.update(kw)
        return orig(*a, **kw)

    monkeypatch.setattr(m.net, "forward", spy)
    m.hparams.loss.update(cfg_per_sample=True, drop_image=1.0, drop_audio=0.0)
    m.diffusion_loss(make_batch())
    assert seen["drop_image"].all() and not seen["drop_audio"].any()


def test_branch_weights_apply_in_training_and_sampling() -> None:
    batch = make_batch(b=1, n=2)
    zero = module("b", attention={"type": "mm_haa", "blocks": ["down"], "branch_weights": [0.0, 0.0, 0.0]})
    weighted = module("b", attention={"type": "mm_haa", "blocks": ["down"], "branch_weights": [1.0, 2.0, 3.0]})
    silent = module("b", attention={"type": "mm_haa", "blocks": ["down"]})  # weights null = ones
    for m in (zero, weighted, silent):
        randomise_audio_branches(m)
    no_audio = {k: v for k, v in batch.items() if k != "audio_emb"}

    def loss(m, b):
        torch.manual_seed(5)
        with torch.no_grad():
            return float(m.diffusion_loss(b)[0])

    assert loss(zero, batch) == pytest.approx(loss(silent, no_audio), rel=1e-6)  # weights 0 == no audio at all
    assert abs(loss(weighted, batch) - loss(silent, batch)) > 1e-6  # [1,2,3] differs from the default ones
    gen = lambda m, b: m.generate(b, generator=torch.Generator().manual_seed(0))  # noqa: E731
    torch.testing.assert_close(gen(zero, batch), gen(silent, no_audio))
    assert (gen(weighted, batch) - gen(silent, batch)).abs().max() > 1e-5
    # sampling.branch_weights overrides the training weights at generation only
    over = module("b", attention={"type": "mm_haa", "blocks": ["down"], "branch_weights": [1.0, 2.0, 3.0]},
                  sampling={"steps": 2, "guidance": 2.0, "context_frames": 2, "context_overlap": 1,
                            "branch_weights": [0.0, 0.0, 0.0]})
    randomise_audio_branches(over)
    torch.testing.assert_close(gen(over, batch), gen(silent, no_audio))


# ----------------------------------------------------------------------------------------------- sub-stages


@pytest.mark.parametrize("attention", ["none", "cross", "haa", "mm_haa"])
def test_stage_b_trains_only_named_groups(attention: str) -> None:
    m = module("b", attention)
    groups = m.net.parameter_groups()
    wanted = set(m.hparams.trainable)
    loss, _ = m.diffusion_loss(make_batch())
    loss.backward()
    for g, params in groups.items():
        for n, p in params:
            if g in wanted:
                assert p.requires_grad, n
            else:
                assert p.grad is None and not p.requires_grad, n
    assert all(p.grad is not None for g in wanted for _, p in groups[g])
    # zero-initialised outputs (motion proj_out, MM-HAA 1x1 projections) get a gradient at step 0 and start learning
    assert any(p.grad.abs().sum() > 0 for n, p in groups["motion_modules"] if "proj_out" in n)
    assert all(any(p.grad.abs().sum() > 0 for p in mod.proj.parameters()) for mod in m.net.audio_modules.values())
    assert (attention == "none") == (not groups["audio_modules"])
    assert all(p.grad is None for p in m.net.codec.parameters())


def test_stage_a_is_an_image_model() -> None:
    m = module("a")
    assert set(m.hparams.trainable) == {"denoising_unet", "reference_unet", "pose_guider", "image_encoder"}
    x = m._inputs(make_batch(n=3))
    assert x["frames"].shape[1] == 1 and x["audio"] is None and x["masks"] is None
    loss, _ = m.diffusion_loss(make_batch())
    loss.backward()
    assert all(p.grad is None for n, p in m.net.named_parameters() if ".motion_modules." in n or "audio" in n)
    assert any(p.grad is not None for p in m.net.pose_guider.parameters())
    with pytest.raises(ValueError, match="substage"):
        module("c")


@pytest.mark.parametrize(("checkpointing", "autocast"), [(True, None), (False, "bf16")])
def test_gradient_checkpointing_and_autocast_switches(checkpointing: bool, autocast: str | None) -> None:
    m = module("b", gradient_checkpointing=checkpointing, autocast=autocast)
    assert m.net.denoising_unet.is_gradient_checkpointing == checkpointing
    m.train()
    loss, _ = m.diffusion_loss(make_batch(b=1, n=2))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in m.net.named_parameters() if ".motion_modules." in n and "proj_out" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="autocast"):
        module("a", autocast="fp8")


def test_lr_schedules() -> None:
    """Warm-up then constant (default) or a cosine decay that ends at min_lr_ratio * lr; unknown names fail."""
    def lrs(**optim) -> list[float]:
        sched = module("a", optim={"lr": 1e-3, **optim}).configure_optimizers()["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(12):
            out.append(sched.get_last_lr()[0])
            sched.optimizer.step()
            sched.step()
        return out

    const = lrs(warmup_steps=4)
    assert const[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and const[4:] == pytest.approx([1e-3] * 8)
    cos = lrs(schedule="cosine", total_steps=10, min_lr_ratio=0.1)
    assert cos[0] == pytest.approx(1e-3) and cos[5] == pytest.approx(0.55e-3)
    assert cos[10:] == pytest.approx([1e-4, 1e-4]) and all(a >= b for a, b in zip(cos, cos[1:], strict=False))
    with pytest.raises(ValueError, match="schedule"):
        lrs(schedule="linear")


def test_ema_tracks_trainable_parameters() -> None:
    m = module("a", ema={"enabled": True, "decay": 0.5})
    params = [p for _, p in m._trainable_params()]
    assert len(m.ema.names) == len(params)
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    m.ema.update(params)  # warm-up decay min(0.5, 2/11) -> shadow moves most of the way
    shadow = m.ema.shadows()[0]
    assert torch.all(shadow > before[0]) and torch.all(shadow < params[0])
    with m.ema.applied(params):
        assert torch.equal(params[0], shadow)
    assert torch.equal(params[0], before[0] + 1)


# ----------------------------------------------------------------------------------------------- Lightning loop


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int, frames: int) -> None:
        self.n, self.frames = n, frames

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        b = make_batch(1, self.frames, seed=i)
        return {k: v[0] for k, v in b.items()}


def _fit(m: VideoModule, out: Path, frames: int, steps: int = 2) -> Path:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    dl = lambda: torch.utils.data.DataLoader(_Data(4, frames), batch_size=2)  # noqa: E731
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=TensorBoardLogger(str(out), name="tb", version=""),
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        num_sanity_val_steps=0, default_root_dir=str(out))
    trainer.fit(m, dl(), dl())
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt


def test_stage_a_then_b_through_lightning(tmp_path: Path) -> None:
    a = module("a", ema={"enabled": True, "decay": 0.9})
    ckpt_a = _fit(a, tmp_path / "a", frames=1)
    raw = torch.load(ckpt_a, map_location="cpu", weights_only=True)  # plain hparams: loads without pickle
    assert raw["hyper_parameters"]["substage"] == "a" and any(k.startswith("ema.") for k in raw["state_dict"])
    # validation logged PSNR/SSIM/copy baseline and a GT | pose | masks | generated video
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "a" / "tb"))
    ea.Reload()
    assert {"val/psnr", "val/ssim", "val/psnr_copy_ref", "val/loss"} <= set(ea.Tags()["scalars"])
    assert "val/sample_0" in ea.Tags()["images"]  # add_video events are stored as (animated) images

    b = module("b", init_from=str(ckpt_a))
    sd_a = load_net_state(ckpt_a)  # EMA weights preferred
    own = b.net.state_dict()
    name = next(n for n in sd_a if n.startswith("denoising_unet.conv_in"))
    assert torch.equal(own[name], sd_a[name])
    assert torch.equal(sd_a[name], a.ema.shadows()[a.ema.names.index(name)].to(sd_a[name].dtype))
    frozen = {n: p.detach().clone() for n, p in b.net.named_parameters() if not p.requires_grad}
    _fit(b, tmp_path / "b", frames=3)
    changed = [n for n, p in b.net.named_parameters() if not p.requires_grad and not torch.equal(p, frozen[n])]
    assert not changed  # stage B leaves the stage-A model untouched
    # init_exclude keeps a group's own initialisation (e.g. AnimateDiff motion modules at paper size)
    fresh = module("b", seed=0)
    kept = module("b", seed=0, init_from=str(ckpt_a), init_exclude=["pose_guider"])
    pg = "pose_guider.embed.conv_in.weight"
    assert torch.equal(kept.net.state_dict()[pg], fresh.net.state_dict()[pg])
    assert not torch.equal(kept.net.state_dict()[pg], sd_a[pg])
    with pytest.raises(ValueError, match="init_exclude"):
        module("b", init_exclude=["vae"])
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        module("b", init_from=str(tmp_path / "missing.ckpt"))


# ----------------------------------------------------------------------------------------------- configs


EXPERIMENTS = ["video_stage_a", "video_stage_b", "quickstart_video", "video_stage_a_pats", "video_stage_b_pats"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_configs_compose(experiment: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mmgt.utils.paths import CONF_DIR

    over = [f"experiment={experiment}", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"]
    if experiment == "video_stage_b":
        over.append("model.init_from=null")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=over)
    assert cfg.data.stage == "video" and cfg.model.substage in ("a", "b")
    assert "latent_downsample" not in cfg.data and "mask_levels" not in cfg.data  # the data names no network fact
    assert cfg.mask.cell == cfg.size.video.codec.get("factor", 8)  # masks on this codec's latent grid
    if experiment.endswith("_pats"):
        assert cfg.size.name == "full" and cfg.model.optim.lr == 1e-5 and cfg.data.image_size == 512
        if experiment == "video_stage_b_pats":
            assert cfg.data.n_frames == 12 and cfg.model.substage == "b"
        return
    m = instantiate(cfg.model, data_info=INFO, _recursive_=False)
    assert isinstance(m, VideoModule) and m.net.attention_type == "mm_haa"
    assert set(m.hparams.trainable) == set({"a": ["denoising_unet", "reference_unet", "pose_guider", "image_encoder"],
                                            "b": ["motion_modules", "audio_modules", "audio_proj"]}[m.substage])


@pytest.mark.parametrize("attention", ["none", "cross", "haa", "mm_haa"])
def test_attention_configs(attention: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart_video", f"attention={attention}"])
    m = instantiate(cfg.model, data_info=INFO, _recursive_=False)
    assert m.net.attention_type == attention
    assert m.net.n_branches == {"none": 0, "cross": 1}.get(attention, 3)
    loss, _ = m.diffusion_loss(make_batch(b=1, n=2))
    loss.backward()
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("optim", [pytest.param({}, id="adamw"), pytest.param(ADAMW_8BIT, id="adamw8bit", marks=(
    pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install 'mmgt[bnb]')"),
    pytest.mark.skipif(not os.environ.get("MMGT_LEARN_8BIT"), reason=LEARN_8BIT_SKIP)))])
def test_tiny_model_learns_on_synthetic_corpus(tmp_path: Path, optim: dict) -> None:
    """Sub-stage A, trained briefly on a synthetic corpus whose speakers drift sideways (``sway=0.8``), generates
    held-out frames (val clips, reference = frame 0, windows from frame 1 on) better than copying the reference
    frame: the pose it is given moved the figure, and the model follows it. Also far better than at init and than
    a flat frame of the right mean colour. (On the default corpus, sway 0.02, the figure barely moves and copying
    frame 0 scores ~42 dB at 16 px: no useful yardstick.)"""
    import lightning as L

    from mmgt.data.datamodule import PATSDataModule
    from mmgt.data.synthetic import generate_corpus
    from mmgt.metrics import PSNR

    root = tmp_path / "moving"
    generate_corpus(root, n_speakers=2, clips_per_speaker=5, seconds=3.0, size=64, seed=0, sway=0.8, progress=False)
    dm = PATSDataModule(root, "video", n_frames=1, image_size=16, mask={"cell": 2},
                        batch_size=16, val_batch_size=16, stride=1, val_stride=9, progress=False,
                        num_workers=1)  # decoding overlaps the training step: ~0.3 instead of ~0.43 s per step
    dm.prepare_data()
    dm.setup("fit")
    net = dict(codec=dict(type="pixel", factor=2), image_encoder=dict(type="conv", channels=[16, 32]),
               unet=dict(block_out_channels=[32, 64], layers_per_block=1, down_blocks=["cross", "cross"], heads=4,
                         cross_attention_dim=32, norm_num_groups=8, motion_heads=2),
               pose_guider=dict(channels=[16, 32]), audio_proj=dict(hidden_dim=32, tokens=2, dim=32))
    torch.manual_seed(0)
    # noise_offset 0: the setting the PSNRs above were measured with (the code default then; conf/loss says 0.05)
    m = VideoModule(net, attention={"type": "mm_haa", "blocks": ["down"]}, loss={"snr_gamma": 5.0, "noise_offset": 0.0},
                    optim={**optim, "lr": 2e-3}, substage="a", sampling={"steps": 25, "guidance": 1.0},
                    ema={"enabled": True, "decay": 0.995}, validation={"log_media": False}, data_info=dm.info())
    val = next(iter(dm.val_dataloader()))
    gt = val["frames"]
    assert len(set(val["clip_id"])) == 2 and int(val["start"].min()) >= 1  # both val speakers; frame 0 excluded

    def psnr(video: torch.Tensor) -> float:
        metric = PSNR()
        metric.update(video.contiguous(), gt)
        return float(metric.compute())

    def generated() -> float:
        m.eval()
        with m.ema_weights():
            out = psnr(m.generate(val, generator=torch.Generator().manual_seed(0)))
        m.train()
        return out

    before = generated()
    trainer = L.Trainer(max_steps=STEPS_LEARN, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(m, dm.train_dataloader())
    after = generated()
    flat = psnr(gt.mean(dim=(-1, -2), keepdim=True).expand_as(gt))
    copy = psnr(val["ref_frame"][:, None].expand_as(gt))
    print(f"held-out PSNR: init {before:.2f} dB, trained {after:.2f} dB, flat mean colour {flat:.2f} dB, "
          f"copy reference {copy:.2f} dB")
    assert after > copy + COPY_MARGIN_DB
    assert after > flat + 5.0
    assert after > before + 10.0
