"""Audio attention variants: how the audio tokens reach the backbone (``conf/attention/*.yaml``).

A variant is a class named by ``_target_`` in its YAML; the other keys are its settings:

- ``module``: the audio-block class put at every selected site (:func:`~mmgt.models.video.mmhaa.audio_module_class`:
  the compact :class:`~mmgt.models.video.mmhaa.AudioAttention`, MMGT's
  :class:`~mmgt.models.video.mmhaa.OfficialAudioModule`, or any class with the same ``from_layer`` constructor and
  forward ``(hidden, audio, masks, branch_weights) -> hidden``);
- ``blocks``: which attention sites of the backbone get one (``Backbone.attention_sites``);
- the branch count is the data's mask branches (``mask.branches``, stated once); ``n_branches`` exists only for
  files that record their own (converted weights) and must agree; ``branch_weights``: the branches' training weights
  (applied by the training module; checked here against the branch count).

The class decides what differs between variants: whether audio is used at all, how many branches there are and
whether the region masks gate them. ``type`` (``none`` | ``cross`` | ``haa`` | ``mm_haa``) is the readable alias of
the four built-in classes; configs and checkpoints that name only ``type`` build the same network.

The variant is itself the container of the per-site audio modules (a ``ModuleDict`` keyed by ``Site.key``), held
by VideoNet as ``audio_modules``, so their state-dict names are ``audio_modules.<site>.*``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from mmgt.models.video.backbone import Backbone, Site
from mmgt.models.video.components import component_class, construct, split_target
from mmgt.models.video.mmhaa import audio_module_class


class AudioAttentionVariant(nn.ModuleDict):
    """K unmasked audio branches per site (the base behaviour; subclasses change the class attributes or
    :meth:`branch_count` / :meth:`site_forward`).

    Constructed by VideoNet as ``cls(backbone=..., audio_dim=..., heads=..., mask_branches=..., **config)``.
    """

    alias: ClassVar[str | None] = None  # the ``attention.type`` naming this class
    uses_audio: ClassVar[bool] = True  # False: no audio projection, no audio modules
    masked: ClassVar[bool] = False  # region masks gate the branches (the batch must carry them)
    default_module: ClassVar[str | type | None] = None  # audio block when ``module`` is null (None: the compact)

    def __init__(self, backbone: Backbone, audio_dim: int, heads: int, mask_branches: int | None = None,
                 module: str | type | None = None, blocks: Sequence[str] = ("down",), n_branches: int | None = None,
                 branch_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.blocks = list(blocks)
        self.n_branches = self.branch_count(n_branches, mask_branches)
        if branch_weights is not None and len(branch_weights) != self.n_branches:
            raise ValueError(f"attention.branch_weights has {len(branch_weights)} values, the model has "
                             f"{self.n_branches} branches")
        self.branch_weights = None if branch_weights is None else [float(w) for w in branch_weights]
        self.sites: list[Site] = []
        self.module_class: type | None = None
        if not self.uses_audio:
            return
        self.module_class = audio_module_class(module or self.default_module)
        self.sites = backbone.attention_sites(self.blocks)
        if not self.sites:
            raise ValueError(f"attention.blocks={self.blocks} selects no attention site of the "
                             f"{type(backbone).__name__}")
        for s in self.sites:
            self[s.key] = self.module_class.from_layer(s.channels, s.in_channels, audio_dim, self.n_branches, heads,
                                                       s.norm_groups)

    def branch_count(self, n_branches: int | None, mask_branches: int | None) -> int:
        if n_branches and mask_branches and int(n_branches) != int(mask_branches):
            raise ValueError(f"attention.n_branches={n_branches} but the data's mask config has {mask_branches} "
                             "branches (mask.branches states the branch count)")
        count = n_branches or mask_branches
        if not count:
            raise ValueError(f"{type(self).__name__} needs the branch count: the mask config's branches "
                             "(the data info's num_branches)")
        return int(count)

    def site_forward(self, key: str, hidden: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor | None,
                     branch_weights: torch.Tensor) -> torch.Tensor:
        """The feature map (N, C, h, w) of site ``key`` after its audio module; ``masks`` only when ``masked``."""
        return self[key](hidden, audio, masks, branch_weights)


class NoAudioAttention(AudioAttentionVariant):
    """No audio attention (ablation): stage 2 does not use the audio; ``blocks`` and ``module`` are ignored."""

    alias, uses_audio = "none", False

    def branch_count(self, n_branches: int | None, mask_branches: int | None) -> int:
        return 0


class CrossAudioAttention(AudioAttentionVariant):
    """One plain audio cross-attention per site (ablation); always one branch, whatever ``n_branches`` says."""

    alias = "cross"

    def branch_count(self, n_branches: int | None, mask_branches: int | None) -> int:
        return 1


class HierarchicalAudioAttention(AudioAttentionVariant):
    """One branch per mask branch with masks of ones (ablation: the hierarchy without the motion masks)."""

    alias = "haa"


class MotionMaskedAudioAttention(AudioAttentionVariant):
    """MM-HAA: one branch per mask branch, each gated by its region mask at the site's resolution."""

    alias, masked = "mm_haa", True


ALIASES: dict[str, type[AudioAttentionVariant]] = {
    c.alias: c for c in (NoAudioAttention, CrossAudioAttention, HierarchicalAudioAttention,
                         MotionMaskedAudioAttention)}


def variant_class(cfg: Mapping[str, Any] | None) -> tuple[type[AudioAttentionVariant], dict[str, Any]]:
    """(class, settings) of an ``attention`` config: ``_target_`` names the class, ``type`` is its alias (alone it
    picks a built-in class; with ``_target_`` it must agree); no config = no audio attention."""
    target, rest = split_target(cfg or {})
    alias = rest.pop("type", None)
    if target is None:
        alias = "none" if alias is None else alias
        if alias not in ALIASES:
            raise ValueError(f"attention.type must be one of {tuple(ALIASES)} (or name a class in "
                             f"attention._target_), got {alias!r}")
        return ALIASES[alias], rest
    cls = component_class(target, AudioAttentionVariant, "attention._target_", "an audio attention variant")
    if alias is not None and alias != cls.alias:
        raise ValueError(f"attention.type={alias!r} does not name attention._target_={target!r} (alias "
                         f"{cls.alias!r}); set one of them")
    return cls, rest


def build_attention(cls: type[AudioAttentionVariant], settings: Mapping[str, Any], backbone: Backbone,
                    audio_dim: int, heads: int, mask_branches: int | None) -> AudioAttentionVariant:
    return construct(cls, "attention", settings, backbone=backbone, audio_dim=int(audio_dim), heads=int(heads),
                     mask_branches=mask_branches)


__all__ = ["ALIASES", "AudioAttentionVariant", "CrossAudioAttention", "HierarchicalAudioAttention",
           "MotionMaskedAudioAttention", "NoAudioAttention", "build_attention", "variant_class"]
