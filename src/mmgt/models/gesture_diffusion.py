"""Gesture diffusion: cosine schedule, x0-prediction, DDIM with η, CFG, windows.

The math is small enough to write out (and is tested against diffusers' ``DDIMScheduler`` with
``beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="trailing"``): we keep it here
because the original clips x̂0 to [-1, 1] *before* deriving ε̂ from it, which the diffusers step does not do,
and because a stateless sampler is simpler to batch with classifier-free guidance and window chaining.

Long audio: :meth:`GestureDiffusion.sample` cuts any length into windows of at most ``window`` frames, each
conditioned on the generated frame just before it (the original used frame 59 of an 80-frame window, a bug);
windows may overlap by ``overlap`` frames, which are cross-faded linearly so joins are smooth. The last window
is shifted back to end exactly at the last frame (full length, aligned with its audio) rather than padded.

Official parity (:mod:`mmgt.official.smga`): ``schedule_dtype="float32"`` keeps the official float32 tables
(ᾱ as a float32 cumulative product, ε̂ through √(1/ᾱ) and √(1/ᾱ-1)) and ``time_grid="trunc"`` its DDIM grid; DDIM
noises can be injected (``noise``, ``step_noise``) to replay a run drawn elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

Denoiser = Callable[..., torch.Tensor]


def cosine_betas(steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule (float64), as the original and diffusers' ``squaredcos_cap_v2``."""
    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
                        dtype=torch.float64)


Generators = torch.Generator | Sequence[torch.Generator] | None


