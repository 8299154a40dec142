"""Stage 2: latent video diffusion with reference attention, pose guider and MM-HAA audio attention."""

from mmgt.models.video.audio_proj import AudioProjection
from mmgt.models.video.codec import PixelCodec, VAECodec, build_codec
from mmgt.models.video.mmhaa import AudioAttention, MaskPyramid, OfficialAudioModule
from mmgt.models.video.net import VideoNet
from mmgt.models.video.pipeline import VideoSampler, context_windows, make_scheduler
from mmgt.models.video.pose_guider import PoseGuider
from mmgt.models.video.weights import MissingWeightsError

__all__ = ["AudioAttention", "AudioProjection", "MaskPyramid", "MissingWeightsError", "OfficialAudioModule",
           "PixelCodec", "PoseGuider", "VAECodec", "VideoNet", "VideoSampler", "build_codec", "context_windows",
           "make_scheduler"]
