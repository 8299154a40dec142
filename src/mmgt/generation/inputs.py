"""Generation inputs: read and check the still image, the speech, the initial pose and corpus clips.

Every check runs before any network is called (``python -m mmgt.generate`` runs them before it loads the networks),
and a bad input is a :class:`~mmgt.errors.GenerationError` naming the file and the config key: empty or silent audio
(the audio-driven models have nothing to follow), an image or keypoints file that does not decode, an initial pose
with no visible person or with coordinates normalised to [0, 1] instead of pixels. Without keypoints the pose is
estimated from the image (``estimator``; ``name: auto`` runs DWPose when its two ONNX files exist, and the "no
initial pose" error says how to get them). Keypoints come in the mmgt 134-point layout or as COCO-WholeBody (133, 3)
arrays (converted: the neck is inserted). The image is fitted to the video model's frame by
:class:`~mmgt.pose.conditioning.CropResize` (largest centred crop of the model's aspect ratio, antialiased bilinear
resize, as the training frames are resized), each crop or upscale logged in one line; the initial pose goes through
the same map.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.data.corpus import HOP, SAMPLE_RATE
from mmgt.errors import GenerationError
from mmgt.pose.conditioning import CropResize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")

Image = str | Path | np.ndarray
Speech = str | Path | np.ndarray
Keypoints = str | Path | np.ndarray

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # keypoint warnings already given (the same pose is checked by the task and the pipeline)


def n_frames_for(n_samples: int, hop: int = HOP) -> int:
    """Video frames covering ``n_samples`` of 16 kHz audio at 25 fps: ``ceil(n / 640)`` (1.0 s -> 25, 7.3 s -> 183),
    so the video covers the whole audio."""
    return max(1, math.ceil(int(n_samples) / hop))


def load_speech(audio: Speech, min_peak: float = 1e-4) -> np.ndarray:
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


def read_image(image: Image) -> np.ndarray:
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
        from PIL import Image as PILImage
        from PIL import ImageOps

        with PILImage.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except GenerationError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad input
        raise GenerationError(f"{path}: cannot read the image ({err})") from err


def fit_image(image: np.ndarray, size: tuple[int, int], what: str = "the image") -> tuple[np.ndarray, CropResize]:
    """Centre-crop + antialiased bilinear resize to ``size``; returns the frame and the transform (for keypoints).
    A crop (the image's aspect ratio is not the model's) and an upscale are each logged in one line."""
    h0, w0 = image.shape[:2]
    tf = CropResize.centre((h0, w0), size)
    h, w = int(size[0]), int(size[1])
    if (tf.width, tf.height) != (w0, h0):
        side, kept, total = ("width", tf.width, w0) if tf.width < w0 else ("height", tf.height, h0)
        log.info("%s is %dx%d (WxH), the model's frame %dx%d: centre crop to %dx%d at x=%d, y=%d (%.0f%% of the %s "
                 "kept)", what, w0, h0, w, h, tf.width, tf.height, tf.x0, tf.y0, 100.0 * kept / total, side)
    factor = w / tf.width
    if factor > 1.0 + 1e-6:
        (log.warning if factor > 2.0 else log.info)(
            "%s: the %dx%d crop is upscaled x%.2f to the model's %dx%d frame%s", what, tf.width, tf.height, factor,
            w, h, " (a small image: expect a blurry video; give a larger one)" if factor > 2.0 else "")
    return tf.image(image), tf


def load_keypoints(keypoints: Keypoints) -> np.ndarray:
    """(134, 3) pixel keypoints from a ``.npy`` file or array of shape (134, 3) or (T, 134, 3) (frame 0 is used), or
    COCO-WholeBody (133, 3) / (T, 133, 3) as DWPose/MMPose write them (converted: neck inserted, OpenPose body
    order)."""
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
        kp = kp[0] if len(kp) else kp.reshape(0, kp.shape[1], kp.shape[2])
    if kp.shape == (133, 3):
        from mmgt.pose.estimators import coco_wholebody_to_134

        kp = coco_wholebody_to_134(kp)
    if kp.shape != (134, 3):
        raise GenerationError(f"{name}: keypoints must be (134, 3) or (T, 134, 3) pixel x, y, score (or COCO-WholeBody "
                              f"(133, 3) / (T, 133, 3)); got {kp.shape}")
    return kp


def check_keypoint_range(kp: np.ndarray, image_hw: tuple[int, int], what: str, threshold: float = 0.3,
                         margin: float = 0.1) -> None:
    """Keypoints must be pixels of the image: visible ones all within [0, 1] are refused as normalised (the pose would
    collapse into the top-left corner); visible ones beyond ``margin`` x the image size outside it are warned about."""
    h, w = int(image_hw[0]), int(image_hw[1])
    ok = np.isfinite(kp[:, :2]).all(-1) & (kp[:, 2] >= threshold)
    if not ok.any():
        return
    xy = kp[ok, :2]
    if max(h, w) > 4 and xy.min() >= 0.0 and xy.max() <= 1.0:
        raise GenerationError(
            f"{what}: the visible keypoints all lie in [0, 1] (x <= {xy[:, 0].max():.2f}, y <= {xy[:, 1].max():.2f}): "
            f"they look normalised, but must be pixel x, y of the {w}x{h} image; multiply x by {w} and y by {h} "
            f"(e.g. kp[..., 0] *= {w}; kp[..., 1] *= {h})")
    out = (xy[:, 0] < -margin * w) | (xy[:, 0] > (1 + margin) * w) | (xy[:, 1] < -margin * h) | \
        (xy[:, 1] > (1 + margin) * h)
    if out.any():
        key = hashlib.sha1(kp.tobytes() + repr((h, w)).encode()).hexdigest()
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning("%s: %d of %d visible keypoints lie outside the %dx%d image (x %.0f..%.0f, y %.0f..%.0f): are "
                        "they pixels of this image (the same crop and size)?", what, int(out.sum()), len(xy), w, h,
                        xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max())


def check_person(kp: np.ndarray, what: str, threshold: float = 0.3, min_points: int = 3) -> None:
    """Refuse an initial pose with (almost) no visible keypoints: there is no person to animate."""
    ok = np.isfinite(kp[:, :2]).all(-1) & (kp[:, 2] >= threshold)
    if int(ok.sum()) < min_points:
        raise GenerationError(f"no person found: {what} has {int(ok.sum())} keypoints with score >= {threshold} "
                              "(need a visible upper body)")


NO_POSE = "no initial pose"  # the start of the error (:func:`no_pose_message`)
AUTO = "auto"  # estimator name: DWPose when both of its files exist, else no estimator


def no_pose_message(estimator: Any = None, prefix: str = "estimator") -> str:
    """The "no initial pose" error, saying how to get one: a keypoints file (which ``python -m mmgt.prepare
    task=keypoints`` writes), a corpus clip, or the DWPose files at the configured paths (then used automatically)."""
    from mmgt.pose.estimators import DWPOSE_FILES, dwpose_download_hint, missing_dwpose_files

    cfg = dict(estimator) if isinstance(estimator, Mapping) else {}
    missing = missing_dwpose_files(cfg) if cfg else dict.fromkeys(DWPOSE_FILES)
    return (f"{NO_POSE}: give `keypoints=<file.npy>` (pixel keypoints of the image; `python -m mmgt.prepare "
            "task=keypoints image=<photo>` writes <photo>_pose.npy with DWPose, and a <photo>_pose.png preview), or "
            "`clip_id=<id>` with `data.root=<corpus>`, or let generate estimate it with DWPose, used when no keypoints "
            f"are given: {dwpose_download_hint(missing, prefix)}")


def resolve_estimator(estimator: Any) -> Any:
    """The estimator :func:`initial_pose` runs when no keypoints are given: None (``name`` null, or ``auto`` with a
    DWPose file missing), an estimator object as given, or a config (``auto`` -> ``dwpose`` when both files exist)."""
    if not isinstance(estimator, Mapping):
        return estimator
    cfg = dict(estimator)
    name = cfg.get("name")
    if name in (None, "", "none", "null"):
        return None
    if name == AUTO:
        from mmgt.pose.estimators import missing_dwpose_files

        if missing_dwpose_files(cfg):
            return None
        cfg["name"] = "dwpose"
    return cfg


def estimate_pose(image: np.ndarray, estimator: Any, what: str = "image", prefix: str = "estimator") -> np.ndarray:
    """(134, 3) pixel keypoints of ``image`` from ``estimator`` (a :class:`~mmgt.pose.estimators.PoseEstimator` or
    its config; ``name: auto`` as :func:`resolve_estimator`); any failure is a one-line :class:`GenerationError`
    (missing DWPose files: which to download, from where, to which path)."""
    from mmgt.pose.estimators import EstimatorError, build_estimator

    est = resolve_estimator(estimator)
    if est is None:
        raise GenerationError(no_pose_message(estimator, prefix))
    if isinstance(est, Mapping):
        try:
            est = build_estimator(dict(est), prefix=prefix)
        except (EstimatorError, ValueError, ImportError) as err:  # missing files, unknown name, no onnxruntime
            raise GenerationError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - e.g. onnxruntime refusing a corrupt or truncated .onnx file
            files = ", ".join(str(est.get(k)) for k in ("det_model", "pose_model") if est.get(k))
            raise GenerationError(f"cannot load the {est.get('name')} pose estimator ({files}): {err}") from None
    name = type(est).__name__
    try:
        return np.asarray(est(image[None]), dtype=np.float32)[0]
    except Exception as err:  # noqa: BLE001 - estimator failures are bad inputs for this image
        raise GenerationError(f"pose estimator {name} failed on {what}: {err}") from err


def initial_pose(image: np.ndarray, keypoints: Keypoints | None, estimator: Any = None,
                 what: str = "image") -> np.ndarray:
    """Pixel keypoints (134, 3) of the source ``image``: from ``keypoints`` or by running ``estimator`` (a
    :class:`~mmgt.pose.estimators.PoseEstimator` or its config; ``name: auto``: DWPose when its files exist) on it,
    logged; a pose with no visible person is refused."""
    if keypoints is not None:
        kp = load_keypoints(keypoints)
        src = f"keypoints file {keypoints}" if not isinstance(keypoints, np.ndarray) else "given keypoints"
    else:
        kp = estimate_pose(image, estimator, what)
        est = resolve_estimator(estimator)
        files = (f" ({est.get('det_model')}, {est.get('pose_model')})"
                 if isinstance(est, Mapping) and est.get("name") == "dwpose" else "")
        name = est.get("name") if isinstance(est, Mapping) else type(est).__name__
        src = f"{name} on {what}"
        log.info("no keypoints given: the initial pose of %s is estimated with %s%s, %d visible keypoints", what,
                 name, files, int((kp[:, 2] >= 0.3).sum()))
    check_person(kp, src)
    check_keypoint_range(kp, image.shape[:2], src)
    return kp


@dataclass
class Inputs:
    """One generation's decoded inputs: the source image, 16 kHz speech and the image's pose (source pixels)."""

    image: np.ndarray  # (H0, W0, 3) uint8
    speech: np.ndarray  # (N,) float32, 16 kHz
    pose: np.ndarray  # (134, 3) pixel keypoints of ``image``


def read_inputs(image: Image, audio: Speech, keypoints: Keypoints | None = None, estimator: Any = None,
                min_peak: float = 1e-4) -> Inputs:
    """Decode and check everything one generation needs (speech first, then the image, then its pose)."""
    speech = load_speech(audio, min_peak)
    src = read_image(image)
    what = str(image) if not isinstance(image, np.ndarray) else "the image"
    return Inputs(src, speech, initial_pose(src, keypoints, estimator, what))


@dataclass
class ClipInputs:
    """What a corpus clip provides: frame 0, the keypoints of every frame and the audio file."""

    image: np.ndarray | None  # (H, W, 3) uint8
    keypoints: np.ndarray  # (T, 134, 3) pixels
    audio: Path
    video: Path


def clip_inputs(root: str | Path, clip_id: str, frame0: bool = True) -> ClipInputs:
    """Frame 0 (unless ``frame0`` is false: an image is given instead), keypoints and the audio/video files of
    ``clip_id`` of the corpus at ``root``."""
    from mmgt.data.corpus import Corpus, CorpusError

    try:
        corpus = Corpus(root)
        rec = corpus[clip_id]
        kp = corpus.load_keypoints(rec)
        image = corpus.load_video(rec, 0, 1)[0] if frame0 else None
    except (CorpusError, ValueError, OSError) as err:
        raise GenerationError(f"clip_id={clip_id} (data.root={root}): {err}") from err
    return ClipInputs(image, kp, corpus.path(rec, "audio"), corpus.path(rec, "video"))


__all__ = ["AUTO", "IMAGE_SUFFIXES", "NO_POSE", "VIDEO_SUFFIXES", "ClipInputs", "Inputs", "check_keypoint_range",
           "check_person", "clip_inputs", "estimate_pose", "fit_image", "initial_pose", "load_keypoints", "load_speech",
           "n_frames_for", "no_pose_message", "read_image", "read_inputs", "resolve_estimator"]
