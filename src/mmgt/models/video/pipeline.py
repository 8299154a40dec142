"""Sampling: DDIM with classifier-free guidance and overlapping context windows for long clips.

One noise schedule (:func:`make_scheduler`) serves training and sampling by default (the original trained with
``scaled_linear`` betas and sampled with ``linear`` ones; ``VideoSampler(beta_schedule="linear")`` reproduces that
for released MMGT weights). The
unconditional branch of CFG drops the reference image (zero token, reference bank hidden) and the audio
(zero tokens) exactly like training-time dropout; pose and masks are kept, as in MMGT. For clips longer than
``context_frames`` every step denoises overlapping windows and averages the per-frame predictions (windows do
not wrap around the clip end, unlike the original's closed-loop scheduler).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler

from mmgt.models.video.net import VideoNet


def make_scheduler(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                   beta_schedule: str = "scaled_linear", set_alpha_to_one: bool = True) -> DDIMScheduler:
    """DDIM, v-prediction, zero-terminal-SNR rescaling, trailing timestep spacing (as MMGT's stage 2).

    ``set_alpha_to_one=True`` (diffusers' default, which the original's scheduler kwargs kept) makes the last DDIM
    step return the predicted clean sample; False stops at ᾱ_0 ≈ 0.999 and leaves noise of std ≈ 0.03 in the latents.
    """
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, clip_sample=False, set_alpha_to_one=set_alpha_to_one,
                         steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                         timestep_spacing="trailing")


def context_windows(n_frames: int, size: int, overlap: int) -> list[list[int]]:
    """Frame indices of overlapping windows that cover ``0..n_frames-1`` (last window aligned to the end)."""
    if n_frames <= size:
        return [list(range(n_frames))]
    if not 0 <= overlap < size:
        raise ValueError(f"context_overlap must be in [0, context_frames), got {overlap} for {size}")
    stride = size - overlap
    starts = list(range(0, n_frames - size, stride)) + [n_frames - size]
    return [list(range(s, s + size)) for s in sorted(set(starts))]


def _take(x: torch.Tensor | Sequence[torch.Tensor] | None, idx: torch.Tensor, dim: int):
    if x is None:
        return None
    if torch.is_tensor(x):
        return x.index_select(dim, idx)
    return [m.index_select(dim, idx) for m in x]


def _twice(x: torch.Tensor | Sequence[torch.Tensor] | None):
    if x is None:
        return None
    if torch.is_tensor(x):
        return torch.cat([x, x])
    return [torch.cat([m, m]) for m in x]


class VideoSampler:
    """Generate (B, F, 3, H, W) frames in [-1, 1] from a reference frame, pose images, audio and masks.

    Args:
        scheduler: the training scheduler (its config is copied).
        beta_schedule: sample with these betas instead of the training ones (None: the same; MMGT's inference
            used ``linear`` while training with ``scaled_linear``).
        cache_reference: run the reference path once per clip and reuse its bank in every step and window (the
            reference image does not change; False recomputes it in every forward, the same video at one more
            reference-UNet pass per forward: kept to measure what the cache saves).
    """

    def __init__(self, net: VideoNet, scheduler: DDIMScheduler, steps: int = 30, guidance: float = 3.5,
                 context_frames: int = 12, context_overlap: int = 4, eta: float = 0.0,
                 beta_schedule: str | None = None, cache_reference: bool = True) -> None:
        self.net, self.steps, self.guidance, self.eta = net, int(steps), float(guidance), float(eta)
        self.cache_reference = bool(cache_reference)
        extra = {} if beta_schedule is None else {"beta_schedule": str(beta_schedule)}
        self.scheduler = DDIMScheduler.from_config(scheduler.config, **extra)
        self.context_frames, self.context_overlap = int(context_frames), int(context_overlap)

    @torch.no_grad()
    def __call__(self, ref_frame: torch.Tensor, pose_images: torch.Tensor, audio_emb: torch.Tensor | None = None,
                 masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 branch_weights: Sequence[float] | torch.Tensor | None = None,
                 generator: torch.Generator | None = None, progress: bool = False, latents: torch.Tensor | None = None,
                 on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """ref_frame (B,3,H,W) [-1,1]; pose_images (B,F,3,H,W) [0,1]; audio_emb (B,F,W,L,D); masks (B,K,F,h,w).

        ``latents``: the initial noise (B, C, F, h, w) instead of drawing it (reproducing a run);
        ``on_step(i, latents)`` sees the latents after every DDIM step.
        """
        net = self.net
        b, f = pose_images.shape[:2]
        ref_lat = net.encode_frames(ref_frame)
        emb = net.embed_reference(ref_frame)
        cfg = self.guidance != 1.0
        if cfg:  # the reference UNet runs once on the CFG batch, as MMGT's pipeline (the uncond half never reads it)
            ref_lat, emb = torch.cat([ref_lat, ref_lat]), torch.cat([emb, emb])
        bank = net.encode_reference(ref_lat, emb) if self.cache_reference else None
        c, h, w = ref_lat.shape[1:]
        if latents is None:
            latents = torch.randn((b, c, f, h, w), generator=generator, device=ref_lat.device, dtype=ref_lat.dtype)
        elif tuple(latents.shape) != (b, c, f, h, w):
            raise ValueError(f"initial latents {tuple(latents.shape)} != {(b, c, f, h, w)}")
        latents = latents.to(ref_lat.device, ref_lat.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(self.steps, device=ref_lat.device)
        if cfg:
            drop = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(latents.device)
        else:
            drop = None
        windows = context_windows(f, self.context_frames, self.context_overlap)
        timesteps = self.scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc="sampling", leave=False)
        for i, t in enumerate(timesteps):
            pred = torch.zeros_like(latents)
            count = torch.zeros(f, device=latents.device, dtype=latents.dtype)
            for win in windows:
                idx = torch.tensor(win, device=latents.device)
                x = latents.index_select(2, idx)
                pose, aud, msk = (pose_images.index_select(1, idx), _take(audio_emb, idx, 1), _take(masks, idx, 2))
                if cfg:
                    x, pose, aud, msk = torch.cat([x, x]), torch.cat([pose, pose]), _twice(aud), _twice(msk)
                ts = t.reshape(1).expand(x.shape[0]).to(latents.device)
                v = net(x, ts, None if self.cache_reference else ref_lat, emb, pose, aud, msk, branch_weights,
                        drop_image=drop, drop_audio=drop, reference=bank)
                if cfg:
                    v_u, v_c = v.chunk(2)
                    v = v_u + self.guidance * (v_c - v_u)
                pred[:, :, idx] += v.to(pred.dtype)
                count[idx] += 1
            pred = pred / count.view(1, 1, f, 1, 1)
            latents = self.scheduler.step(pred, t, latents, eta=self.eta, generator=generator).prev_sample
            if on_step is not None:
                on_step(i, latents)
        return net.decode_latents(latents)
