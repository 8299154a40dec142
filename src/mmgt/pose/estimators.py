"""Pose estimators for corpus preparation, behind one interface.

``PoseEstimator.__call__(frames (T, H, W, 3) uint8, context=None) -> (T, 134, 3) float32`` returns pixel
``x, y`` in the given frames plus a score, in the 134-point layout of :mod:`mmgt.pose.layout` (frames
without a person are all zeros). Backends:

* ``dwpose`` — the DWPose ONNX pair (YOLOX person detector + RTMPose/DWPose whole-body SimCC model) run with
  onnxruntime from local files. Pre-processing (letterbox for the detector, top-down affine crop + mean/std
  for the pose model) and post-processing (YOLOX grid decoding + NMS, SimCC argmax decoding, back-transform,
  COCO-WholeBody-133 -> 134) are re-implemented here with numpy + Pillow, so no OpenCV is needed.
* ``precomputed`` — keypoints that already exist as ``.npy`` files (e.g. from an earlier DWPose run on the
  raw videos), given in the *source* video's pixels; they are mapped through the same crop/resize as the
  frames (:class:`CropTransform`), which is why the pipeline passes a :class:`PoseContext`.

No PyPI package ships whole-body weights (dwpose, dwposes, easy-dwpose and rtmlib all download them at run
time), so there is no third backend: weights are always local files named in the config; when they are missing the
error (:class:`MissingWeightsError`) says which release file to download from where to which path.

This module deliberately avoids importing torch (it runs inside spawned preparation workers).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NUM_KEYPOINTS = 134  # == mmgt.pose.layout.NUM_KEYPOINTS (not imported: layout pulls in torch)
SCORE_THRESHOLD = 0.3  # == mmgt.pose.layout.VISIBILITY_THRESHOLD

# COCO-WholeBody body order -> OpenPose-18, applied after the neck has been inserted at index 17
# (dst[OPENPOSE_IDX] = src[MMPOSE_IDX]); nose (0), left shoulder (5) and left hip (11) keep their places.
MMPOSE_IDX = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
OPENPOSE_IDX = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)


class EstimatorError(RuntimeError):
    """An estimator that can't produce keypoints for this input (missing precomputed file, bad shapes)."""


# --------------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class CropTransform:
    """Source pixels -> stored-video pixels: crop the square ``[x0, x0+side) x [y0, y0+side)``, resize to ``size``.

    Keypoints use the pixel-index convention of DWPose/OpenPose (pixel ``i``'s centre is at ``i``), while the
    image resize (Pillow) maps pixel areas, so ``x' = (x + 0.5 - x0) * size / side - 0.5`` keeps a point on the
    same spot of the picture.
    """

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def apply(self, kp: np.ndarray) -> np.ndarray:
        """Map ``(..., 134, 3)`` source keypoints; points that fall outside the crop get score 0."""
        out = np.array(kp, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] + 0.5 - self.x0) * self.scale - 0.5
        out[..., 1] = (out[..., 1] + 0.5 - self.y0) * self.scale - 0.5
        lo, hi = -0.5, self.size - 0.5
        inside = (out[..., 0] >= lo) & (out[..., 0] < hi) & (out[..., 1] >= lo) & (out[..., 1] < hi)
        out[..., 2] = np.where(inside, out[..., 2], 0.0)
        return out


@dataclass(frozen=True)
class PoseContext:
    """Where the frames came from: needed by ``precomputed`` (ignored by image-based estimators)."""

    key: str  # clip key, e.g. "oliver-103842"
    interval_id: str
    speaker: str
    video: Path | None
    source_frames: np.ndarray  # (T,) index of the source-video frame shown in each output frame
    transform: CropTransform
    extra: dict[str, Any] = field(default_factory=dict)


class PoseEstimator(abc.ABC):
    """``estimator(frames (T,H,W,3) uint8, context) -> (T, 134, 3) float32`` pixel keypoints + scores."""

    name: str = "base"

    @abc.abstractmethod
    def __call__(self, frames: np.ndarray, context: PoseContext | None = None) -> np.ndarray:
        ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return frames


# --------------------------------------------------------------------------------------------------- precomputed


