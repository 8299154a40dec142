"""Image + speech -> talking, gesturing video over the two trained stages' networks (as diffusers pipelines are).

:class:`GesturePipeline` holds the components and nothing else: the stage-1 network and its diffusion
(:class:`~mmgt.models.smga.GestureDecoder`, :class:`~mmgt.models.gesture_diffusion.GestureDiffusion`, the pose
normaliser), the stage-2 network and its diffusers scheduler (:class:`~mmgt.models.video.VideoNet`, sampled by
:class:`~mmgt.models.video.VideoSampler`), the audio feature extractors and the
:class:`~mmgt.pose.conditioning.ConditionProcessor` the training dataset builds its conditions with (so generation
cannot drift from training). :meth:`GesturePipeline.__call__` is the recipe, on arrays:

1. check inputs — the image is centre-cropped to the video model's aspect ratio and resized to its frame size, the
   initial pose mapped through the same :class:`~mmgt.pose.conditioning.CropResize`; ``T = ceil(samples / 640)``;
2. encode audio — :class:`~mmgt.data.audio_features.Stage1Features` of the whole speech;
3. poses — chained SMGA windows over the full length (the first conditioned on the image's pose), DDIM + CFG;
4. conditions — pose images and region masks of the generated poses, wav2vec windows of the speech;
5. prepare latents — the initial noise, drawn from the generator;
6. denoise — DDIM + CFG with overlapping context windows over the full length (MM-HAA branch weights);
7. decode — the sampler's decoded frames as uint8.

Settings come as typed options (:mod:`mmgt.generation.options`); unstated ones are the checkpoints'. Build the
pipeline with :meth:`~GesturePipeline.from_checkpoints` or :meth:`~GesturePipeline.from_modules` (the
LightningModules' inference views); :meth:`~GesturePipeline.generate` adds file input and output around the recipe.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import mmgt.generation.inputs as io
from mmgt import checkpoints
from mmgt.data.corpus import FPS, HOP, SAMPLE_RATE
from mmgt.errors import GenerationError
from mmgt.generation.options import PoseSampling, Sampling, VideoSampling
from mmgt.generation.outputs import (
    GenerationResult,
    OutputPaths,
    encoding_options,
    mask_panel,
    place_reference,
    write_outputs,
)
from mmgt.pose.conditioning import ConditionProcessor, normalise_frames, scale_keypoints

if TYPE_CHECKING:
    from diffusers import DDIMScheduler

    from mmgt.data.audio_features import Stage1Features, Wav2VecFeatures
    from mmgt.models.gesture_diffusion import GestureDiffusion
    from mmgt.models.smga import GestureDecoder
    from mmgt.models.video import VideoNet
    from mmgt.pose.layout import PoseNormalizer

log = logging.getLogger(__name__)


@dataclass
class LoadedStage:
    """A stage module ready for inference plus what the pipeline needs to feed it like its training data."""

    kind: str
    module: nn.Module
    path: Path
    features: dict[str, Any] = field(default_factory=dict)  # extractor kwargs (stage1_features / stage2_features)


def load_stage(path: str | Path, kind: str, net: Mapping[str, Any] | None = None, key: str | None = None,
               device: str | torch.device = "cpu") -> LoadedStage:
    """Rebuild a stage module from its checkpoint/export (:mod:`mmgt.checkpoints`) for inference.

    ``kind``: ``smga`` or ``video``; ``net``: overrides of the recorded architecture (the weights must fit them).
    EMA weights are used when the checkpoint has them. Raises :class:`~mmgt.errors.CheckpointError` (a
    :class:`GenerationError`) with the file and config key for a missing file, a checkpoint of the other stage,
    stored settings that name code, non-finite weights, or weights that do not fit.
    """
    key = key or kind
    ckpt = checkpoints.read(path, f"{key}.ckpt")
    module = checkpoints.build_module(ckpt, kind, net, key, device)
    feat_key = "stage1_features" if kind == "smga" else "stage2_features"
    return LoadedStage(kind, module, ckpt.path, dict(ckpt.datamodule.get(feat_key) or {}))


@dataclass
class GestureOutput:
    """What one :meth:`GesturePipeline.__call__` produced (arrays; nothing written)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    keypoints: np.ndarray  # (T, 134, 3) generated pixel keypoints of the output frames
    pose_images: torch.Tensor  # (T, 3, H, W) in [0, 1]
    masks: torch.Tensor  # (K, T, h, w) region masks at the latent size
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage: inputs, poses, conditions, video


