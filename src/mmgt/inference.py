"""Image + speech -> talking, gesturing video: the generation pipeline behind ``python -m mmgt.generate``.

:class:`GesturePipeline` chains the two trained stages exactly as they were trained, reusing the training code
for every shared idea so generation cannot drift from training:

1. **inputs** — the still image (any format Pillow reads, or the first frame of a video) is centre-cropped to the
   video model's aspect ratio and resized to its frame size (bilinear, antialiased, as the DataModule resizes
   frames); the speech (any format/rate, :func:`mmgt.data.video_io.read_audio`) becomes 16 kHz mono.
   ``n_frames = ceil(samples / 640)`` (25 fps), so the video covers the whole audio (1.0 s -> 25, 7.3 s -> 183).
   Empty or silent audio is refused: a silent clip gives the audio-driven models nothing to follow.
2. **initial pose** — pixel keypoints of the image from a ``.npy`` file, from a pose estimator
   (:func:`mmgt.pose.estimators.build_estimator`), or, for a corpus clip, its frame-0 keypoints; mapped through
   the same crop/resize as the image.
3. **stage 1** — :class:`~mmgt.data.audio_features.Stage1Features` of the whole audio, then
   :meth:`mmgt.lit.smga.SMGAModule.sample_poses` (chained windows over the full length, the first one conditioned on
   the image's pose, the last one ending at the last frame; EMA weights, DDIM + CFG).
4. **conditions** — pose images (:func:`mmgt.pose.render.render_pose`) and region masks from the *same*
   :class:`~mmgt.pose.masks.RegionMaskBuilder` config the video model was trained with (recorded in its checkpoint).
5. **stage 2** — wav2vec windows (:class:`~mmgt.data.audio_features.Wav2VecFeatures`,
   :func:`~mmgt.data.audio_features.window_features`), then :class:`mmgt.models.video.VideoSampler` with
   overlapping context windows over the full length; MM-HAA branch weights and CFG scales are arguments.
6. **output** — H.264 mp4 muxed with the input audio (duration = audio within one frame), optionally the pose
   video and a side-by-side panel (pose | masks | result). All files of one call are written atomically together:
   any failure leaves no output file at all.

Checkpoints are self-describing: a Lightning ``.ckpt`` of either stage (read once with ``weights_only=True``; its
hyper-parameters rebuild the network) or a safetensors export (:func:`export_safetensors`, architecture in its
metadata). ``net`` overrides let a caller state the architecture it expects; weights that do not fit are refused
with the mismatching tensors named.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmgt import checkpoints
from mmgt.data.corpus import FPS, HOP, SAMPLE_RATE
from mmgt.errors import GenerationError
from mmgt.pose.conditioning import ConditionProcessor, normalise_frames

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


# --------------------------------------------------------------------------------------------------- inputs


def n_frames_for(n_samples: int, hop: int = HOP) -> int:
    """Video frames covering ``n_samples`` of 16 kHz audio at 25 fps: ``ceil(n / 640)``."""
    return max(1, math.ceil(int(n_samples) / hop))


def load_speech(audio: str | Path | np.ndarray, min_peak: float = 1e-4) -> np.ndarray:
    """16 kHz mono float32 speech from a file (any format/rate) or an array (assumed 16 kHz).

    Raises :class:`GenerationError` for a missing/undecodable file, no samples, or silence (peak < ``min_peak``).
    """
    from mmgt.data.video_io import read_audio

    name = "audio array" if isinstance(audio, np.ndarray) else str(audio)
    if isinstance(audio, np.ndarray):
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise GenerationError(f"{name}: expected mono samples (N,), got shape {x.shape}")
    else:
        path = Path(audio).expanduser()
        if not path.is_file():
            raise GenerationError(f"audio file not found: {path} (config key `audio`)")
        try:
            x = read_audio(path, SAMPLE_RATE)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad input
            raise GenerationError(f"{path}: cannot read audio ({err})") from err
    if x.size == 0:
        raise GenerationError(f"{name}: the audio is empty (0 samples); give a speech recording")
    if not np.isfinite(x).all():
        raise GenerationError(f"{name}: the audio contains NaN/inf samples")
    peak = float(np.abs(x).max())
    if peak < min_peak:
        raise GenerationError(f"{name}: the audio is silent (peak {peak:.2e} < min_peak {min_peak:g}); the models "
                              "follow speech, give a recording with speech in it")
    return x


@dataclass(frozen=True)
class FrameTransform:
    """Source-image pixels -> model-frame pixels: crop ``[x0, x0+w) x [y0, y0+h)``, resize to ``size`` (H, W).

    Keypoints are scaled like the DataModule scales them (``x * W / w``), so generated and training poses agree.
    """

    x0: float
    y0: float
    width: float
    height: float
    size: tuple[int, int]

    def apply(self, kp: np.ndarray) -> np.ndarray:
        out = np.array(kp, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] - self.x0) * (self.size[1] / self.width)
        out[..., 1] = (out[..., 1] - self.y0) * (self.size[0] / self.height)
        return out


def centre_crop_transform(src_hw: tuple[int, int], size: tuple[int, int]) -> FrameTransform:
    """The largest centred crop of ``src_hw`` with the aspect ratio of ``size``, resized to ``size``."""
    h0, w0 = src_hw
    h, w = size
    if w0 * h > h0 * w:  # too wide: crop the width
        cw, ch = h0 * w / h, float(h0)
    else:
        cw, ch = float(w0), w0 * h / w
    return FrameTransform((w0 - cw) / 2.0, (h0 - ch) / 2.0, cw, ch, (int(h), int(w)))


def read_image(image: str | Path | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file, a video file (first frame) or an array."""
    if isinstance(image, np.ndarray):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise GenerationError(f"image array must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        return arr
    path = Path(image).expanduser()
    if not path.is_file():
        raise GenerationError(f"image file not found: {path} (config key `image`)")
    try:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            from mmgt.data.video_io import read_video

            return read_video(path, 0, 1)[0]
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except GenerationError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad input
        raise GenerationError(f"{path}: cannot read the image ({err})") from err


def fit_image(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, FrameTransform]:
    """Centre-crop + antialiased bilinear resize to ``size`` (the DataModule's frame resize); returns the transform."""
    tf = centre_crop_transform(image.shape[:2], size)
    x0, y0 = int(round(tf.x0)), int(round(tf.y0))
    crop = image[y0:y0 + int(round(tf.height)), x0:x0 + int(round(tf.width))]
    t = torch.from_numpy(np.array(crop, copy=True)).permute(2, 0, 1)[None].float()
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    out = t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return out, tf


def load_keypoints(keypoints: str | Path | np.ndarray) -> np.ndarray:
    """(134, 3) pixel keypoints from a ``.npy`` file or array of shape (134, 3) or (T, 134, 3) (frame 0 is used)."""
    if isinstance(keypoints, np.ndarray):
        kp, name = keypoints, "keypoints array"
    else:
        path = Path(keypoints).expanduser()
        name = str(path)
        if not path.is_file():
            raise GenerationError(f"keypoints file not found: {path} (config key `keypoints`)")
        try:
            kp = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise GenerationError(f"{path}: cannot load keypoints ({err})") from err
    kp = np.asarray(kp, dtype=np.float32)
    if kp.ndim == 3:
        kp = kp[0] if len(kp) else kp.reshape(0, 134, 3)
    if kp.shape != (134, 3):
        raise GenerationError(f"{name}: keypoints must be (134, 3) or (T, 134, 3) pixel x, y, score; got {kp.shape}")
    return kp


def check_person(kp: np.ndarray, what: str, threshold: float = 0.3, min_points: int = 3) -> None:
    """Refuse an initial pose with (almost) no visible keypoints: there is no person to animate."""
    ok = np.isfinite(kp[:, :2]).all(-1) & (kp[:, 2] >= threshold)
    if int(ok.sum()) < min_points:
        raise GenerationError(f"no person found: {what} has {int(ok.sum())} keypoints with score >= {threshold} "
                              "(need a visible upper body)")


# --------------------------------------------------------------------------------------------------- checkpoints


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


export_safetensors = checkpoints.export_safetensors


# --------------------------------------------------------------------------------------------------- pipeline


@dataclass
class GenerationResult:
    """What one :meth:`GesturePipeline.generate` call produced."""

    video: Path
    n_frames: int
    audio_seconds: float
    keypoints: np.ndarray  # (T, 134, 3) generated pixel keypoints of the output frames
    frames: np.ndarray  # (T, H, W, 3) uint8 generated frames (exact; the mp4 holds their H.264 encoding)
    pose_video: Path | None = None
    side_by_side: Path | None = None
    keypoints_file: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    @property
    def frames_per_second(self) -> float:
        """Generated frames per second of wall time (all stages, writing excluded)."""
        busy = sum(v for k, v in self.seconds.items() if k != "write")
        return self.n_frames / busy if busy > 0 else float("nan")


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


def _mask_panel(masks: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(K, T, h, w) masks -> (T, H, W, 3) uint8 for the side-by-side video (as the training logs show them)."""
    from mmgt.lit.video import mask_video

    rgb = mask_video(masks.float().cpu(), size)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class GesturePipeline:
    """Still image + speech -> video, with a trained stage-1 (SMGA) and stage-2 (video) module.

    Build with :meth:`from_checkpoints` (or from modules); call :meth:`generate` (or the object itself). Feature
    extractor settings default to those recorded with the checkpoints (the training DataModule's).
    """

    def __init__(self, smga: nn.Module, video: nn.Module, stage1_features: Mapping[str, Any] | None = None,
                 stage2_features: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                 progress: bool = True) -> None:
        from mmgt.data.audio_features import Stage1Features, Wav2VecFeatures
        self.device = torch.device(device)
        self.smga, self.video = smga.eval().to(self.device), video.eval().to(self.device)
        self.progress = bool(progress)
        vinfo = dict(video.hparams.get("data_info") or {})
        if not vinfo.get("frame_size"):
            raise GenerationError("the video checkpoint records no frame size (hparams.data_info.frame_size)")
        self.frame_size = (int(vinfo["frame_size"][0]), int(vinfo["frame_size"][1]))
        for name, info in (("SMGA", smga.hparams.get("data_info") or {}), ("video", vinfo)):
            fps = float(info.get("fps", FPS))
            if abs(fps - FPS) > 1e-6:
                raise GenerationError(f"the {name} model was trained at {fps:g} fps; generation runs at {FPS} fps "
                                      f"({HOP} samples per frame at {SAMPLE_RATE} Hz)")
        self.stage1 = Stage1Features(**dict(stage1_features or {}), device=self.device)
        audio_dim = int(smga.net.cfg.audio_dim)
        if self.stage1.dim != audio_dim:
            raise GenerationError(f"stage-1 audio features have {self.stage1.dim} values per frame but the SMGA "
                                  f"network expects {audio_dim}: set `smga.features` to the training DataModule's "
                                  "data.stage1_features")
        self.audio_context = int(vinfo.get("audio_context", 2))
        net = video.net
        self.stage2 = None
        if net.audio_proj is not None:
            self.stage2 = Wav2VecFeatures(**dict(stage2_features or {}), device=self.device)
            want = tuple(int(v) for v in (vinfo.get("audio_embed_shape") or ()))
            got = (2 * self.audio_context + 1, *self.stage2.feature_shape)
            if want and want != got:
                raise GenerationError(f"stage-2 audio embedding {got} does not match the video model's {want}: set "
                                      "`video.features` to the training DataModule's data.stage2_features")
        self.conditions_processor = ConditionProcessor.from_info({**vinfo, "latent_downsample": net.codec.factor})
        if net.masked and self.conditions_processor.num_branches != net.n_branches:
            raise GenerationError(f"the recorded mask config has {self.conditions_processor.num_branches} branches, "
                                  f"the video model {net.n_branches}")
        self.latent_factor = int(net.codec.factor)
        h, w = self.frame_size
        if h % self.latent_factor or w % self.latent_factor or h % 2 or w % 2:
            raise GenerationError(f"frame size {h}x{w} must be even and divisible by the codec factor "
                                  f"{self.latent_factor}")

    @classmethod
    def from_checkpoints(cls, smga_ckpt: str | Path, video_ckpt: str | Path, *,
                         smga_net: Mapping[str, Any] | None = None, video_net: Mapping[str, Any] | None = None,
                         stage1_features: Mapping[str, Any] | None = None,
                         stage2_features: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                         progress: bool = True) -> GesturePipeline:
        """Load both stages (Lightning ``.ckpt``, run folders or safetensors exports) and build the pipeline."""
        s = load_stage(smga_ckpt, "smga", smga_net, "smga", device)
        v = load_stage(video_ckpt, "video", video_net, "video", device)
        if getattr(v.module, "substage", "b") == "a":
            log.warning("%s is a sub-stage-A (image model) checkpoint: its motion modules and audio attention are "
                        "untrained, so frames follow the poses but not the audio; use the sub-stage-B checkpoint",
                        v.path)
        return cls(s.module, v.module, stage1_features if stage1_features is not None else s.features,
                   stage2_features if stage2_features is not None else v.features, device, progress)

    # ----------------------------------------------------------------------------------------------- stages
    def _to_smga(self, kp: np.ndarray | torch.Tensor, inverse: bool = False) -> Any:
        """Scale pixel keypoints between the video frame and the SMGA normaliser's frame."""
        norm = self.smga.normalizer
        h, w = self.frame_size
        sx, sy = norm.width / w, norm.height / h
        if inverse:
            sx, sy = 1 / sx, 1 / sy
        out = kp.copy() if isinstance(kp, np.ndarray) else kp.clone()
        out[..., 0] = out[..., 0] * sx
        out[..., 1] = out[..., 1] * sy
        return out

    @torch.no_grad()
    def poses(self, audio: np.ndarray, init_pose: np.ndarray, n_frames: int | None = None, *,
              steps: int | None = None, guidance: float | None = None, eta: float | None = None,
              overlap: int | None = None, generator: torch.Generator | None = None) -> np.ndarray:
        """Stage 1: (T, 134, 3) pixel keypoints of the video frames for the whole ``audio``, starting from
        ``init_pose`` (134, 3) pixels of the video frame."""
        from mmgt.models.gesture_diffusion import GestureDiffusion

        n = n_frames or n_frames_for(len(audio))
        feats = self.stage1(audio, n).to(self.device)[None]
        cond = self.smga.normalizer.normalize(torch.from_numpy(self._to_smga(init_pose))).to(self.device)[None]
        s = self.smga.hparams.sampling
        steps = int(s["steps"] if steps is None else steps)
        window = int(self.smga.net.cfg.max_len)
        ov = int(s.get("overlap", 0) if overlap is None else overlap)
        total = len(GestureDiffusion.window_starts(n, window, ov)) * steps
        with _progress(self.smga.sampling_net, "stage 1: poses", total, self.progress):
            out = self.smga.sample_poses(feats, cond, steps=steps, eta=eta, guidance=guidance, overlap=ov,
                                         generator=generator)
        px = self.smga.normalizer.denormalize(out[0].float().cpu())
        return self._to_smga(px, inverse=True).numpy().astype(np.float32)

    def conditions(self, keypoints: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        """Pose images (T, 3, H, W) in [0, 1] and region masks (``{"masks", "pyramid"}``) of the video frames,
        built by the same :class:`~mmgt.pose.conditioning.ConditionProcessor` as the training dataset."""
        proc = self.conditions_processor
        return proc.pose_images(keypoints, self.frame_size), proc.masks(keypoints, self.frame_size)

    def audio_embedding(self, audio: np.ndarray, n_frames: int) -> torch.Tensor | None:
        """(T, 2r+1, L, D) wav2vec windows of the whole audio (None when the video model has no audio attention)."""
        from mmgt.data.audio_features import window_features

        if self.stage2 is None:
            return None
        return window_features(self.stage2(audio, n_frames), self.audio_context)

    @torch.no_grad()
    def frames(self, ref: np.ndarray, pose_images: torch.Tensor, masks: Sequence[torch.Tensor],
               audio_emb: torch.Tensor | None, *, steps: int | None = None, guidance: float | None = None,
               eta: float | None = None, context_frames: int | None = None, context_overlap: int | None = None,
               branch_weights: Sequence[float] | None = None, generator: torch.Generator | None = None) -> np.ndarray:
        """Stage 2: (T, H, W, 3) uint8 frames from the reference image (H, W, 3) uint8, pose images, mask pyramid
        levels (K, T, h, w) and audio windows, with context windows over the full length."""
        from mmgt.models.video import context_windows

        video, dev = self.video, self.device
        over = {k: v for k, v in dict(steps=steps, guidance=guidance, eta=eta, context_frames=context_frames,
                                      context_overlap=context_overlap).items() if v is not None}
        sampler = video.sampler(**over)
        net = video.net
        bw = list(branch_weights) if branch_weights is not None else video.sample_branch_weights()
        if bw is not None and net.n_branches and len(bw) != net.n_branches:
            raise GenerationError(f"branch_weights has {len(bw)} values, the video model has {net.n_branches} MM-HAA "
                                  f"branches ({', '.join(self.conditions_processor.mask_builder.branch_names)})")
        ref_t = normalise_frames(ref[None], tuple(ref.shape[:2])).to(dev)
        pose = pose_images[None].to(dev)
        aud = audio_emb[None].to(dev) if audio_emb is not None else None
        msk = [m[None].to(dev) for m in masks] if net.masked and aud is not None else None
        n = pose.shape[1]
        total = sampler.steps * len(context_windows(n, sampler.context_frames, sampler.context_overlap))
        with _progress(net, "stage 2: video", total, self.progress):
            out = sampler(ref_t, pose, aud, msk, bw, generator=generator)
        return ((out[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ----------------------------------------------------------------------------------------------- the job
    def initial_pose(self, image: np.ndarray, tf: FrameTransform, keypoints: str | Path | np.ndarray | None,
                     estimator: Any = None, what: str = "image") -> np.ndarray:
        """Pixel keypoints (134, 3) of the video frame: from ``keypoints`` (pixels of the source image) or by
        running ``estimator`` (a :class:`~mmgt.pose.estimators.PoseEstimator` or its config) on the image."""
        if keypoints is not None:
            kp = load_keypoints(keypoints)
            src = "keypoints file" if not isinstance(keypoints, np.ndarray) else "given keypoints"
        elif estimator is not None:
            from mmgt.pose.estimators import build_estimator

            est = build_estimator(dict(estimator)) if isinstance(estimator, Mapping) else estimator
            name = type(est).__name__
            try:
                kp = np.asarray(est(image[None]), dtype=np.float32)[0]
            except Exception as err:  # noqa: BLE001 - estimator failures are bad inputs for this image
                raise GenerationError(f"pose estimator {name} failed on {what}: {err}") from err
            src = f"{name} on {what}"
        else:
            raise GenerationError("no initial pose: give `keypoints=<file.npy>` (pixel keypoints of the image), "
                                  "`clip_id=<id>` with `data.root=<corpus>`, or an `estimator` config")
        check_person(kp, src)
        return tf.apply(kp)

    def generate(self, image: str | Path | np.ndarray, audio: str | Path | np.ndarray, out: str | Path, *,
                 keypoints: str | Path | np.ndarray | None = None, estimator: Any = None,
                 pose_video: bool | str | Path = False, side_by_side: bool | str | Path = False,
                 save_keypoints: bool = False, seed: int = 0, min_peak: float = 1e-4,
                 pose_steps: int | None = None, pose_guidance: float | None = None, pose_eta: float | None = None,
                 pose_overlap: int | None = None, steps: int | None = None, guidance: float | None = None,
                 eta: float | None = None, context_frames: int | None = None, context_overlap: int | None = None,
                 branch_weights: Sequence[float] | None = None) -> GenerationResult:
        """Generate ``out`` (mp4 with the input audio) from a still image and speech; see the module docstring.

        ``pose_video`` / ``side_by_side``: True writes ``<out stem>_pose.mp4`` / ``<out stem>_panel.mp4`` (or give
        a path). ``pose_*`` are stage-1 sampling settings, the others stage 2; None = the checkpoint's.
        Every input is checked before any computation, and all files are written together at the end.
        """
        out = Path(out)
        if out.suffix.lower() != ".mp4":
            raise GenerationError(f"out={out}: the output must be an .mp4 file")
        extra: dict[str, Path] = {}
        for name, flag, suffix in (("pose", pose_video, "_pose.mp4"), ("panel", side_by_side, "_panel.mp4")):
            if flag:
                extra[name] = Path(flag) if isinstance(flag, str | Path) else out.with_name(out.stem + suffix)
        kp_file = out.with_name(out.stem + "_keypoints.npy") if save_keypoints else None
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        speech = load_speech(audio, min_peak)
        src = read_image(image)
        img, tf = fit_image(src, self.frame_size)
        init = self.initial_pose(src, tf, keypoints, estimator,
                                 what=str(image) if not isinstance(image, np.ndarray) else "the image")
        n = n_frames_for(len(speech))
        seconds["inputs"] = time.perf_counter() - t0

        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        t = time.perf_counter()
        kp = self.poses(speech, init, n, steps=pose_steps, guidance=pose_guidance, eta=pose_eta,
                        overlap=pose_overlap, generator=gen)
        seconds["poses"] = time.perf_counter() - t
        t = time.perf_counter()
        pose_images, masks = self.conditions(kp)
        emb = self.audio_embedding(speech, n)
        seconds["conditions"] = time.perf_counter() - t
        t = time.perf_counter()
        frames = self.frames(img, pose_images, masks["pyramid"], emb, steps=steps, guidance=guidance, eta=eta,
                             context_frames=context_frames, context_overlap=context_overlap,
                             branch_weights=branch_weights, generator=gen)
        seconds["video"] = time.perf_counter() - t

        t = time.perf_counter()
        videos = {"video": frames}
        pose_u8 = (pose_images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        if "pose" in extra:
            videos["pose"] = pose_u8
        if "panel" in extra:
            from mmgt.callbacks.media import side_by_side as stack

            videos["panel"] = stack(pose_u8, _mask_panel(masks["masks"], self.frame_size), frames)
        paths = {"video": out, **extra}
        write_outputs(paths, videos, speech, kp if kp_file else None, kp_file)
        seconds["write"] = time.perf_counter() - t
        return GenerationResult(out, n, len(speech) / SAMPLE_RATE, kp, frames, extra.get("pose"), extra.get("panel"),
                                kp_file, seconds)

    __call__ = generate

    def generate_clip(self, root: str | Path, clip_id: str, out: str | Path, *,
                      image: str | Path | np.ndarray | None = None, audio: str | Path | np.ndarray | None = None,
                      keypoints: str | Path | np.ndarray | None = None, estimator: Any = None,
                      reference_dir: str | Path | None = None, **kwargs: Any) -> GenerationResult:
        """Generate for a corpus clip (e.g. a held-out one): its frame 0 is the image and its frame-0 keypoints the
        initial pose (unless ``image`` is given, which then needs ``keypoints`` or ``estimator``); its audio is the
        speech unless ``audio`` is given. ``reference_dir``: also place the ground truth there (``<clip_id>.mp4`` +
        ``.npy`` keypoints + ``.wav``), the layout ``python -m mmgt.evaluate`` pairs with the generated folder."""
        from mmgt.data.corpus import Corpus, CorpusError

        try:
            corpus = Corpus(root)
            rec = corpus[clip_id]
            kp = corpus.load_keypoints(rec)
            if image is None:
                image, keypoints = corpus.load_video(rec, 0, 1)[0], kp[0]
        except (CorpusError, ValueError, OSError) as err:
            raise GenerationError(f"clip_id={clip_id} (data.root={root}): {err}") from err
        result = self.generate(image, corpus.path(rec, "audio") if audio is None else audio, out,
                               keypoints=keypoints, estimator=estimator, **kwargs)
        if reference_dir is not None:  # each copy complete or absent (a full disk leaves no truncated file)
            from mmgt.data.video_io import atomic_path

            ref = Path(reference_dir)
            for kind, suffix in (("video", ".mp4"), ("audio", ".wav")):
                with atomic_path(ref / f"{clip_id}{suffix}") as tmp:
                    shutil.copyfile(corpus.path(rec, kind), tmp)
            with atomic_path(ref / f"{clip_id}.npy") as tmp, tmp.open("wb") as fh:
                np.save(fh, kp)
        return result


def write_outputs(paths: Mapping[str, Path], videos: Mapping[str, np.ndarray], audio: np.ndarray,
                  keypoints: np.ndarray | None = None, keypoints_file: Path | None = None) -> None:
    """Write every video (muxed with ``audio``) and the keypoints together: all files appear, or none."""
    from mmgt.data.video_io import atomic_path, write_video

    with contextlib.ExitStack() as stack:
        tmps = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
        for k, frames in videos.items():
            write_video(tmps[k], frames, fps=FPS, audio=audio, sample_rate=SAMPLE_RATE)
        if keypoints is not None and keypoints_file is not None:
            tmp = stack.enter_context(atomic_path(keypoints_file))
            with tmp.open("wb") as fh:
                np.save(fh, keypoints.astype(np.float32))


# --------------------------------------------------------------------------------------------------- config entry


def _plain(x: Any) -> Any:
    from mmgt.utils.config import to_plain

    return to_plain(x)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


def _append_report(path: Path, res: GenerationResult) -> None:
    """One JSON list per run folder: what was generated and how fast (read by the quickstart summary)."""
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append({"video": str(res.video), "n_frames": res.n_frames, "audio_seconds": res.audio_seconds,
                 "frames_per_second": res.frames_per_second, "seconds": res.seconds,
                 "pose_video": str(res.pose_video) if res.pose_video else None,
                 "side_by_side": str(res.side_by_side) if res.side_by_side else None})
    from mmgt.data.video_io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=2))


def run(cfg: Any, echo: Callable[[str], None] = print) -> list[GenerationResult]:
    """``python -m mmgt.generate``: one video (``image``/``audio``/``clip_id``) or every clip of ``split``."""
    c = _plain(cfg)
    s, v = c.get("smga") or {}, c.get("video") or {}
    if not s.get("ckpt") or not v.get("ckpt"):
        raise GenerationError("set smga.ckpt=<stage-1 checkpoint> and video.ckpt=<stage-2 checkpoint> (.ckpt, run "
                              "folder or .safetensors export)")
    out_dir = Path(c.get("output_dir") or ".")
    jobs: list[dict[str, Any]] = []
    root = (c.get("data") or {}).get("root")
    if c.get("split"):
        from mmgt.data.corpus import Corpus, CorpusError

        try:
            records = Corpus(root).split(c["split"])
        except CorpusError as err:
            raise GenerationError(f"split={c['split']}: {err}") from err
        if not records:
            raise GenerationError(f"split={c['split']}: no clips of that split in {root}")
        records = records[: c["limit"]] if c.get("limit") else records
        folder = Path(c.get("out") or out_dir / "videos")
        # pose/panel videos go to subfolders: the top level holds only the videos `mmgt.evaluate` pairs by name
        jobs = [{"clip_id": r.clip_id, "out": folder / f"{r.clip_id}.mp4",
                 "pose_video": folder / "pose" / f"{r.clip_id}_pose.mp4",
                 "side_by_side": folder / "panel" / f"{r.clip_id}_panel.mp4"} for r in records]
    else:
        if not c.get("clip_id") and not (c.get("image") and c.get("audio")):
            raise GenerationError("give image=<still image> and audio=<speech file> (plus keypoints= or an "
                                  "estimator), or clip_id=<corpus clip> with data.root, or split=<name>")
        stem = Path(c.get("audio") or c.get("clip_id")).stem
        jobs = [{"clip_id": c.get("clip_id"), "out": Path(c.get("out") or out_dir / f"{stem}.mp4")}]
    # cheap input checks before loading any network
    for path_key in ("image", "audio", "keypoints"):
        if c.get(path_key) and not Path(c[path_key]).expanduser().is_file():
            raise GenerationError(f"{path_key} file not found: {c[path_key]} (config key `{path_key}`)")
    pipe = GesturePipeline.from_checkpoints(
        s["ckpt"], v["ckpt"], smga_net=s.get("net"), video_net=v.get("net"), stage1_features=s.get("features"),
        stage2_features=v.get("features"), device=resolve_device(c.get("device")), progress=bool(c.get("progress")))
    kwargs = dict(pose_video=bool(c.get("pose_video")), side_by_side=bool(c.get("side_by_side")),
                  save_keypoints=bool(c.get("save_keypoints")), seed=int(c.get("seed") or 0),
                  min_peak=float(c.get("min_peak", 1e-4)), pose_steps=s.get("steps"), pose_guidance=s.get("guidance"),
                  pose_eta=s.get("eta"), pose_overlap=s.get("overlap"), steps=v.get("steps"),
                  guidance=v.get("guidance"), eta=v.get("eta"), context_frames=v.get("context_frames"),
                  context_overlap=v.get("context_overlap"), branch_weights=v.get("branch_weights"))
    results = []
    for job in jobs:
        for k in ("pose_video", "side_by_side"):
            kwargs[k] = job.get(k, True) if c.get(k) else False
        if job["clip_id"]:
            res = pipe.generate_clip(root, job["clip_id"], job["out"], image=c.get("image"), audio=c.get("audio"),
                                     keypoints=c.get("keypoints"), estimator=c.get("estimator"),
                                     reference_dir=c.get("reference_dir"), **kwargs)
        else:
            res = pipe.generate(c["image"], c["audio"], job["out"], keypoints=c.get("keypoints"),
                                estimator=c.get("estimator"), **kwargs)
        results.append(res)
        _append_report(out_dir / "generation.json", res)
        echo(f"{res.video}: {res.n_frames} frames ({res.audio_seconds:.2f} s of audio), "
             f"{res.frames_per_second:.1f} frames/s" + "".join(f", {p}" for p in (res.pose_video, res.side_by_side)
                                                               if p))
    return results


__all__ = ["FrameTransform", "GenerationError", "GenerationResult", "GesturePipeline", "LoadedStage",
           "centre_crop_transform", "export_safetensors", "fit_image", "load_keypoints", "load_speech", "load_stage",
           "n_frames_for", "read_image", "run", "write_outputs"]