def _per_sample(generator: Generators, batch: int, draw) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``draw(generator, n)`` for the whole batch, or once per sample when ``generator`` is a list (one per sample):
    then every sample's noise depends only on its own generator, so results do not depend on how samples are
    batched (a DDP run and a single process evaluate the same windows identically)."""
    if generator is None or isinstance(generator, torch.Generator):
        return draw(generator, batch)
    if len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
    return torch.cat([draw(g, 1) for g in generator])


def _randn(shape: Sequence[int], device: torch.device, dtype: torch.dtype, generator: Generators) -> torch.Tensor:
    return _per_sample(generator, shape[0],
                       lambda g, n: torch.randn((n, *shape[1:]), device=device, dtype=dtype, generator=g))


class GestureDiffusion(nn.Module):
    """Noise schedule + training noising + DDIM/CFG sampling for an x0-predicting denoiser (no parameters)."""

    def __init__(self, timesteps: int = 1000, cond_drop_prob: float = 0.25, clip_x0: bool = True,
                 clip_range: float = 1.0, schedule_dtype: str = "float64", time_grid: str = "round",
                 residual_scale: float | None = None) -> None:
        """``schedule_dtype``: "float64" (ᾱ accumulated in float64; ε̂ = (x - √ᾱ x̂0)/√(1-ᾱ)) or "float32" (the
        official: β rounded to float32, ᾱ = float32 cumprod, ε̂ = (√(1/ᾱ) x - x̂0)/√(1/ᾱ - 1) from float32 tables;
        near t = 0 the two ε̂ differ by ~1e-3 relative through float32 cancellation). ``time_grid``: DDIM steps
        from linspace(-1, T-1, S+1) "round"ed or "trunc"ated toward zero (the official; same grid for S = 50).
        ``residual_scale``: None diffuses the poses themselves (the original); a number s diffuses their offsets from
        the conditioning pose, ``(x - cond) * s``: still keypoints become a target of 0 instead of a copy of the
        input, and the diffusion's residual error shrinks by s in pixels (s times the largest offset should stay
        within ``clip_range``). The net still sees the conditioning pose; callers see absolute poses either way."""
        super().__init__()
        if residual_scale is not None and not residual_scale > 0:
            raise ValueError(f"diffusion.residual_scale must be a positive number or null, got {residual_scale!r}")
        self.residual_scale = None if residual_scale is None else float(residual_scale)
        if schedule_dtype not in ("float64", "float32"):
            raise ValueError(f"diffusion.schedule_dtype must be 'float64' or 'float32', got {schedule_dtype!r}")
        if time_grid not in ("round", "trunc"):
            raise ValueError(f"diffusion.time_grid must be 'round' or 'trunc', got {time_grid!r}")
        self.timesteps, self.cond_drop_prob = int(timesteps), float(cond_drop_prob)
        self.clip_x0, self.clip_range = bool(clip_x0), float(clip_range)
        self.schedule_dtype, self.time_grid = schedule_dtype, time_grid
        betas = cosine_betas(self.timesteps)
        if schedule_dtype == "float32":
            betas = betas.float()
            acp = torch.cumprod(1 - betas, 0)
            self.register_buffer("sqrt_recip_acp", torch.sqrt(1.0 / acp), persistent=False)
            self.register_buffer("sqrt_recipm1_acp", torch.sqrt(1.0 / acp - 1), persistent=False)
        else:
            acp = torch.cumprod(1 - betas, 0)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", acp, persistent=False)

    # ------------------------------------------------------------------------------------------- training

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t (1 for t = -1) broadcast to ``like``."""
        a = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones_like(self.alphas_cumprod[:1]))
        return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε."""
        noise = torch.randn_like(x0) if noise is None else noise
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def sample_timesteps(self, batch: int, device: torch.device, generator: Generators = None) -> torch.Tensor:
        return _per_sample(generator, batch,
                           lambda g, n: torch.randint(0, self.timesteps, (n,), device=device, generator=g))

    def sample_drop_mask(self, batch: int, device: torch.device, generator: Generators = None) -> torch.Tensor:
        """Per-sample audio dropout for classifier-free guidance (True = drop)."""
        return _per_sample(generator, batch, lambda g, n: torch.rand(n, device=device, generator=g)) \
            < self.cond_drop_prob

    def training_pair(self, net: Denoiser, x0: torch.Tensor, audio: torch.Tensor, cond_pose: torch.Tensor,
                      generator: Generators = None, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      drop_audio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``x0`` at random steps, drop audio per sample, run the net: returns (x̂0, t). ``t``, ``noise`` and
        ``drop_audio`` (True = drop) may be given instead of drawn (to replay a step computed elsewhere)."""
        b, dev = x0.shape[0], x0.device
        t = self.sample_timesteps(b, dev, generator) if t is None else t.to(dev)
        noise = _randn(x0.shape, dev, x0.dtype, generator) if noise is None else noise.to(dev)
        x_t = self.q_sample(self.to_residual(x0, cond_pose), t, noise)
        drop = self.sample_drop_mask(b, dev, generator) if drop_audio is None else drop_audio.to(dev, torch.bool)
        return self.from_residual(net(x_t, t, audio, cond_pose, drop_audio=drop), cond_pose), t

    def to_residual(self, x: torch.Tensor, cond_pose: torch.Tensor) -> torch.Tensor:
        """Poses (B, N, K, C) -> the space the diffusion runs in (themselves, or scaled offsets from ``cond_pose``)."""
        return x if self.residual_scale is None else (x - cond_pose[:, None]) * self.residual_scale

    def from_residual(self, z: torch.Tensor, cond_pose: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_residual`: absolute poses from the diffusion's space."""
        return z if self.residual_scale is None else cond_pose[:, None] + z / self.residual_scale

    # ------------------------------------------------------------------------------------------- sampling

    def ddim_timesteps(self, steps: int) -> list[tuple[int, int]]:
        """(t, t_next) pairs from ``linspace(-1, T-1, steps+1)`` (float32) reversed: (999, 979), ..., (19, -1) for 50;
        ``time_grid`` says whether the grid is rounded or truncated toward zero (the official ``.int()``)."""
        grid = torch.linspace(-1, self.timesteps - 1, steps + 1)
        ts = (grid.round() if self.time_grid == "round" else grid).long().flip(0).tolist()
        return list(zip(ts[:-1], ts[1:]))

    def eps_from_x0(self, x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε̂ implied by x_t and x̂0 (see ``schedule_dtype`` for the two float forms)."""
        if self.schedule_dtype == "float32":
            shape = (-1, *([1] * (x.dim() - 1)))
            r = self.sqrt_recip_acp[t].to(x.dtype).view(shape)
            return (r * x - x0) / self.sqrt_recipm1_acp[t].to(x.dtype).view(shape)
        a = self._abar(t, x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    def model_predictions(self, net: Denoiser, x: torch.Tensor, t: torch.Tensor, audio: torch.Tensor,
                          cond_pose: torch.Tensor, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) of one DDIM step: guided x̂0, clipped when ``clip_x0``, and the ε̂ derived from it."""
        x0 = self.predict_x0(net, x, t, audio, cond_pose, guidance)
        if self.clip_x0:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return self.eps_from_x0(x, t, x0), x0

    def predict_x0(self, net: Denoiser, x: torch.Tensor, t: torch.Tensor, audio: torch.Tensor,
                   cond_pose: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guided x̂0 = u + w (c - u); conditional and unconditional passes share one batch."""
        b = x.shape[0]
        if guidance == 1.0:
            return net(x, t, audio, cond_pose, drop_audio=torch.zeros(b, dtype=torch.bool, device=x.device))
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([audio, audio]), torch.cat([cond_pose, cond_pose]),
                  drop_audio=drop)
        cond, uncond = out[:b], out[b:]
        return uncond + guidance * (cond - uncond)

    @torch.no_grad()
    def ddim_sample(self, net: Denoiser, audio: torch.Tensor, cond_pose: torch.Tensor, shape: tuple[int, ...],
                    steps: int = 50, eta: float = 1.0, guidance: float = 2.0,
                    generator: Generators = None, noise: torch.Tensor | None = None,
                    step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """One window: DDIM from pure noise to x0 (absolute poses; the steps run in the :meth:`to_residual` space).
        ``shape`` = (B, N, K, C); eta=0 is deterministic. ``noise`` is x_T and ``step_noise[k]`` the noise of the
        k-th stochastic update (steps - 1 of them), instead of draws."""
        dev = audio.device
        x = _randn(shape, dev, audio.dtype, generator) if noise is None else noise.to(dev)
        pairs = self.ddim_timesteps(steps)
        if step_noise is not None and len(step_noise) < sum(tn >= 0 for _, tn in pairs):
            raise ValueError(f"step_noise holds {len(step_noise)} noises for {len(pairs) - 1} stochastic steps")
        for k, (t_cur, t_next) in enumerate(pairs):
            t = torch.full((shape[0],), t_cur, device=dev, dtype=torch.long)
            eps, x0 = self.model_predictions(net, x, t, audio, cond_pose, guidance)
            if t_next < 0:
                x = x0
                continue
            a = self._abar(t, x)
            a_next = self._abar(torch.full_like(t, t_next), x)
            sigma = eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
            c = (1 - a_next - sigma ** 2).clamp(min=0).sqrt()
            x = a_next.sqrt() * x0 + c * eps
            if eta > 0:
                z = _randn(x.shape, dev, x.dtype, generator) if step_noise is None else step_noise[k].to(dev)
                x = x + sigma * z
        return self.from_residual(x, cond_pose)

    @staticmethod
    def window_starts(length: int, window: int, overlap: int = 0) -> list[int]:
        """Window start frames covering ``length`` frames; the last window ends exactly at ``length``."""
        if length <= window:
            return [0]
        stride = window - overlap
        if stride < 1:
            raise ValueError(f"overlap {overlap} must be smaller than the window {window}")
        starts = list(range(0, length - window + 1, stride))
        if starts[-1] + window < length:
            starts.append(length - window)
        return starts

    @torch.no_grad()
    def sample(self, net: Denoiser, audio: torch.Tensor, cond_pose: torch.Tensor, window: int,
               num_keypoints: int = 134, channels: int = 3, overlap: int = 0, steps: int = 50, eta: float = 1.0,
               guidance: float = 2.0, generator: Generators = None) -> torch.Tensor:
        """Poses for audio features of any length: ``audio`` (B, L, F), ``cond_pose`` (B, K, C) -> (B, L, K, C).

        Window k is conditioned on the generated frame just before its start; overlapping frames are
        cross-faded from the previous window's values to the new ones.
        """
        b, length, _ = audio.shape
        out = torch.empty(b, length, num_keypoints, channels, device=audio.device, dtype=audio.dtype)
        done = 0  # frames [0, done) are final
        for s in self.window_starts(length, window, overlap):
            n = min(window, length)
            cond = cond_pose if s == 0 else out[:, s - 1]
            x = self.ddim_sample(net, audio[:, s:s + n], cond, (b, n, num_keypoints, channels), steps, eta,
                                 guidance, generator)
            o = done - s  # frames of this window already produced by the previous one
            if o > 0:
                w = torch.arange(1, o + 1, device=x.device, dtype=x.dtype).div(o + 1).view(1, o, 1, 1)
                out[:, s:done] = (1 - w) * out[:, s:done] + w * x[:, :o]
            out[:, max(done, s):s + n] = x[:, max(o, 0):]
            done = s + n
        return out
