"""Stage 2: latent video diffusion over a backbone seam, with reference attention, pose guider and audio attention
variants (MM-HAA)."""

from mmgt.models.video.attention import AudioAttentionVariant
from mmgt.models.video.audio_proj import AudioProjection
from mmgt.models.video.backbone import Backbone, Site
from mmgt.models.video.codec import PixelCodec, VAECodec, build_codec
from mmgt.models.video.mmhaa import AudioAttention, MaskPyramid, OfficialAudioModule
from mmgt.models.video.net import VideoNet
from mmgt.models.video.pipeline import VideoSampler, context_windows, make_scheduler
from mmgt.models.video.pose_guider import PoseGuider
from mmgt.models.video.unet import UNetBackbone
from mmgt.models.video.weights import MissingWeightsError

__all__ = ["AudioAttention", "AudioAttentionVariant", "AudioProjection", "Backbone", "MaskPyramid",
           "MissingWeightsError", "OfficialAudioModule", "PixelCodec", "PoseGuider", "Site", "UNetBackbone", "VAECodec",
           "VideoNet", "VideoSampler", "build_codec", "context_windows", "make_scheduler"]
