"""OpenPose-style pose images from 134-point keypoints (the pose-guider input of stage 2).

The drawing follows the original MMGT/DWPose renderer: on a black canvas, the 17 OpenPose body limbs as
filled ellipses ("sticks", half-width 4 px at 512 px, colours dimmed to 90 %), the 18 body joints as dots
(radius 4), the hands' 20 bones per hand (thickness 2, colour = HSV hue i/20) with blue dots (radius 4), and
the 68 face landmarks as white dots (radius 3); order body, hands, face. Feet are never drawn; knees/ankles
are hidden through :func:`mmgt.pose.layout.visibility` (never by zeroing coordinates).

Two styles (``render_pose(..., style=...)``):

* ``"mmgt"`` (default) differs from the original on purpose:

  - all sizes scale with ``min(height, width) / 512`` so 64-px tiny runs get 1-px lines instead of blobs;
    the limb axis and the dot centres are always drawn, so nothing vanishes at small sizes;
  - hand bone colours are the plain HSV->RGB colours (``legacy_hand_colors=True`` gives the original's);
  - one visibility rule for every point (score >= threshold) and sub-pixel coordinates (rounded, not
    truncated);
  - everything is rasterised with vectorised numpy point stamping, a whole clip in one pass.

* ``"official"`` reproduces the original images pixel for pixel with OpenCV's rasteriser (fixed sizes at
  any canvas, coordinates truncated to int, body points need score > threshold, hand/face points
  score >= threshold and integer x, y >= 1, hand bones only between two such points, the original's
  BGR-reversed, truncated hand colours on the RGB canvas). Needs ``opencv-python-headless``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from mmgt.pose.layout import (
    BODY_COLORS,
    BODY_LIMBS,
    FACE,
    HAND_EDGES,
    LEFT_HAND,
    LEG_POINTS,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    VISIBILITY_THRESHOLD,
    visibility,
)

REFERENCE_SIZE = 512.0  # canvas side at which the sizes below are the original's pixel sizes
STICK_HALF_WIDTH = 4.0  # body limb ellipse semi-minor axis
BODY_DOT_RADIUS = 4.0
HAND_LINE_WIDTH = 2.0
HAND_DOT_RADIUS = 4.0
FACE_DOT_RADIUS = 3.0
LIMB_DIM = 0.9  # the original multiplies the limb layer by 0.9 before drawing the joints

LIMB_COLORS = np.array([[int(c * LIMB_DIM) for c in BODY_COLORS[i]] for i in range(len(BODY_LIMBS))], np.uint8)
JOINT_COLORS = np.array(BODY_COLORS, np.uint8)
HAND_EDGE_COLORS = np.array(
    [[int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)] for i in range(len(HAND_EDGES))],
    np.uint8,
)
# The original computed HSV(i/20, 1, 1) * 255 as RGB, truncated it and wrote it in reversed (BGR) order on its
# RGB canvas, so its bones run blue -> red where the HSV hue runs red -> blue.
LEGACY_HAND_EDGE_COLORS = np.array(
    [[int(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)][::-1] for i in range(len(HAND_EDGES))],
    np.uint8,
)
HAND_DOT_COLOR = np.array([0, 0, 255], np.uint8)
FACE_DOT_COLOR = np.array([255, 255, 255], np.uint8)

STYLES = ("mmgt", "official")
PARTS = ("body", "hands", "face")
OFFICIAL_EPS = 0.01  # the original draws a hand/face point when its integer coordinates exceed this (i.e. >= 1)


def render_pose(
    kp: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    *,
    scale: float = 1.0,
    drop_legs: bool = True,
    threshold: float = VISIBILITY_THRESHOLD,
    style: str = "mmgt",
    legacy_hand_colors: bool | None = None,
    parts: tuple[str, ...] | list[str] = PARTS,
) -> np.ndarray:
    """Draw pose image(s): ``(T, 134, 3)`` or ``(134, 3)`` pixel keypoints -> ``(T, H, W, 3)`` / ``(H, W, 3)`` RGB.

    ``kp`` holds pixel ``x, y`` and a score; coordinates are multiplied by ``scale`` to land on the
    ``height x width`` canvas (e.g. ``scale=64/512`` to draw 512-px keypoints on a 64-px canvas; the original's
    ``x / 512 * W`` is ``scale=W/512``, the same float result since 512 is a power of two).
    Points with score below ``threshold`` (and knees/ankles when ``drop_legs``) are not drawn, nor is any
    limb or bone touching them. ``style`` picks the drawing rules (module docstring), ``legacy_hand_colors``
    the original's reversed hand bone colours (None: only in the official style), ``parts`` which of the
    three drawing steps run (the original's part images are one step alone). Returns uint8; the input is
    never modified.
    """
    if style not in STYLES:
        raise ValueError(f"render_pose: style must be one of {STYLES}, got {style!r}")
    bad_parts = [p for p in parts if p not in PARTS]
    if bad_parts:
        raise ValueError(f"render_pose: unknown parts {bad_parts}; known: {PARTS}")
    if isinstance(kp, torch.Tensor):
        kp = kp.detach().cpu().numpy()
    # the official style keeps float32 input in float32: its truncations must see the original's float values
    kp = np.asarray(kp, dtype=np.float32 if style == "official" and np.asarray(kp).dtype == np.float32 else np.float64)
    single = kp.ndim == 2
    if single:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"render_pose: keypoints must have shape (T, {NUM_KEYPOINTS}, 3) or ({NUM_KEYPOINTS}, 3), "
                         f"got {tuple(kp.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"render_pose: canvas size must be positive, got {height}x{width}")
    use_legacy = style == "official" if legacy_hand_colors is None else bool(legacy_hand_colors)
    hand_colors = LEGACY_HAND_EDGE_COLORS if use_legacy else HAND_EDGE_COLORS
    if style == "official":
        out = np.zeros((kp.shape[0], height, width, 3), np.uint8)
        for t, frame in enumerate(kp):
            out[t] = _render_official(frame, height, width, scale, drop_legs, threshold, hand_colors, parts)
        return out[0] if single else out
    n_frames = kp.shape[0]
    xy = kp[..., :2] * float(scale)
    vis = np.asarray(visibility(kp, drop_legs=drop_legs, threshold=threshold)) & np.isfinite(xy).all(-1)
    size = min(height, width) / REFERENCE_SIZE
    canvas = np.zeros((n_frames * height * width, 3), np.uint8)
    frames = np.arange(n_frames)

    # body limbs, one limb index at a time so later limbs overlap earlier ones as in the original
    for i, (a, b) in enumerate(BODY_LIMBS if "body" in parts else ()):
        ok = vis[:, a] & vis[:, b]
        if ok.any():
            _draw_segments(canvas, height, width, frames[ok], xy[ok, a], xy[ok, b], STICK_HALF_WIDTH * size,
                           LIMB_COLORS[i][None].repeat(int(ok.sum()), 0), ellipse=True)
    # body joints
    body = np.arange(len(BODY_COLORS) if "body" in parts else 0)
    t_idx, j_idx = np.nonzero(vis[:, body])
    _draw_dots(canvas, height, width, t_idx, xy[t_idx, body[j_idx]], BODY_DOT_RADIUS * size, JOINT_COLORS[j_idx])
    # hands: bones, then dots
    edges = np.array(HAND_EDGES)
    for hand in (LEFT_HAND, RIGHT_HAND) if "hands" in parts else ():
        base = hand[0]
        pa, pb = base + edges[:, 0], base + edges[:, 1]
        t_idx, e_idx = np.nonzero(vis[:, pa] & vis[:, pb])
        if t_idx.size:
            _draw_segments(canvas, height, width, t_idx, xy[t_idx, pa[e_idx]], xy[t_idx, pb[e_idx]],
                           HAND_LINE_WIDTH * size / 2.0, hand_colors[e_idx], ellipse=False)
    hands = np.array(LEFT_HAND + RIGHT_HAND if "hands" in parts else (), np.int64)
    t_idx, j_idx = np.nonzero(vis[:, hands])
    _draw_dots(canvas, height, width, t_idx, xy[t_idx, hands[j_idx]], HAND_DOT_RADIUS * size,
               HAND_DOT_COLOR[None].repeat(t_idx.size, 0))
    # face
    face = np.array(FACE if "face" in parts else (), np.int64)
    t_idx, j_idx = np.nonzero(vis[:, face])
    _draw_dots(canvas, height, width, t_idx, xy[t_idx, face[j_idx]], FACE_DOT_RADIUS * size,
               FACE_DOT_COLOR[None].repeat(t_idx.size, 0))

    out = canvas.reshape(n_frames, height, width, 3)
    return out[0] if single else out


def _render_official(kp: np.ndarray, height: int, width: int, scale: float, drop_legs: bool, threshold: float,
                     hand_colors: np.ndarray, parts: tuple[str, ...] | list[str]) -> np.ndarray:
    """One frame ``(134, 3)`` drawn with the original's rules and OpenCV calls (see the module docstring)."""
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("render_pose(style='official') needs OpenCV: pip install opencv-python-headless") from err
    canvas = np.zeros((height, width, 3), np.uint8)
    xy = kp[:, :2] * kp.dtype.type(scale)  # stays float32 for float32 input, as the original's arrays
    score = kp[:, 2].copy()
    finite = np.isfinite(xy).all(-1)
    if drop_legs:
        score[list(LEG_POINTS)] = 0.0  # the original's mask_leg zeroes them (coordinates too; body points only)
    if "body" in parts:
        body_ok = (score > threshold) & finite  # strictly above, as the original's body filter
        for i, (a, b) in enumerate(BODY_LIMBS):
            if not (body_ok[a] and body_ok[b]):
                continue
            px, py = xy[[a, b], 0], xy[[a, b], 1]
            length = ((py[0] - py[1]) ** 2 + (px[0] - px[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(py[0] - py[1], px[0] - px[1]))
            poly = cv2.ellipse2Poly((int(np.mean(px)), int(np.mean(py))), (int(length / 2), int(STICK_HALF_WIDTH)),
                                    int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, BODY_COLORS[i])
        canvas = (canvas * LIMB_DIM).astype(np.uint8)
        for i in np.nonzero(body_ok[: len(BODY_COLORS)])[0]:
            cv2.circle(canvas, (int(xy[i, 0]), int(xy[i, 1])), int(BODY_DOT_RADIUS), BODY_COLORS[i], thickness=-1)
    # hands and face: a point below the threshold becomes (-1, -1); a point is used when its integer x, y > eps
    with np.errstate(invalid="ignore"):
        ixy = np.where((score >= threshold)[:, None] & finite[:, None], np.trunc(xy), -1.0)
    ixy = ixy.clip(-(2**30), 2**30).astype(np.int64)  # OpenCV takes int32 points; far off-canvas stays off
    used = (ixy > OFFICIAL_EPS).all(-1)
    if "hands" in parts:
        for hand in (LEFT_HAND, RIGHT_HAND):
            base = hand[0]
            for e, (a, b) in enumerate(HAND_EDGES):
                if used[base + a] and used[base + b]:
                    cv2.line(canvas, tuple(map(int, ixy[base + a])), tuple(map(int, ixy[base + b])),
                             tuple(map(int, hand_colors[e])), thickness=int(HAND_LINE_WIDTH))
            for k in hand:
                if used[k]:
                    cv2.circle(canvas, tuple(map(int, ixy[k])), int(HAND_DOT_RADIUS), tuple(map(int, HAND_DOT_COLOR)),
                               thickness=-1)
    if "face" in parts:
        for k in FACE:
            if used[k]:
                cv2.circle(canvas, tuple(map(int, ixy[k])), int(FACE_DOT_RADIUS), tuple(map(int, FACE_DOT_COLOR)),
                           thickness=-1)
    return canvas


def _disk_offsets(radius: float) -> np.ndarray:
    """Integer ``(n, 2)`` (dy, dx) offsets of a filled disk; radius < 1 gives the single centre pixel."""
    r = max(float(radius), 0.0)
    k = int(math.floor(r))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    keep = dy**2 + dx**2 <= r * r + 1e-9
    return np.stack([dy[keep], dx[keep]], axis=1)


def _paint(canvas: np.ndarray, height: int, width: int, t: np.ndarray, y: np.ndarray, x: np.ndarray,
           colors: np.ndarray) -> None:
    """Write ``colors`` at integer pixels (t, y, x), dropping those outside the canvas (any leading shape)."""
    yi = np.rint(y).astype(np.int64)
    xi = np.rint(x).astype(np.int64)
    inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
    idx = (t * height + yi) * width + xi
    canvas[idx[inside]] = colors[inside]


def _draw_dots(canvas: np.ndarray, height: int, width: int, t: np.ndarray, xy: np.ndarray, radius: float,
               colors: np.ndarray) -> None:
    if t.size == 0:
        return
    off = _disk_offsets(radius)
    cy = np.rint(xy[:, 1])[:, None] + off[None, :, 0]
    cx = np.rint(xy[:, 0])[:, None] + off[None, :, 1]
    n_off = off.shape[0]
    _paint(canvas, height, width, np.repeat(t[:, None], n_off, 1), cy, cx, np.repeat(colors[:, None], n_off, 1))


_STEP = 0.7  # lattice spacing in px: covering radius 0.49 < 0.5, so every pixel whose unit disk fits is hit


def _draw_segments(canvas: np.ndarray, height: int, width: int, t: np.ndarray, p0: np.ndarray, p1: np.ndarray,
                   half_width: float, colors: np.ndarray, *, ellipse: bool) -> None:
    """Fill thick segments by stamping a rotated sample lattice (spacing < 1/sqrt(2) px, so no holes).

    ``ellipse=True`` gives the OpenPose stick (ellipse with the segment as major axis and semi-minor
    ``half_width``); otherwise a band of constant half-width. The axis itself is always drawn.
    """
    if t.size == 0:
        return
    diag = math.hypot(height, width)
    d = p1 - p0
    length = np.hypot(d[:, 0], d[:, 1])
    # per-segment sample count (independent of the other segments, so a frame renders the same alone or in
    # a batch); capped for absurd off-canvas segments
    n_seg = np.minimum(np.ceil(length / _STEP), math.ceil(2.0 * diag / _STEP)).astype(np.int64) + 1
    n_along = int(n_seg.max())
    b = max(float(half_width), 0.0)
    n_across = 2 * int(math.ceil(b / _STEP)) + 1
    j = np.arange(n_along)
    u = j[None, :] / np.maximum(n_seg[:, None] - 1, 1)  # (N, U) position along each segment in [0, 1]
    on_seg = j[None, :] < n_seg[:, None]
    v = np.linspace(-b, b, n_across)  # offset across, in px
    v[n_across // 2] = 0.0  # exact zero: the axis is always drawn
    safe = np.where(length > 1e-9, length, 1.0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) / safe[:, None]  # (N, 2) unit normal (x, y)
    pts = p0[:, None, None, :] + u[:, :, None, None] * d[:, None, None, :] \
        + v[None, None, :, None] * normal[:, None, None, :]  # (N, U, V, 2)
    if ellipse:
        half = b * np.sqrt(np.clip(1.0 - (2.0 * u - 1.0) ** 2, 0.0, 1.0))  # (N, U) ellipse half-width at u
        keep = (np.abs(v)[None, None, :] <= half[:, :, None] + 1e-9) | (v[None, None, :] == 0.0)
    else:
        keep = np.ones((1, 1, n_across), bool)
    keep = keep & on_seg[:, :, None]
    shape = (t.size, n_along, n_across)
    keep = np.broadcast_to(keep, shape)
    tt = np.broadcast_to(t[:, None, None], shape)[keep]
    cols = np.broadcast_to(colors[:, None, None, :], shape + (3,))[keep]
    _paint(canvas, height, width, tt, pts[..., 1][keep], pts[..., 0][keep], cols)
