"""The stage-2 backbone seam: what :class:`~mmgt.models.video.net.VideoNet` needs of a denoiser.

VideoNet owns everything that is not the denoiser (codec, image encoder, pose guider, audio projection, the audio
attention variant) and talks to the denoiser only through :class:`Backbone`:

- ``forward(latents, timesteps, context)``: the prediction for (B, C, F, h, w) latents, with the reference-image
  token ``context`` (B, 1, D); the per-call conditioning (reference bank, image dropout, frame count) is in the
  shared :class:`~mmgt.models.video.reference.ForwardContext` ``ctx``;
- the **input site** (:meth:`Backbone.input_site`): where the pose features (width ``site.channels``, at latent
  resolution) are added;
- the **attention sites** (:meth:`Backbone.attention_sites`): the feature maps (N = B·F, C, h, w) audio modules act
  on, selected by the ``attention.blocks`` entries; the variant decides what happens there;
- **reference pairing**: :meth:`Backbone.run_reference` runs the reference path while ``ctx.writing`` so that it fills
  ``ctx.bank`` with exactly the entries named by ``reference_layers``; the denoiser reads them back from ``ctx``;
- **parameter groups** (:meth:`Backbone.parameter_groups`) for ``model.trainable``: the role names
  ``denoising_unet`` (spatial denoiser), ``motion_modules`` (temporal layers) and ``reference_unet`` (reference
  path) are what the sub-stage defaults and the experiment configs list, whatever the architecture; a backbone may
  add groups of its own;
- gradient checkpointing (:meth:`Backbone.enable_gradient_checkpointing`, optionally of named children only);
- ``temporal=False`` (sub-stage A without motion modules): passed only to backbones whose constructor takes it.

A backbone keeps its weights in named child modules; VideoNet registers those children as its own top-level parts,
so the state-dict names stay those of the parts (``denoising_unet.*``, ``reference_unet.*`` for the UNet: checkpoints
written before the seam existed load unchanged). Chosen by ``size.video.backbone: {_target_: <class>, ...}`` (the
other keys are the class's keyword arguments); without it the ``size.video.unet`` block builds the UNet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mmgt.models.video.components import component_class, construct, split_target
from mmgt.models.video.reference import ForwardContext

ROLE_GROUPS = ("denoising_unet", "motion_modules", "reference_unet")


@dataclass(frozen=True)
class Site:
    """A feature map inside the backbone: ``module``'s output, (N, ``channels``, h, w).

    ``in_channels`` is the width entering that layer (MMGT sizes its audio block by it); ``norm_groups`` the
    GroupNorm groups the backbone uses there (audio blocks with a GroupNorm follow it).
    """

    name: str
    module: nn.Module
    channels: int
    in_channels: int
    norm_groups: int

    @property
    def key(self) -> str:
        """Name of the audio module of this site (``audio_modules.<key>.*`` in state dicts)."""
        return self.name.replace(".", "_")


def map_feature(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to the feature map of a module output: a tensor, a tuple (first item) or a diffusers output
    object (``.sample``)."""
    if torch.is_tensor(output):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    output.sample = fn(output.sample)
    return output


class Backbone(nn.Module, ABC):
    """The denoiser of stage 2 (see the module docstring). Subclasses set ``latent_channels`` (in = out channels),
    ``context_dim`` (width of the reference-image token) and ``reference_layers``, and keep ``ctx``.

    Constructed as ``cls(ctx=..., latent_channels=..., load_weights=..., key=..., **config)``.
    """

    latent_channels: int
    context_dim: int

    def __init__(self, ctx: ForwardContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.reference_layers: list[str] = []

    @abstractmethod
    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents, (B,) timesteps, (B, 1, D) reference token -> (B, C, F, h, w) prediction."""

    @abstractmethod
    def input_site(self) -> Site:
        """Where the pose features are added (at latent resolution, ``channels`` wide)."""

    @abstractmethod
    def attention_sites(self, blocks: Sequence[str]) -> list[Site]:
        """The sites that ``attention.blocks`` selects (raise ValueError naming the valid entries)."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Role name -> (name, parameter) with names as in this backbone's ``named_parameters()``."""

    def run_reference(self, ref_latents: torch.Tensor, context: torch.Tensor) -> None:
        """Run the reference path on (B, C, h, w) reference latents while ``ctx.writing`` (fills ``ctx.bank``)."""
        if self.reference_layers:
            raise NotImplementedError(f"{type(self).__name__} names reference layers but has no run_reference")

    def enable_gradient_checkpointing(self, parts: Sequence[str] | None = None) -> None:
        """Recompute activations in backward; ``parts``: only these child modules (None: all that support it)."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def attach(self, site: Site, fn: Callable[[torch.Tensor], torch.Tensor]) -> RemovableHandle:
        """Replace the site's feature map ``h`` by ``fn(h)`` on every call."""
        return site.module.register_forward_hook(lambda module, args, output: map_feature(output, fn))


def build_backbone(cfg: Mapping[str, Any], ctx: ForwardContext, latent_channels: int, load_weights: bool = True,
                   key: str = "size.video", temporal: bool = True) -> Backbone:
    """The backbone of a ``size.video`` block: ``backbone: {_target_, ...}`` or, by default, the UNet of ``unet``.
    ``temporal=False``: without temporal layers (the backbone class must take a ``temporal`` argument)."""
    node, unet = cfg.get("backbone"), cfg.get("unet")
    if node is None:
        from mmgt.models.video.unet import UNetBackbone

        target, kwargs, where = UNetBackbone, dict(unet or {}), f"{key}.unet"
    else:
        if unet is not None:
            raise ValueError(f"{key}: set either `backbone` or `unet` (the default backbone's block), not both")
        target, kwargs = split_target(node)
        where = f"{key}.backbone"
        if target is None:
            raise ValueError(f"{where} needs a _target_ (the backbone class)")
    cls = component_class(target, Backbone, f"{where}._target_" if node is not None else where, "a stage-2 backbone")
    extra: dict[str, Any] = {}
    if not temporal:
        import inspect

        if "temporal" not in inspect.signature(cls).parameters:
            raise ValueError(f"{where}: {cls.__name__} cannot be built without temporal layers (it takes no "
                             "`temporal` argument); set model.stage_a_temporal=true")
        extra["temporal"] = False
    return construct(cls, where, kwargs, ctx=ctx, latent_channels=int(latent_channels),
                     load_weights=bool(load_weights), key=where, **extra)
