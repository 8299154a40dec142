"""Region masks from keypoints: the single definition used by training AND generation.

MM-HAA multiplies each audio cross-attention branch by a region mask at the block's resolution. In the
original MMGT those masks were per-frame axis-aligned keypoint boxes, rendered to mask videos offline and
read back by *different* code paths for training and inference, which ended up feeding different regions
to the "full" branch (hands in training, 1 + lips at inference). Here masks are derived from keypoints in
code, by one object: :class:`RegionMaskBuilder`. The DataModule (ground-truth keypoints) and the generation
pipeline (SMGA-predicted keypoints) both call the same builder built from the same ``mask`` config, so the
two paths cannot drift apart.

Regions (all from *visible* keypoints: score >= threshold, knees/ankles hidden, inside the frame):

=================  ==============================================================================
``lips``           bbox of the mouth points 72-91
``face``           bbox of the face points 24-91 (plus each hand's box when ``face_includes_hands``,
                   as the original's face mask)
``hands``          one bbox per hand (92-112, 113-133), union
``body``           bbox of all visible body, face and hand points (the whole visible person; the face
                   is included so the brows/forehead above the eyes are not "background")
``background``     ``1 - body``
``full``           the whole frame (ones)
``one_plus_lips``  ``1 + lips`` after the lips' blur (values in [1, 2]): the original's inference-time
                   "full" branch
=================  ==============================================================================

A box needs positive width and height (a single point or a line gives nothing); ``padding`` grows each
side by that fraction of the box's size (0 = the original's tight boxes). Boxes are rasterised directly at
the mask resolution (``image / cell``; ``cell`` 8 is the SD latent grid) with exact area coverage, i.e. what
drawing the box at full image size and area-downsampling would give, so a box thinner than a cell still shows up.
Masks are delivered at this one size; a model resizes them to each attention resolution it runs at (area average,
``mmgt.models.video.mmhaa.MaskPyramid``), so the data knows nothing about the network.

Modes: ``boxes`` (per-frame boxes, as MMGT), ``union`` (per-clip union over frames, i.e. Hallo's static
masks), ``none`` (all ones: every branch sees the whole frame, used by the ``haa`` ablation), ``official``
(the original's masks value for value, below).

``official`` mode reproduces the original pipeline: boxes over the points with score >= threshold and
*truncated* integer x, y >= 1, ``[min, max)`` (max exclusive), drawn at image size as uint8 0/255; the face
box canvas plus the hands canvas (with ``legacy_uint8_wrap`` as uint8 with wrap-around, so an overlap is
254); each mask resized to ``blur_side`` squared (OpenCV bilinear), Gaussian-blurred (kernel from ``blur``
times ``blur_side``, OpenCV's sigma), OpenCV MIN-MAX normalised to 0..255, delivered as those 8-bit levels / 255
on the ``blur_side`` canvas. The original then resized them to every attention resolution with PIL bilinear (what
torchvision's ``Resize`` does on a PIL image); models do the same with ``resize="pil"`` (:attr:`MaskConfig.resize`).
Needs ``opencv-python-headless``. Only the original's regions exist there (full, face, lips, hands,
one_plus_lips); conf/mask/official.yaml (inference routing) and official_train.yaml (training routing).

Soft masks: a Gaussian blur whose kernel is a fraction of the side (the original at 64 px: 31 for the face
= 0.484, 21 for lips/hands = 0.328; sigma as OpenCV's automatic choice), then min-max normalisation per
frame. An empty region stays all zeros; a constant non-empty mask (e.g. ``full``) stays as it is.

Which region feeds which branch is the ``branches`` mapping (branch name -> region; order = branch
order of MM-HAA). Default ``full=full, face=face, lips=lips``. The original trained the "full" branch on
hands and ran inference with 1 + lips; reproduce the training side with ``mask.branches.full=hands`` and
the inference side with ``mask.branches.full=one_plus_lips`` (presets: conf/mask/official*.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmgt.pose.layout import (
    BODY,
    FACE,
    LEFT_HAND,
    LIPS,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    VISIBILITY_THRESHOLD,
    visibility,
)

MODES = ("none", "boxes", "union", "official")
REGIONS = ("full", "face", "lips", "hands", "body", "background", "one_plus_lips")
OFFICIAL_REGIONS = ("full", "face", "lips", "hands", "one_plus_lips")
OFFICIAL_EPS = 0.01  # the original keeps a point when its integer x, y exceed this (i.e. >= 1)

# The original's kernels at 64 px: 31 (face) and 21 (lips, hands).
DEFAULT_BLUR: dict[str, float] = {"face": 31 / 64, "lips": 21 / 64, "hands": 21 / 64}
DEFAULT_BRANCHES: dict[str, str] = {"full": "full", "face": "face", "lips": "lips"}


@dataclass
class MaskConfig:
    """The ``mask`` config group (conf/mask/*.yaml): region definition and region -> branch routing."""

    mode: str = "boxes"
    branches: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BRANCHES))
    blur: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BLUR))
    face_includes_hands: bool = True
    padding: float = 0.0
    threshold: float = VISIBILITY_THRESHOLD
    blur_side: int = 64  # official mode: the square side the box masks are resized to before the blur
    legacy_uint8_wrap: bool = False  # official mode: face + hands added as uint8 with wrap-around (overlap 254)
    cell: int = 8  # boxes/union/none: masks are built on an (H / cell, W / cell) grid (8: the SD latent grid)

    def __post_init__(self) -> None:
        self.branches = {str(k): str(v) for k, v in dict(self.branches).items()}
        self.blur = {str(k): float(v) for k, v in dict(self.blur or {}).items()}
        if self.mode not in MODES:
            raise ValueError(f"mask.mode must be one of {MODES}, got {self.mode!r}")
        if not self.branches:
            raise ValueError("mask.branches must name at least one branch (branch name -> region)")
        bad = {k: v for k, v in self.branches.items() if v not in REGIONS}
        if bad:
            raise ValueError(f"mask.branches has unknown regions {bad}; known regions: {REGIONS}")
        bad_blur = {k: v for k, v in self.blur.items() if k not in REGIONS or not 0.0 <= v <= 1.0}
        if bad_blur:
            raise ValueError(f"mask.blur must map known regions {REGIONS} to a fraction of the side in [0, 1], "
                             f"got {bad_blur}")
        if self.padding < 0:
            raise ValueError(f"mask.padding must be >= 0, got {self.padding}")
        self.blur_side, self.cell = int(self.blur_side), int(self.cell)
        if self.blur_side < 1:
            raise ValueError(f"mask.blur_side must be >= 1, got {self.blur_side}")
        if self.cell < 1:
            raise ValueError(f"mask.cell must be >= 1, got {self.cell}")
        if self.mode == "official":
            bad = {k: v for k, v in self.branches.items() if v not in OFFICIAL_REGIONS}
            if bad:
                raise ValueError(f"mask.mode=official knows only the original's regions {OFFICIAL_REGIONS}, got {bad}")
            if self.padding != 0:
                raise ValueError("mask.mode=official draws the original's tight boxes: mask.padding must be 0")
        elif self.legacy_uint8_wrap:
            raise ValueError("mask.legacy_uint8_wrap belongs to mask.mode=official "
                             "(the original's uint8 face + hands sum)")

    @property
    def resize(self) -> str:
        """How a model brings these masks to its attention resolutions (``mmgt.models.video.mmhaa.resize_masks``):
        the original's masks are 8-bit images resized by Pillow; mmgt's are area-averaged."""
        return "pil" if self.mode == "official" else "area"

    def mask_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The one size masks are delivered at for ``image_hw`` frames: the original's square ``blur_side`` canvas,
        else the ``cell`` grid."""
        if self.mode == "official":
            return (self.blur_side, self.blur_side)
        return (max(1, int(image_hw[0]) // self.cell), max(1, int(image_hw[1]) // self.cell))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> MaskConfig:
        """Build from a plain dict or an omegaconf DictConfig; keys starting with ``_`` (hydra) are ignored."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            try:  # omegaconf DictConfig is not a typing Mapping subclass in every version
                from omegaconf import OmegaConf

                cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
            except Exception as err:  # noqa: BLE001
                raise TypeError(f"mask config must be a mapping, got {type(cfg).__name__}") from err
        data = {str(k): v for k, v in dict(cfg).items() if not str(k).startswith("_")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown mask config keys {unknown}; known: {sorted(known)}")
        for key in ("branches", "blur"):
            if key in data and data[key] is not None and not isinstance(data[key], dict):
                data[key] = dict(data[key])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# geometry


def region_boxes(kp: torch.Tensor, vis: torch.Tensor, indices: tuple[int, ...], padding: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame bbox ``(T, 4)`` as (x0, y0, x1, y1) of the visible ``indices``, and validity ``(T,)``.

    Valid means at least two visible points spanning a positive width AND height.
    """
    idx = torch.as_tensor(indices, device=kp.device, dtype=torch.long)
    x, y, v = kp[:, idx, 0], kp[:, idx, 1], vis[:, idx]
    inf = torch.tensor(float("inf"), device=kp.device, dtype=kp.dtype)
    x0 = torch.where(v, x, inf).amin(1)
    x1 = torch.where(v, x, -inf).amax(1)
    y0 = torch.where(v, y, inf).amin(1)
    y1 = torch.where(v, y, -inf).amax(1)
    valid = (x1 > x0) & (y1 > y0)
    box = torch.stack([x0, y0, x1, y1], 1)
    box = torch.where(valid[:, None], box, torch.zeros_like(box))
    if padding > 0:
        w, h = (box[:, 2] - box[:, 0]) * padding, (box[:, 3] - box[:, 1]) * padding
        box = box + torch.stack([-w, -h, w, h], 1)
    return box, valid


def rasterize_boxes(boxes: torch.Tensor, valid: torch.Tensor, image_hw: tuple[int, int],
                    mask_hw: tuple[int, int]) -> torch.Tensor:
    """Boxes ``(T, 4)`` in image pixels -> ``(T, h, w)`` area coverage in [0, 1] at the mask resolution."""
    (img_h, img_w), (h, w) = image_hw, mask_hw
    sx, sy = w / float(img_w), h / float(img_h)
    dev, dt = boxes.device, boxes.dtype

    def cover(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
        j = torch.arange(n, device=dev, dtype=dt)
        return (torch.minimum(hi[:, None], j + 1) - torch.maximum(lo[:, None], j)).clamp(0.0, 1.0)

    cx = cover(boxes[:, 0] * sx, boxes[:, 2] * sx, w)
    cy = cover(boxes[:, 1] * sy, boxes[:, 3] * sy, h)
    return cy[:, :, None] * cx[:, None, :] * valid[:, None, None].to(dt)


def gaussian_kernel_size(fraction: float, side: int) -> int:
    """Odd kernel size ``~fraction * side`` (31 for 0.484 at 64 px); 1 means no blur."""
    k = int(fraction * side)
    if k % 2 == 0:
        k += 1
    return max(1, min(k, 2 * side - 1))


def _gaussian_1d(k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for ksize k when sigma <= 0
    x = torch.arange(k, device=device, dtype=dtype) - (k - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def blur_masks(masks: torch.Tensor, fraction: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, h, w)`` masks, kernel = fraction of each side, reflect borders."""
    if fraction <= 0 or masks.numel() == 0:
        return masks
    n, h, w = masks.shape
    out = masks[:, None]
    ky, kx = gaussian_kernel_size(fraction, h), gaussian_kernel_size(fraction, w)
    if kx > 1:
        g = _gaussian_1d(kx, masks.device, masks.dtype).view(1, 1, 1, kx)
        out = F.conv2d(F.pad(out, (kx // 2, kx // 2, 0, 0), mode="reflect"), g)
    if ky > 1:
        g = _gaussian_1d(ky, masks.device, masks.dtype).view(1, 1, ky, 1)
        out = F.conv2d(F.pad(out, (0, 0, ky // 2, ky // 2), mode="reflect"), g)
    return out[:, 0]


def minmax_normalize(masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-mask min-max to [0, 1] over the last two dims; flat masks are kept (clamped), never NaN."""
    flat = masks.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    rng = hi - lo
    norm = (flat - lo) / rng.clamp_min(eps)
    return torch.where(rng > eps, norm, flat.clamp(0.0, 1.0)).view_as(masks)


def _cv2() -> Any:
    """OpenCV, imported only where the official mode needs it."""
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("mask.mode=official needs OpenCV: pip install opencv-python-headless") from err
    return cv2


def official_soft_masks(masks: np.ndarray, kernel: int, side: int) -> np.ndarray:
    """The original's ``blur_mask``: uint8 ``(T, H, W)`` box masks -> uint8 ``(T, side, side)``.

    OpenCV bilinear resize, Gaussian blur (``kernel`` odd, sigma 0 = OpenCV's rule), MIN-MAX to 0..255. The
    original did this on 3 equal channels and then took PIL's ``L``, which equals any one channel.
    """
    cv2 = _cv2()
    out = np.empty((masks.shape[0], side, side), np.uint8)
    for t, m in enumerate(np.ascontiguousarray(masks, dtype=np.uint8)):
        m = cv2.resize(m, (side, side), interpolation=cv2.INTER_LINEAR)
        if kernel > 1:
            m = cv2.GaussianBlur(m, (kernel, kernel), 0)
        out[t] = cv2.normalize(m, None, 0, 255, cv2.NORM_MINMAX)
    return out


# --------------------------------------------------------------------------------------------------
# the builder


class RegionMaskBuilder:
    """Keypoints -> per-branch region masks at one size; THE one implementation.

    Both ``mmgt.data`` (training/validation samples) and the generation pipeline (SMGA-predicted poses)
    call an instance built from the same ``mask`` config; do not re-derive masks anywhere else.
    """

    def __init__(self, cfg: MaskConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, MaskConfig) else MaskConfig.from_dict(cfg)

    @property
    def branch_names(self) -> tuple[str, ...]:
        return tuple(self.cfg.branches)

    @property
    def num_branches(self) -> int:
        return len(self.cfg.branches)

    def region_masks(self, kp: torch.Tensor, image_hw: tuple[int, int], mask_hw: tuple[int, int],
                     regions: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
        """Hard (area-coverage) masks ``(T, h, w)`` of the named regions for per-frame keypoints."""
        cfg = self.cfg
        img_h, img_w = image_hw
        n, dev = kp.shape[0], kp.device
        xy = kp[..., :2]
        vis = visibility(kp, drop_legs=True, threshold=cfg.threshold)
        vis = vis & torch.isfinite(xy).all(-1)
        official = cfg.mode == "official"
        if official:  # integer boxes over points with truncated x, y >= 1 (the canvas clips the far side)
            xy = torch.trunc(torch.nan_to_num(xy, nan=-1.0))
            vis = vis & (xy > OFFICIAL_EPS).all(-1)
            kp = torch.cat([xy, kp[..., 2:]], -1)
        else:
            vis = vis & (xy[..., 0] >= 0) & (xy[..., 0] <= img_w) & (xy[..., 1] >= 0) & (xy[..., 1] <= img_h)

        cache: dict[str, torch.Tensor] = {}

        def box(indices: tuple[int, ...]) -> torch.Tensor:
            b, ok = region_boxes(kp, vis, indices, cfg.padding)
            return rasterize_boxes(b, ok, image_hw, mask_hw)

        def get(name: str) -> torch.Tensor:
            if name in cache:
                return cache[name]
            if name == "full":
                m = torch.ones(n, *mask_hw, device=dev, dtype=kp.dtype)
            elif name == "lips":
                m = box(LIPS)
            elif name == "hands":
                m = torch.maximum(box(LEFT_HAND), box(RIGHT_HAND))
            elif name == "face":
                m = box(FACE)
                if cfg.face_includes_hands and cfg.legacy_uint8_wrap:  # 255 + 255 = 254 in uint8
                    m = torch.remainder(torch.round(m * 255) + torch.round(get("hands") * 255), 256) / 255
                elif cfg.face_includes_hands:
                    m = torch.maximum(m, get("hands"))
            elif name == "body":
                m = box(BODY + FACE + LEFT_HAND + RIGHT_HAND)
            elif name == "background":
                m = 1.0 - get("body")
            elif name == "one_plus_lips":
                m = 1.0 + get("lips")
            else:
                raise KeyError(f"unknown mask region {name!r}; known: {REGIONS}")
            cache[name] = m
            return m

        return {r: get(r) for r in regions}

    def __call__(self, kp: np.ndarray | torch.Tensor, image_hw: tuple[int, int],
                 mask_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``kp`` (T, 134, 3) pixel keypoints of ``image_hw`` frames -> masks ``(K, T, h, w)`` float32.

        K = branches in config order; values in [0, 1] (``one_plus_lips``: [1, 2]). The size is
        ``mask_hw`` (default :meth:`MaskConfig.mask_size`; the official mode always gives its ``blur_side``
        canvas); models resize them to each attention resolution (``mmgt.models.video.mmhaa.MaskPyramid``).
        """
        kp_t = kp.float() if isinstance(kp, torch.Tensor) else torch.from_numpy(np.array(kp, dtype=np.float32))
        if kp_t.dim() == 2:
            kp_t = kp_t[None]
        if kp_t.dim() != 3 or kp_t.shape[1:] != (NUM_KEYPOINTS, 3):
            raise ValueError(f"RegionMaskBuilder: keypoints must be (T, {NUM_KEYPOINTS}, 3) pixel coords, "
                             f"got shape {tuple(kp_t.shape)}")
        cfg = self.cfg
        image_hw = (int(image_hw[0]), int(image_hw[1]))
        native = cfg.mask_size(image_hw)
        mask_hw = native if mask_hw is None else (int(mask_hw[0]), int(mask_hw[1]))
        if min(image_hw) < 1 or min(mask_hw) < 1:
            raise ValueError(f"RegionMaskBuilder: sizes must be positive, got image {image_hw}, mask {mask_hw}")
        if cfg.mode == "official" and mask_hw != native:
            raise ValueError(f"mask.mode=official builds its masks on the {native[0]}x{native[1]} blur_side canvas, "
                             f"not {mask_hw[0]}x{mask_hw[1]} (models resize them as the original did)")
        n_frames, k = kp_t.shape[0], self.num_branches

        if cfg.mode == "none":
            return torch.ones(k, n_frames, *mask_hw, device=kp_t.device)
        if cfg.mode == "official":
            return self._official(kp_t, image_hw)
        needed = list(dict.fromkeys(cfg.branches.values()))
        base = [r for r in needed if r != "one_plus_lips"] + (["lips"] if "one_plus_lips" in needed else [])
        hard = self.region_masks(kp_t, image_hw, mask_hw, list(dict.fromkeys(base)))
        soft: dict[str, torch.Tensor] = {}
        for name, m in hard.items():
            if cfg.mode == "union":
                m = m.amax(0, keepdim=True)
            frac = cfg.blur.get(name, 0.0)
            if frac > 0:
                m = minmax_normalize(blur_masks(m, frac))
            soft[name] = m.expand(n_frames, *mask_hw)
        if "one_plus_lips" in needed:  # after the lips' blur/normalisation, as the original's 1 + lip
            soft["one_plus_lips"] = 1.0 + soft["lips"]
        return torch.stack([soft[r] for r in cfg.branches.values()]).contiguous()

    def _official(self, kp: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """The original's masks: uint8 boxes at image size -> OpenCV blur at ``blur_side``, as 8-bit levels / 255
        (the original's per-resolution PIL resize is the model's, ``resize="pil"``)."""
        cfg = self.cfg
        needed = list(dict.fromkeys(cfg.branches.values()))
        base = [r for r in needed if r in ("face", "lips", "hands")]
        if "one_plus_lips" in needed and "lips" not in base:
            base.append("lips")
        hard = self.region_masks(kp.cpu(), image_hw, image_hw, base)
        side = cfg.blur_side
        soft: dict[str, torch.Tensor] = {}
        for name, m in hard.items():
            boxes = torch.round(m * 255).to(torch.uint8).numpy()
            blurred = official_soft_masks(boxes, gaussian_kernel_size(cfg.blur.get(name, 0.0), side), side)
            soft[name] = torch.from_numpy(blurred).float().div(255)
        if "one_plus_lips" in needed:  # audio2vid's full mask: 1 + the lips levels
            soft["one_plus_lips"] = 1.0 + soft["lips"]
        if "full" in needed:
            soft["full"] = torch.ones(kp.shape[0], side, side)
        return torch.stack([soft[r] for r in cfg.branches.values()]).to(kp.device)
