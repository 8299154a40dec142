"""The one naming between mmgt's :class:`~mmgt.models.video.VideoNet` and the official MMGT ``Net.state_dict()``
(stage 2), used by every stage-2 converter (the Net file and the sub-stage A files) and by the parity tests.

The UNet layouts are SD's, so every UNet tensor keeps its name in diffusers' ``UNet2DConditionModel`` /
``UNetMotionModel``; the AnimateDiff temporal transformers are renamed (``temporal_transformer.`` dropped,
``attention_blocks.0/1`` -> ``attn1/attn2``, ``norms.0/1`` -> ``norm1/norm2``, ``ff_norm`` -> ``norm3``, the two equal
``pos_encoder.pe`` tables -> the block's one ``pos_embed.pe``), the audio modules become
:class:`~mmgt.models.video.mmhaa.OfficialAudioModule` s, the pose guider diffusers'
``ControlNetConditioningEmbedding`` (``pose_guider.embed.``) and the audio projection mmgt's MLP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PREFIXES = ("reference_unet.", "denoising_unet.", "pose_guider.", "audioproj.")
# mmgt tensors the official file cannot fill: frozen parts loaded from their own files, and the reference UNet's
# output head, which MMGT's copy of the UNet does not have and the forward never reads
EXTERNAL = ("codec.", "image_encoder.", "reference_unet.conv_norm_out.", "reference_unet.conv_out.")
BRANCHES = ("full", "face", "lip")  # official zero-conv names, in branch order (attn2_0, attn2_1, attn2_2)

# mmgt motion-module sub-name prefix -> official (below ``temporal_transformer.``), per transformer block
_MOTION = {"attn1.": "attention_blocks.0.", "attn2.": "attention_blocks.1.", "norm1.": "norms.0.",
           "norm2.": "norms.1.", "norm3.": "ff_norm.", "pos_embed.pe": "attention_blocks.0.pos_encoder.pe"}
# mmgt OfficialAudioModule sub-name prefix -> official
_AUDIO = {**{f"{n}.": f"transformer_blocks.0.{n}." for n in ("norm1", "attn1", "norm2", "norm3", "ff")},
          **{f"attn.{k}.": f"transformer_blocks.0.attn2_{k}." for k in range(len(BRANCHES))},
          **{f"proj.{k}.": f"transformer_blocks.0.zero_conv_{b}." for k, b in enumerate(BRANCHES)}}
_AUDIO_PROJ = {"mlp.0.": "proj1.", "mlp.2.": "proj2.", "mlp.4.": "proj3.", "norm.": "norm."}


def _sub(name: str, table: Mapping[str, str]) -> str:
    for a, o in table.items():
        if name.startswith(a):
            return o + name[len(a):]
    return name


def official_name(name: str) -> str:
    """The official ``Net.state_dict()`` name of an mmgt ``VideoNet`` tensor (the converter's one mapping)."""
    m = re.match(r"denoising_unet\.(.+\.motion_modules\.\d+)\.(.+)$", name)
    if m:
        sub = m.group(2)
        t = re.match(r"(transformer_blocks\.\d+\.)(.+)$", sub)
        if t:
            sub = t.group(1) + _sub(t.group(2), _MOTION)
        return f"denoising_unet.{m.group(1)}.temporal_transformer.{sub}"
    m = re.match(r"audio_modules\.(down_blocks|up_blocks|mid_block)_(?:(\d+)_)?attentions_(\d+)\.(.+)$", name)
    if m:
        blk = m.group(1) + (f".{m.group(2)}" if m.group(2) is not None else "")
        return f"denoising_unet.{blk}.audio_modules.{m.group(3)}.{_sub(m.group(4), _AUDIO)}"
    if name.startswith("pose_guider.embed."):
        return "pose_guider." + name[len("pose_guider.embed."):]
    if name.startswith("audio_proj."):
        return "audioproj." + _sub(name[len("audio_proj."):], _AUDIO_PROJ)
    return name

__all__ = ["BRANCHES", "EXTERNAL", "PREFIXES", "official_name"]