class PrecomputedEstimator(PoseEstimator):
    """Keypoints from ``.npy`` files in source-video pixels, mapped through the clip's crop/resize.

    Looked up in ``keypoints_dir`` in this order:

    1. ``<interval_id>.npy`` or ``<speaker>/<interval_id>.npy`` — one row per *output* frame (25 fps from the
       interval start), e.g. DWPose run on the trimmed but uncropped interval;
    2. ``<video stem>.npy`` or ``<speaker>/<video stem>.npy`` — one row per *source-video* frame; the rows of
       the source frames used for each output frame are picked.

    Arrays are (N, 134, 3) float32 (or (N, 402) flat, the original's layout).
    """

    name = "precomputed"

    def __init__(self, keypoints_dir: str | Path) -> None:
        if keypoints_dir is None:
            raise ValueError("estimator=precomputed needs `keypoints_dir` (config key pats.estimator.keypoints_dir)")
        self.root = Path(keypoints_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: precomputed keypoints folder not found "
                                    f"(config key pats.estimator.keypoints_dir)")

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        kp = np.load(path, allow_pickle=False).astype(np.float32)
        if kp.ndim == 2 and kp.shape[1] == NUM_KEYPOINTS * 3:
            kp = kp.reshape(len(kp), NUM_KEYPOINTS, 3)
        if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
            raise EstimatorError(f"{path}: keypoints have shape {kp.shape}, expected (N, 134, 3)")
        return kp

    def __call__(self, frames: np.ndarray, context: PoseContext | None = None) -> np.ndarray:
        frames = _check_frames(frames)
        if context is None:
            raise EstimatorError("precomputed keypoints need a PoseContext (which interval/video, which crop)")
        t = len(frames)
        name = f"{context.interval_id}.npy"
        for path in (self.root / name, self.root / context.speaker / name):
            if path.exists():
                kp = self._load(path)
                if len(kp) < t:
                    raise EstimatorError(f"{path}: {len(kp)} keypoint rows for a {t}-frame clip")
                return context.transform.apply(kp[:t])
        if context.video is not None:
            stem = Path(context.video).stem
            for path in (self.root / f"{stem}.npy", self.root / context.speaker / f"{stem}.npy"):
                if path.exists():
                    kp = self._load(path)
                    idx = np.asarray(context.source_frames, dtype=np.int64)
                    if idx.max(initial=-1) >= len(kp):
                        raise EstimatorError(f"{path}: {len(kp)} rows, but source frame {idx.max()} is needed")
                    return context.transform.apply(kp[idx])
        raise EstimatorError(f"no precomputed keypoints for interval {context.interval_id} in {self.root} "
                             f"(looked for <interval_id>.npy and <video stem>.npy, also under {context.speaker}/)")


# --------------------------------------------------------------------------------------------------- DWPose