@contextlib.contextmanager
def _progress(module: nn.Module, desc: str, total: int, enabled: bool) -> Iterator[None]:
    """A tqdm bar advanced by every forward call of ``module`` (one denoising step of one window)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)

    def tick(*_: Any) -> None:  # a forward hook must return None (anything else replaces the output)
        bar.update(1)

    handle = module.register_forward_hook(tick)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


class GesturePipeline:
    """Still image + speech -> video with the networks of a trained stage 1 (SMGA) and stage 2 (video diffusion).

    Args (the components):
        pose_net, pose_diffusion, normalizer: the SMGA network, its DDIM sampler and the pixel <-> network pose map
            (keypoints are scaled to the normaliser's frame and back).
        video_net, scheduler: the stage-2 network and the diffusers scheduler it trained with.
        pose_features, video_features: the audio feature extractors (``video_features`` None: no audio attention).
        conditions: the :class:`ConditionProcessor` of the video model's training data.
        frame_size: (H, W) of the video model's frames; audio_context: wav2vec frames either side of each frame.
        pose_sampling, video_sampling: the sampling settings used where a call states none (the checkpoints').
    """

    def __init__(self, *, pose_net: GestureDecoder, pose_diffusion: GestureDiffusion, normalizer: PoseNormalizer,
                 video_net: VideoNet, scheduler: DDIMScheduler, pose_features: Stage1Features,
                 video_features: Wav2VecFeatures | None, conditions: ConditionProcessor, frame_size: tuple[int, int],
                 audio_context: int = 2, pose_sampling: PoseSampling, video_sampling: VideoSampling,
                 device: str | torch.device = "cpu", progress: bool = True) -> None:
        self.device = torch.device(device)
        self.pose_net = pose_net.eval().to(self.device)
        self.pose_diffusion = pose_diffusion.to(self.device)
        self.normalizer = normalizer
        self.video_net = video_net.eval().to(self.device)
        self.scheduler = scheduler
        self.pose_features, self.video_features = pose_features, video_features
        self.conditions_processor = conditions
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.audio_context = int(audio_context)
        pose_sampling.check_complete("the pipeline's stage-1 sampling settings")
        video_sampling.check_complete("the pipeline's stage-2 sampling settings")
        self.pose_sampling, self.video_sampling = pose_sampling, video_sampling
        self.progress = bool(progress)
        audio_dim = int(pose_net.cfg.audio_dim)
        if pose_features.dim != audio_dim:
            raise GenerationError(f"stage-1 audio features have {pose_features.dim} values per frame but the SMGA "
                                  f"network expects {audio_dim}: set `smga.features` to the training DataModule's "
                                  "data.stage1_features")
        net = video_net
        if (net.audio_proj is not None) != (video_features is not None):
            raise GenerationError("stage-2 audio features are needed exactly when the video model has audio "
                                  "attention")
        if net.masked and conditions.num_branches != net.n_branches:
            raise GenerationError(f"the recorded mask config has {conditions.num_branches} branches, "
                                  f"the video model {net.n_branches}")
        self.latent_factor = int(net.codec.factor)
        h, w = self.frame_size
        if h % self.latent_factor or w % self.latent_factor or h % 2 or w % 2:
            raise GenerationError(f"frame size {h}x{w} must be even and divisible by the codec factor "
                                  f"{self.latent_factor}")

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_modules(cls, smga: nn.Module, video: nn.Module, stage1_features: Mapping[str, Any] | None = None,
                     stage2_features: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                     progress: bool = True) -> GesturePipeline:
        """The pipeline over the networks of an :class:`~mmgt.lit.smga.SMGAModule` and a
        :class:`~mmgt.lit.video.VideoModule`, taken from their inference views (EMA weights applied in place, the
        averages dropped), with the frame size, audio context, conditions and sampling settings they recorded."""
        from mmgt.data.audio_features import Stage1Features, Wav2VecFeatures

        smga, video = smga.inference_view(), video.inference_view()
        sinfo, vinfo = dict(smga.hparams.get("data_info") or {}), dict(video.hparams.get("data_info") or {})
        if not vinfo.get("frame_size"):
            raise GenerationError("the video checkpoint records no frame size (hparams.data_info.frame_size)")
        for name, info in (("SMGA", sinfo), ("video", vinfo)):
            fps = float(info.get("fps", FPS))
            if abs(fps - FPS) > 1e-6:
                raise GenerationError(f"the {name} model was trained at {fps:g} fps; generation runs at {FPS} fps "
                                      f"({HOP} samples per frame at {SAMPLE_RATE} Hz)")
        dev = torch.device(device)
        net = video.net
        pose_features = Stage1Features(**dict(stage1_features or {}), device=dev)
        audio_context = int(vinfo.get("audio_context", 2))
        video_features = None
        if net.audio_proj is not None:
            video_features = Wav2VecFeatures(**dict(stage2_features or {}), device=dev)
            want = tuple(int(v) for v in (vinfo.get("audio_embed_shape") or ()))
            got = (2 * audio_context + 1, *video_features.feature_shape)
            if want and want != got:
                raise GenerationError(f"stage-2 audio embedding {got} does not match the video model's {want}: set "
                                      "`video.features` to the training DataModule's data.stage2_features")
        return cls(pose_net=smga.net, pose_diffusion=smga.diffusion, normalizer=smga.normalizer, video_net=net,
                   scheduler=video.scheduler, pose_features=pose_features, video_features=video_features,
                   conditions=ConditionProcessor.from_info({**vinfo, "latent_downsample": net.codec.factor}),
                   frame_size=tuple(vinfo["frame_size"]), audio_context=audio_context,
                   pose_sampling=PoseSampling.from_dict(smga.sampling_settings()),
                   video_sampling=VideoSampling.from_dict(video.sampling_settings()), device=dev, progress=progress)

    @classmethod
    def from_checkpoints(cls, smga_ckpt: str | Path, video_ckpt: str | Path, *,
                         smga_net: Mapping[str, Any] | None = None, video_net: Mapping[str, Any] | None = None,
                         stage1_features: Mapping[str, Any] | None = None,
                         stage2_features: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                         progress: bool = True) -> GesturePipeline:
        """Load both stages (Lightning ``.ckpt``, run folders or safetensors exports) and build the pipeline; feature
        extractor settings default to those recorded with the checkpoints (the training DataModule's)."""
        s = load_stage(smga_ckpt, "smga", smga_net, "smga", device)
        v = load_stage(video_ckpt, "video", video_net, "video", device)
        if getattr(v.module, "substage", "b") == "a":
            log.warning("%s is a sub-stage-A (image model) checkpoint: its motion modules and audio attention are "
                        "untrained, so frames follow the poses but not the audio; use the sub-stage-B checkpoint",
                        v.path)
        return cls.from_modules(s.module, v.module, stage1_features if stage1_features is not None else s.features,
                                stage2_features if stage2_features is not None else v.features, device, progress)

    # ----------------------------------------------------------------------------------------------- the recipe
    @torch.no_grad()
    def __call__(self, image: np.ndarray, audio: np.ndarray, pose: np.ndarray, *,
                 pose_sampling: PoseSampling | None = None, video_sampling: VideoSampling | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None) -> GestureOutput:
        """Frames for a source image (H0, W0, 3) uint8, 16 kHz mono speech (N,) and the image's pose (134, 3) in the
        image's pixels. Unstated sampling settings are the pipeline's (the checkpoints'); ``latents``: the initial
        noise (1, C, T, H/f, W/f) instead of drawing it from ``generator``."""
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        # 1. check inputs: the frame and its pose through one crop + resize; the frame count of the audio
        frame, tf = io.fit_image(io.read_image(image), self.frame_size)
        pose = io.load_keypoints(pose)
        io.check_person(pose, "the initial pose")
        init = tf.keypoints(pose)
        speech = io.load_speech(audio, min_peak=0.0)
        n = io.n_frames_for(len(speech))
        pose_opts = (pose_sampling or PoseSampling()).over(self.pose_sampling)
        video_opts = (video_sampling or VideoSampling()).over(self.video_sampling)
        self.check_branch_weights(video_opts.branch_weights)
        seconds["inputs"] = time.perf_counter() - t

        t = time.perf_counter()
        # 2. encode audio (stage 1) and 3. poses
        feats = self.pose_features(speech, n).to(self.device)[None]
        kp = self.poses(feats, init, pose_opts, generator)
        seconds["poses"] = time.perf_counter() - t

        t = time.perf_counter()
        # 4. conditions: pose images, region masks, stage-2 audio windows
        pose_images, masks = self.conditions(kp)
        emb = self.audio_embedding(speech, n)
        seconds["conditions"] = time.perf_counter() - t

        t = time.perf_counter()
        # 5. prepare latents, 6. denoise (context windows), 7. decode
        if latents is None:
            latents = self.prepare_latents(n, generator)
        video = self.denoise(frame, pose_images, masks, emb, latents, video_opts, generator)
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        seconds["video"] = time.perf_counter() - t
        return GestureOutput(frames.cpu().numpy(), kp, pose_images, masks, seconds)

    # ----------------------------------------------------------------------------------------------- the steps
    def check_branch_weights(self, weights: Sequence[float] | None) -> None:
        """One weight per MM-HAA branch of the video model, in the mask config's branch order."""
        n = self.video_net.n_branches
        if weights is not None and n and len(weights) != n:
            raise GenerationError(f"branch_weights has {len(weights)} values, the video model has {n} MM-HAA "
                                  f"branches ({', '.join(self.conditions_processor.mask_builder.branch_names)})")

    def poses(self, features: torch.Tensor, init_pose: np.ndarray, sampling: PoseSampling,
              generator: torch.Generator | None = None) -> np.ndarray:
        """Stage 1: (T, 134, 3) pixel keypoints of the video frames for stage-1 audio features (1, T, F), starting
        from ``init_pose`` (134, 3) pixels of the video frame; ``sampling`` complete (merged over the defaults)."""
        norm, cfg = self.normalizer, self.pose_net.cfg
        norm_hw = (norm.height, norm.width)
        cond = norm.normalize(torch.from_numpy(scale_keypoints(init_pose, self.frame_size, norm_hw)))
        n = features.shape[1]
        total = len(self.pose_diffusion.window_starts(n, int(cfg.max_len), sampling.overlap)) * sampling.steps
        with torch.no_grad(), _progress(self.pose_net, "stage 1: poses", total, self.progress):
            out = self.pose_diffusion.sample(
                self.pose_net, features, cond.to(self.device)[None], window=cfg.max_len,
                num_keypoints=cfg.num_keypoints, channels=cfg.channels, overlap=sampling.overlap,
                steps=sampling.steps, eta=sampling.eta, guidance=sampling.guidance, generator=generator)
        px = norm.denormalize(out[0].float().cpu()).numpy()
        if not np.isfinite(px).all():  # never render a video from NaN keypoints (a diverged or broken SMGA model)
            raise GenerationError(f"stage 1 produced non-finite keypoints ({int((~np.isfinite(px)).sum())} values): "
                                  "the SMGA checkpoint or the audio features are broken")
        return scale_keypoints(px, norm_hw, self.frame_size)

    def conditions(self, keypoints: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose images (T, 3, H, W) in [0, 1] and region masks (K, T, h, w) at the mask config's size,
        built by the same :class:`~mmgt.pose.conditioning.ConditionProcessor` as the training dataset."""
        proc = self.conditions_processor
        return proc.pose_images(keypoints, self.frame_size), proc.masks(keypoints, self.frame_size)

    def audio_embedding(self, audio: np.ndarray, n_frames: int) -> torch.Tensor | None:
        """(T, 2r+1, L, D) wav2vec windows of the whole audio (None when the video model has no audio attention)."""
        from mmgt.data.audio_features import window_features

        if self.video_features is None:
            return None
        return window_features(self.video_features(audio, n_frames), self.audio_context)

    def prepare_latents(self, n_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial noise (1, C, T, H/f, W/f) in float32 (the pipeline runs in float32), drawn as the sampler
        would draw it."""
        h, w = self.frame_size
        f, c = self.latent_factor, int(self.video_net.codec.latent_channels)
        return torch.randn((1, c, n_frames, h // f, w // f), generator=generator, device=self.device,
                           dtype=torch.float32)

    @torch.no_grad()
    def denoise(self, ref: np.ndarray, pose_images: torch.Tensor, masks: torch.Tensor,
                audio_emb: torch.Tensor | None, latents: torch.Tensor, sampling: VideoSampling,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 2: (1, T, 3, H, W) frames in [-1, 1] from the reference frame (H, W, 3) uint8, pose images,
        region masks (K, T, h, w) (the network resizes them), audio windows and the initial latents, with context
        windows over the full length (:class:`~mmgt.models.video.VideoSampler` denoises and decodes)."""
        from mmgt.models.video import VideoSampler, context_windows

        net, dev = self.video_net, self.device
        sampler = VideoSampler(net, self.scheduler, **sampling.sampler_kwargs())
        ref_t = normalise_frames(ref[None], tuple(ref.shape[:2])).to(dev)
        pose = pose_images[None].to(dev)
        aud = audio_emb[None].to(dev) if audio_emb is not None else None
        msk = masks[None].to(dev) if net.masked and aud is not None else None
        n = pose.shape[1]
        total = sampler.steps * len(context_windows(n, sampler.context_frames, sampler.context_overlap))
        bw = list(sampling.branch_weights) if sampling.branch_weights is not None else None
        with _progress(net, "stage 2: video", total, self.progress):
            return sampler(ref_t, pose, aud, msk, bw, generator=generator, latents=latents)

    # ----------------------------------------------------------------------------------------------- files
    def generate(self, image: io.Image, audio: io.Speech, out: str | Path, *, keypoints: io.Keypoints | None = None,
                 estimator: Any = None, sampling: Sampling | None = None, pose_video: bool | str | Path = False,
                 side_by_side: bool | str | Path = False, save_keypoints: bool = False, seed: int = 0,
                 min_peak: float = 1e-4, encoding: Mapping[str, Any] | None = None, **flat: Any) -> GenerationResult:
        """Generate ``out`` (mp4 with the input audio) from a still image and speech (files or arrays).

        ``keypoints`` (pixels of ``image``) or ``estimator`` give the initial pose; ``sampling``: both stages'
        options (None fields: the checkpoints'); ``flat``: the earlier flat names (``pose_steps=``, ``steps=``,
        ``branch_weights=``, ...; :data:`~mmgt.generation.options.FLAT_NAMES`) applied over ``sampling``.
        ``pose_video`` / ``side_by_side``: True writes ``<out stem>_pose.mp4`` / ``<out stem>_panel.mp4`` (or give a
        path). ``encoding``: ``crf`` / ``pix_fmt`` of the written videos (:func:`mmgt.data.video_io.write_video`).
        Every input is checked before any computation, and all files are written together at the end.
        """
        opts = (sampling or Sampling()).with_flat(flat)
        enc = encoding_options(encoding)
        paths = OutputPaths.for_video(out, pose_video, side_by_side, save_keypoints)
        t = time.perf_counter()
        src = io.read_inputs(image, audio, keypoints, estimator, min_peak)
        read = time.perf_counter() - t
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        res = self(src.image, src.speech, src.pose, pose_sampling=opts.pose, video_sampling=opts.video, generator=gen)
        seconds = {**res.seconds, "inputs": read + res.seconds["inputs"]}

        t = time.perf_counter()
        files, videos = {"video": paths.video}, {"video": res.frames}
        pose_u8 = (res.pose_images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        if paths.pose_video:
            files["pose"], videos["pose"] = paths.pose_video, pose_u8
        if paths.side_by_side:
            from mmgt.callbacks.media import side_by_side as stack

            files["panel"] = paths.side_by_side
            videos["panel"] = stack(pose_u8, mask_panel(res.masks, self.frame_size), res.frames)
        write_outputs(files, videos, src.speech, res.keypoints if paths.keypoints else None, paths.keypoints, **enc)
        seconds["write"] = time.perf_counter() - t
        return GenerationResult(paths.video, len(res.frames), len(src.speech) / SAMPLE_RATE, res.keypoints,
                                res.frames, paths.pose_video, paths.side_by_side, paths.keypoints, seconds)

    def generate_clip(self, root: str | Path, clip_id: str, out: str | Path, *, image: io.Image | None = None,
                      audio: io.Speech | None = None, keypoints: io.Keypoints | None = None, estimator: Any = None,
                      reference_dir: str | Path | None = None, **kwargs: Any) -> GenerationResult:
        """Generate for a corpus clip (e.g. a held-out one): its frame 0 is the image and its frame-0 keypoints the
        initial pose (unless ``image`` is given, which then needs ``keypoints`` or ``estimator``); its audio is the
        speech unless ``audio`` is given. ``reference_dir``: also place the ground truth there (``<clip_id>.mp4`` +
        ``.npy`` keypoints + ``.wav``), the layout ``python -m mmgt.evaluate`` pairs with the generated folder."""
        clip = io.clip_inputs(root, clip_id, frame0=image is None)
        if image is None:
            image, keypoints = clip.image, clip.keypoints[0]
        result = self.generate(image, clip.audio if audio is None else audio, out, keypoints=keypoints,
                               estimator=estimator, **kwargs)
        if reference_dir is not None:
            place_reference(reference_dir, clip_id, clip.video, clip.audio, clip.keypoints)
        return result


__all__ = ["GestureOutput", "GesturePipeline", "LoadedStage", "load_stage"]