def coco_wholebody_to_134(kp133: np.ndarray) -> np.ndarray:
    """(..., 133, 3) COCO-WholeBody -> (..., 134, 3): neck (mean of shoulders, score = min) inserted, body
    re-ordered to OpenPose-18 (so the neck lands at index 1); feet, face and hands follow unchanged."""
    kp133 = np.asarray(kp133, dtype=np.float32)
    if kp133.shape[-2:] != (133, 3):
        raise ValueError(f"expected (..., 133, 3) COCO-WholeBody keypoints, got {kp133.shape}")
    neck = np.empty(kp133.shape[:-2] + (1, 3), np.float32)
    neck[..., 0, :2] = (kp133[..., 5, :2] + kp133[..., 6, :2]) / 2
    neck[..., 0, 2] = np.minimum(kp133[..., 5, 2], kp133[..., 6, 2])
    out = np.concatenate([kp133[..., :17, :], neck, kp133[..., 17:, :]], axis=-2)
    out[..., list(OPENPOSE_IDX), :] = out[..., list(MMPOSE_IDX), :]
    return out


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, float]:
    """YOLOX pre-processing: resize keeping the aspect ratio into the top-left of a ``size=(H, W)`` canvas."""
    from PIL import Image

    h, w = image.shape[:2]
    ratio = min(size[0] / h, size[1] / w)
    nh, nw = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
    canvas = np.full((size[0], size[1], 3), pad_value, np.uint8)
    canvas[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    return canvas, ratio


def yolox_decode(raw: np.ndarray, input_hw: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)) -> np.ndarray:
    """Raw YOLOX head output (N, 5 + C) in grid units -> boxes in input pixels (cx, cy, w, h, obj, cls...)."""
    grids, expanded = [], []
    for s in strides:
        gh, gw = input_hw[0] // s, input_hw[1] // s
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        expanded.append(np.full((gh * gw, 1), s))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(expanded).astype(np.float32)
    if len(grid) != len(raw):
        raise EstimatorError(f"detector output has {len(raw)} anchors, expected {len(grid)} for input {input_hw} "
                             f"and strides {strides}")
    out = raw.astype(np.float32, copy=True)
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(np.clip(out[:, 2:4], -20, 20)) * stride
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Plain greedy non-maximum suppression on xyxy boxes; returns kept indices by descending score."""
    order = np.argsort(-scores)
    keep: list[int] = []
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


def box_to_center_scale(box: np.ndarray, aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box -> (center, scale=(w, h)) padded and widened/heightened to the model's ``aspect = W / H``."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float32)


def affine_crop(image: np.ndarray, center: np.ndarray, scale: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Top-down crop: the region ``center ± scale/2`` warped to ``out_wh`` (bilinear, zero outside).

    In pixel-index coordinates (MMPose's cv2.warpAffine convention) output pixel ``j`` samples input
    ``(j - out/2) * scale/out + center`` — exactly the inverse of :func:`back_transform`. Pillow works in
    continuous coordinates (pixel ``i`` covers ``[i, i+1)``), hence the ``0.5 * (1 - s)`` shift.
    """
    from PIL import Image

    ow, oh = out_wh
    sx, sy = float(scale[0]) / ow, float(scale[1]) / oh
    cx = float(center[0]) - float(scale[0]) / 2 + 0.5 * (1 - sx)
    cy = float(center[1]) - float(scale[1]) / 2 + 0.5 * (1 - sy)
    warped = Image.fromarray(image).transform((ow, oh), Image.Transform.AFFINE, data=(sx, 0.0, cx, 0.0, sy, cy),
                                              resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(warped)


def back_transform(points: np.ndarray, center: np.ndarray, scale: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Model-input pixels -> image pixels for the crop made by :func:`affine_crop`."""
    return points / np.asarray(out_wh, np.float32) * scale + center - scale / 2


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0) -> np.ndarray:
    """SimCC 1-D classification maps (N, K, Wx), (N, K, Wy) -> (N, K, 3) model-input pixels + score.

    Location = argmax / split_ratio; score = the smaller of the two maxima (as MMPose); a score <= 0 marks
    the point invalid (coordinates -1).
    """
    x_locs = np.argmax(simcc_x, axis=-1).astype(np.float32)
    y_locs = np.argmax(simcc_y, axis=-1).astype(np.float32)
    score = np.minimum(np.max(simcc_x, axis=-1), np.max(simcc_y, axis=-1)).astype(np.float32)
    out = np.stack([x_locs / split_ratio, y_locs / split_ratio, score], axis=-1)
    out[score <= 0, :2] = -1.0
    return out


# The DWPose authors' ONNX release (Hugging Face yzd-v/DWPose): config key suffix -> (release file, what it is)
DWPOSE_RELEASE = "https://huggingface.co/yzd-v/DWPose"
DWPOSE_FILES = {"det_model": ("yolox_l.onnx", "person detector"),
                "pose_model": ("dw-ll_ucoco_384.onnx", "whole-body pose model")}


class MissingWeightsError(EstimatorError, FileNotFoundError):
    """DWPose ONNX files not on disk (nothing is downloaded at run time): the message names each missing file, the
    release file to download for it, from where, and the config key that points at it."""


def missing_dwpose_files(cfg: dict | None) -> dict[str, Path | None]:
    """``{key: configured path (None: unset)}`` of the DWPose files of an estimator config that are not on disk."""
    cfg = dict(cfg or {})
    out: dict[str, Path | None] = {}
    for key in DWPOSE_FILES:
        path = cfg.get(key)
        p = Path(str(path)).expanduser() if path not in (None, "") else None
        if p is None or not p.is_file():
            out[key] = p
    return out


def dwpose_download_hint(missing: dict[str, Path | None], prefix: str = "estimator") -> str:
    """Which release files to download, from where, to which paths (and which config keys name them)."""
    parts = []
    for key, path in missing.items():
        url = f"{DWPOSE_RELEASE}/resolve/main/{DWPOSE_FILES[key][0]}"
        parts.append(f"{url} to {path} (config key {prefix}.{key})" if path is not None
                     else f"{url} and set {prefix}.{key}=<its path>")
    return (f"download {' and '.join(parts)}, the DWPose release on Hugging Face (yzd-v/DWPose), or point "
            f"{'that key' if len(parts) == 1 else 'those keys'} at copies you already have")


def require_dwpose(det_model: str | Path | None, pose_model: str | Path | None,
                   prefix: str = "pats.estimator") -> tuple[Path, Path]:
    """Both DWPose files as Paths, or one :class:`MissingWeightsError` line naming every missing one and how to get
    it (``prefix``: where the app's config keeps the estimator, e.g. ``estimator`` for generate)."""
    missing = missing_dwpose_files({"det_model": det_model, "pose_model": pose_model})
    if missing:
        what = " and ".join(DWPOSE_FILES[k][1] for k in missing)
        raise MissingWeightsError(f"DWPose {what} not found (nothing is downloaded at run time): "
                                  f"{dwpose_download_hint(missing, prefix)}")
    return Path(str(det_model)).expanduser(), Path(str(pose_model)).expanduser()


class DWPoseEstimator(PoseEstimator):
    """DWPose (YOLOX-L person detector + DWPose-L/RTMW whole-body SimCC model) through onnxruntime.

    Per frame: detect people (every ``detect_every`` frames; the box is reused in between), keep the
    largest person box with score > ``det_threshold`` (the speaker dominates a PATS crop), estimate 133
    whole-body points in that box and convert them to the 134 layout. Frames without a person are zeros.
    Channel order and mean/std are options because exported models differ (DWPose's own pipeline feeds RGB).
    """

    name = "dwpose"

    def __init__(self, det_model: str | Path | None, pose_model: str | Path | None,
                 providers: list[str] | None = None, det_threshold: float = 0.3, nms_threshold: float = 0.45,
                 pose_input_size: tuple[int, int] | None = None, det_input_size: tuple[int, int] | None = None,
                 mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
                 std: tuple[float, float, float] = (58.395, 57.12, 57.375), bgr: bool = False,
                 simcc_split_ratio: float = 2.0, bbox_padding: float = 1.25, detect_every: int = 1,
                 threads: int | None = None, config_prefix: str = "pats.estimator") -> None:
        det_path, pose_path = require_dwpose(det_model, pose_model, config_prefix)
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("estimator=dwpose needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu)") \
                from err
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = list(providers or ["CPUExecutionProvider"])
        self.det = ort.InferenceSession(str(det_path), opts, providers=providers)
        self.pose = ort.InferenceSession(str(pose_path), opts, providers=providers)
        self.det_hw = tuple(det_input_size or self._static_hw(self.det, (640, 640)))
        self.pose_hw = tuple(pose_input_size or self._static_hw(self.pose, (384, 288)))
        self.det_threshold, self.nms_threshold = float(det_threshold), float(nms_threshold)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.bgr, self.split_ratio, self.padding = bool(bgr), float(simcc_split_ratio), float(bbox_padding)
        self.detect_every = max(1, int(detect_every))

    @staticmethod
    def _static_hw(session: Any, default: tuple[int, int]) -> tuple[int, int]:
        shape = session.get_inputs()[0].shape  # (N, 3, H, W), dims may be symbolic
        h, w = shape[2], shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else default

    # -- detector
    def detect(self, image: np.ndarray) -> np.ndarray:
        """Person boxes (M, 5) xyxy + score in image pixels, best first."""
        canvas, ratio = letterbox(image[..., ::-1] if self.bgr else image, self.det_hw)
        inp = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        raw = self.det.run(None, {self.det.get_inputs()[0].name: inp})[0]
        raw = np.asarray(raw)[0] if np.asarray(raw).ndim == 3 else np.asarray(raw)
        pred = yolox_decode(raw, self.det_hw)
        scores = pred[:, 4:5] * pred[:, 5:] if pred.shape[1] > 5 else pred[:, 4:5]
        cls = scores.argmax(1)
        best = scores[np.arange(len(scores)), cls]
        sel = (cls == 0) & (best > self.det_threshold)
        if not sel.any():
            return np.zeros((0, 5), np.float32)
        cxcywh, best = pred[sel, :4], best[sel]
        boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1) / ratio
        h, w = image.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        keep = nms(boxes, best, self.nms_threshold)
        return np.concatenate([boxes[keep], best[keep, None]], 1).astype(np.float32)

    # -- whole-body model
    def estimate(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """133 COCO-WholeBody points (133, 3) in image pixels for one person box."""
        oh, ow = self.pose_hw
        center, scale = box_to_center_scale(box, aspect=ow / oh, padding=self.padding)
        crop = affine_crop(image, center, scale, (ow, oh)).astype(np.float32)
        if self.bgr:
            crop = crop[..., ::-1]
        inp = ((crop - self.mean) / self.std).transpose(2, 0, 1)[None].astype(np.float32)
        simcc_x, simcc_y = self.pose.run(None, {self.pose.get_inputs()[0].name: inp})[:2]
        kp = simcc_decode(np.asarray(simcc_x), np.asarray(simcc_y), self.split_ratio)[0]
        if kp.shape[0] != 133:
            raise EstimatorError(f"pose model returned {kp.shape[0]} keypoints, expected 133 (COCO-WholeBody)")
        valid = kp[:, 2] > 0
        kp[:, :2] = np.where(valid[:, None], back_transform(kp[:, :2], center, scale, (ow, oh)), 0.0)
        kp[:, 2] = np.clip(kp[:, 2], 0.0, None)
        return kp

    def __call__(self, frames: np.ndarray, context: PoseContext | None = None) -> np.ndarray:
        frames = _check_frames(frames)
        out = np.zeros((len(frames), NUM_KEYPOINTS, 3), np.float32)
        box = None
        for i, frame in enumerate(frames):
            if i % self.detect_every == 0 or box is None:
                boxes = self.detect(frame)
                if len(boxes):
                    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                    box = boxes[int(np.argmax(areas))]
                else:
                    box = None
            if box is not None:
                out[i] = coco_wholebody_to_134(self.estimate(frame, box))
        return out


# --------------------------------------------------------------------------------------------------- factory


ESTIMATORS = ("dwpose", "precomputed")


def estimator_signature(cfg: dict | None) -> dict:
    """The settings that change an estimator's output (for resumable preparation): the backend's own options,
    model files by name only (moving the weights folder doesn't invalidate finished clips)."""
    cfg = dict(cfg or {})
    name = cfg.get("name")
    if name == "dwpose":
        keep = {k: v for k, v in cfg.items() if k not in ("keypoints_dir", "threads", "providers")}
        for k in ("det_model", "pose_model"):
            if keep.get(k):
                keep[k] = Path(str(keep[k])).name
        return dict(sorted(keep.items()))
    return {"name": name}


def check_estimator_config(cfg: dict | None, prefix: str = "pats.estimator") -> None:
    """Fail fast (before any worker starts) on a config that can't build: unknown name, missing weight file or
    keypoints folder, missing onnxruntime. Raises the same errors the estimator would."""
    cfg = dict(cfg or {})
    name = cfg.get("name")
    if name == "precomputed":
        PrecomputedEstimator(cfg.get("keypoints_dir"))
    elif name == "dwpose":
        require_dwpose(cfg.get("det_model"), cfg.get("pose_model"), prefix)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise ImportError("estimator=dwpose needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu)") \
                from err
    else:
        raise ValueError(f"{prefix}.name={name!r}: expected one of {ESTIMATORS}")


def build_estimator(cfg: dict | None, threads: int | None = None, prefix: str = "pats.estimator") -> PoseEstimator:
    """Estimator from its config block ``{name: dwpose|precomputed, ...}`` (see conf/pats/default.yaml); ``prefix``
    is where that block sits in the app's config, for the error messages (``estimator`` in generate and
    ``prepare task=keypoints``)."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", None)
    if name == "precomputed":
        return PrecomputedEstimator(cfg.get("keypoints_dir"))
    if name == "dwpose":
        keys = ("det_model", "pose_model", "providers", "det_threshold", "nms_threshold", "pose_input_size",
                "det_input_size", "mean", "std", "bgr", "simcc_split_ratio", "bbox_padding", "detect_every")
        kwargs = {k: cfg[k] for k in keys if cfg.get(k) is not None}
        for k in ("pose_input_size", "det_input_size", "mean", "std"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        kwargs.setdefault("det_model", None)
        kwargs.setdefault("pose_model", None)
        return DWPoseEstimator(threads=cfg.get("threads") or threads, config_prefix=prefix, **kwargs)
    raise ValueError(f"{prefix}.name={name!r}: expected one of {ESTIMATORS}")
