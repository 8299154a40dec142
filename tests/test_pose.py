"""Pose toolkit: normalisation, visibility, rendering and region masks (mmgt.pose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.pose import layout
from mmgt.pose.layout import LEFT_HAND, LEG_POINTS, LIPS, RIGHT_HAND, PoseNormalizer, visibility
from mmgt.pose.masks import (
    MaskConfig,
    RegionMaskBuilder,
    gaussian_kernel_size,
    official_soft_masks,
    rasterize_boxes,
    region_boxes,
)
from mmgt.pose.render import HAND_EDGE_COLORS, LEGACY_HAND_EDGE_COLORS, render_pose

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def make_keypoints(n_frames: int = 6, size: int = 64, seed: int = 0) -> np.ndarray:
    """A plausible standing speaker in a ``size``-px square frame: hands raised to the sides, mouth moving.

    Layout in 64-px units: head around (32, 17), shoulders at y=28, wrists at (14|50, 31) with fingers
    pointing up, hips at y=52, knees/ankles below (hidden by default), feet at the bottom edge.
    """
    rng = np.random.default_rng(seed)
    body = np.array([(32, 18), (32, 28), (24, 28), (18, 38), (14, 31), (40, 28), (46, 38), (50, 31), (27, 52),
                     (27, 58), (27, 63), (37, 52), (37, 58), (37, 63), (30, 16), (34, 16), (28, 17), (36, 17)], float)
    feet = np.array([(25, 63.5), (26, 63.5), (28, 63.5), (36, 63.5), (38, 63.5), (39, 63.5)])
    ang = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
    jaw = np.stack([32 - 5 * np.cos(ang), 17 + 6 * np.sin(ang)], 1)
    brows = np.stack([np.linspace(28, 36, 10), np.full(10, 14.5)], 1)
    nose = np.stack([np.r_[np.full(4, 32.0), np.linspace(30.5, 33.5, 5)],
                     np.r_[np.linspace(15.5, 18.5, 4), np.full(5, 19.5)]], 1)
    a6 = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eyes = np.concatenate([np.stack([cx + 1.2 * np.cos(a6), 16 + 0.5 * np.sin(a6)], 1) for cx in (29.5, 34.5)])
    a_out, a_in = np.linspace(0, 2 * np.pi, 12, endpoint=False), np.linspace(0, 2 * np.pi, 8, endpoint=False)
    kp = np.zeros((n_frames, layout.NUM_KEYPOINTS, 3), np.float32)
    for t in range(n_frames):
        phase = 2 * np.pi * t / n_frames
        opening = 0.5 + 0.5 * np.sin(phase)
        lips = np.concatenate([np.stack([32 + 3 * np.cos(a_out), 21.5 + (0.8 + opening) * np.sin(a_out)], 1),
                               np.stack([32 + 2 * np.cos(a_in), 21.5 + (0.2 + opening) * np.sin(a_in)], 1)])
        b = body.copy()
        swing = 3 * np.sin(phase)
        b[4] += (swing, -swing)
        b[7] += (-swing, swing)
        hands = []
        for wrist, sign in ((b[7], 1.0), (b[4], -1.0)):  # left hand on the image's right (wrist 7)
            pts = [wrist] + [wrist + np.array([sign * (f - 2) * 0.6, -1.0]) * j * 1.1 + (sign * 0.3 * f, 0)
                             for f in range(5) for j in range(1, 5)]
            hands.append(np.array(pts))
        xy = np.concatenate([b, feet, jaw, brows, nose, eyes, lips, hands[0], hands[1]])
        kp[t, :, :2] = (xy + rng.normal(0, 0.1, xy.shape)) * (size / 64.0)
        kp[t, :, 2] = 0.9
    return kp


# ---------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("as_torch", [False, True])
def test_normalizer_round_trip(legacy: bool, as_torch: bool) -> None:
    kp = make_keypoints(3, size=512)
    x = torch.from_numpy(kp.copy()) if as_torch else kp.copy()
    norm = PoseNormalizer(width=512, height=384, legacy=legacy)
    y = norm.normalize(x)
    assert type(y) is type(x)
    back = norm.denormalize(y)
    back = back.numpy() if as_torch else back
    np.testing.assert_allclose(back, kp, atol=1e-3)
    y = y.numpy() if as_torch else y
    assert np.abs(y[..., :2]).max() <= 1.0  # in-frame points land inside [-1, 1]
    if legacy:  # the original normalised the scores too
        assert not np.allclose(y[..., 2], kp[..., 2])
    else:
        np.testing.assert_array_equal(y[..., 2], kp[..., 2])
    np.testing.assert_array_equal(x.numpy() if as_torch else x, kp)  # input untouched


def test_visibility_hides_legs_without_touching_coords() -> None:
    kp = make_keypoints(2)
    before = kp.copy()
    vis = visibility(kp)
    assert not vis[:, list(LEG_POINTS)].any()
    assert vis[:, [0, 1, 2, 5, 8, 11]].all()  # hips stay
    assert visibility(kp, drop_legs=False)[:, list(LEG_POINTS)].all()
    np.testing.assert_array_equal(kp, before)
    vis_t = visibility(torch.from_numpy(kp))
    np.testing.assert_array_equal(vis_t.numpy(), vis)
    low = kp.copy()
    low[:, LIPS, 2] = 0.1
    assert not visibility(low)[:, list(LIPS)].any()


# ---------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("hw", [(64, 64), (96, 64), (48, 80), (512, 512)])
def test_render_shape_and_content(hw: tuple[int, int]) -> None:
    h, w = hw
    side = min(h, w)
    kp = make_keypoints(2, size=side)  # figure lives in the top-left side x side square
    img = render_pose(kp, h, w)
    assert img.shape == (2, h, w, 3) and img.dtype == np.uint8
    assert img.any(axis=-1).sum() > 0.02 * side * side  # the figure is drawn
    # pixels at the neck and the face centre are coloured
    for t in range(2):
        nx, ny = np.rint(kp[t, 1, :2]).astype(int)
        assert img[t, ny, nx].any()
    # nothing far from the figure: top band above the head, and the other part of a non-square canvas
    assert not img[:, : int(0.12 * side)].any()
    if w > side:
        assert not img[:, :, side + 2:].any()
    if h > side:
        assert not img[:, side + 2:].any()
    single = render_pose(kp[0], h, w)
    np.testing.assert_array_equal(single, img[0])


def test_render_legs_hidden_by_visibility_not_coords() -> None:
    kp = make_keypoints(1)
    before = kp.copy()
    knee, ankle = kp[0, 9, :2], kp[0, 10, :2]  # right knee -> ankle (limb 8)
    mid = np.rint((knee + ankle) / 2).astype(int)
    with_legs = render_pose(kp, 64, 64, drop_legs=False)
    without = render_pose(kp, 64, 64)
    assert with_legs[0, mid[1], mid[0]].any()
    assert not without[0, mid[1], mid[0]].any()
    assert not without[0, 56:].any()  # nothing at all below the hips' region when legs are hidden
    np.testing.assert_array_equal(kp, before)


def test_render_threshold_scale_and_torch() -> None:
    kp64 = make_keypoints(2, size=64)
    kp512 = make_keypoints(2, size=512)
    ref = render_pose(kp64, 64, 64)
    # 512-px keypoints drawn on a 64-px canvas with scale=1/8 land on exactly the same pixels
    np.testing.assert_array_equal(render_pose(kp512, 64, 64, scale=64 / 512), ref)
    np.testing.assert_array_equal(render_pose(torch.from_numpy(kp64), 64, 64), ref)
    # invisible points draw nothing; invisible hands remove the hands' pixels only
    hidden = kp64.copy()
    hidden[..., 2] = 0.0
    assert not render_pose(hidden, 64, 64).any()
    no_hands = kp64.copy()
    no_hands[:, LEFT_HAND + RIGHT_HAND, 2] = 0.0
    img = render_pose(no_hands, 64, 64)
    assert 0 < img.any(-1).sum() < ref.any(-1).sum()
    tip = np.rint(kp64[0, LEFT_HAND[8], :2]).astype(int)  # index fingertip, away from the body
    assert ref[0, tip[1], tip[0]].any() and not img[0, tip[1], tip[0]].any()
    with pytest.raises(ValueError, match="134"):
        render_pose(np.zeros((2, 133, 3)), 64, 64)


def test_render_thickness_scales_with_canvas() -> None:
    small = render_pose(make_keypoints(1, size=64), 64, 64).any(-1).mean()
    large = render_pose(make_keypoints(1, size=256), 256, 256).any(-1).mean()
    # the same figure covers a similar fraction of the canvas at both sizes (thickness scales with size)
    assert 0.5 < large / small < 2.0


def _points(*points: tuple[int, float, float, float]) -> np.ndarray:
    """(134, 3) float32 keypoints, all invisible except the given (index, x, y, score)."""
    kp = np.zeros((layout.NUM_KEYPOINTS, 3), np.float32)
    for i, x, y, score in points:
        kp[i] = (x, y, score)
    return kp


def test_legacy_hand_colours_are_the_reversed_truncated_hsv_list() -> None:
    import colorsys

    n = len(layout.HAND_EDGES)
    hsv = np.array([colorsys.hsv_to_rgb(i / n, 1.0, 1.0) for i in range(n)]) * 255
    np.testing.assert_array_equal(LEGACY_HAND_EDGE_COLORS, np.floor(hsv)[:, ::-1])
    assert np.abs(LEGACY_HAND_EDGE_COLORS.astype(int) - HAND_EDGE_COLORS[:, ::-1].astype(int)).max() <= 1
    # one bone (wrist -> thumb 1, colour 0): red in mmgt's colours, blue in the original's, in both styles
    kp = _points((LEFT_HAND[0], 10, 32, 0.9), (LEFT_HAND[1], 50, 32, 0.9))
    red, blue = [255, 0, 0], [0, 0, 255]
    assert render_pose(kp, 64, 64)[32, 30].tolist() == red
    assert render_pose(kp, 64, 64, legacy_hand_colors=True)[32, 30].tolist() == blue
    assert render_pose(kp, 64, 64, style="official")[32, 30].tolist() == blue
    assert render_pose(kp, 64, 64, style="official", legacy_hand_colors=False)[32, 30].tolist() == red


def test_official_style_rules() -> None:
    at_threshold = np.float32(0.3)
    # body needs score > threshold, hands/face >= threshold
    kp = _points((0, 20, 20, at_threshold), (LEFT_HAND[5], 44, 44, at_threshold))
    official = render_pose(kp, 64, 64, style="official")
    assert not official[20, 20].any() and official[44, 44].tolist() == [0, 0, 255]
    assert render_pose(kp, 64, 64)[20, 20].any()  # mmgt: one rule (>=) for every point
    # coordinates are truncated: a face dot at (20.9, 20.9) is centred on pixel 20, radius 3 at any canvas size
    face = render_pose(_points((30, 20.9, 20.9, 0.9)), 64, 64, style="official")[..., 0]
    np.testing.assert_array_equal(np.nonzero(face[20])[0], np.arange(17, 24))
    np.testing.assert_array_equal(face, face.T)
    nose = _points((0, 32, 32, 0.9))
    assert render_pose(nose, 64, 64, style="official").any(-1).sum() == \
        render_pose(nose, 512, 512, style="official").any(-1).sum() > 40  # fixed radius 4, not scaled
    # a hand point whose integer x is 0 is unused: no dot and no bone from it (mmgt draws the bone)
    kp = _points((LEFT_HAND[0], 0.5, 30, 0.9), (LEFT_HAND[1], 40, 30, 0.9))
    official = render_pose(kp, 64, 64, style="official")
    assert not official[30, 20].any() and official[30, 40].any()
    assert render_pose(kp, 64, 64)[30, 20].any()
    # parts: the dimmed limb colour without joints; nothing at all without parts
    kp = _points((1, 32, 40, 0.9), (0, 32, 10, 0.9))  # neck -> nose, limb 12, colour (0, 0, 255)
    body = render_pose(kp, 64, 64, style="official", parts=("body",))
    assert body[25, 32].tolist() == [int(c * 0.9) for c in layout.BODY_COLORS[12]]
    assert body[10, 32].tolist() == list(layout.BODY_COLORS[0])  # the joint over the limb, not dimmed
    assert not render_pose(kp, 64, 64, style="official", parts=("hands", "face")).any()
    np.testing.assert_array_equal(render_pose(torch.from_numpy(kp), 64, 64, style="official"),
                                  render_pose(kp, 64, 64, style="official"))
    with pytest.raises(ValueError, match="style"):
        render_pose(kp, 64, 64, style="opencv")
    with pytest.raises(ValueError, match="parts"):
        render_pose(kp, 64, 64, parts=("legs",))


# ---------------------------------------------------------------------------------------------- masks


def _hard(kp: np.ndarray, regions: list[str], mask_hw=(64, 64), **cfg) -> dict[str, torch.Tensor]:
    builder = RegionMaskBuilder(MaskConfig(**cfg))
    return builder.region_masks(torch.from_numpy(kp), (64, 64), mask_hw, regions)


def test_region_geometry() -> None:
    kp = make_keypoints(4)
    m = _hard(kp, ["lips", "face", "hands", "body", "background", "full"], face_includes_hands=False)
    assert all(v.shape == (4, 64, 64) for v in m.values())
    assert (m["lips"] <= m["face"]).all() and m["lips"].sum() < m["face"].sum()
    assert (m["face"] <= m["body"]).all() and (m["hands"] <= m["body"]).all()
    torch.testing.assert_close(m["background"], 1 - m["body"])
    assert (m["full"] == 1).all()
    # every visible hand point lies in the hands mask, the mask is empty far from the hands
    hand_xy = kp[:, list(LEFT_HAND + RIGHT_HAND), :2].astype(int)  # (T, 42, 2) pixel of each hand point
    frames = np.arange(4)[:, None]
    assert (m["hands"][frames, hand_xy[..., 1], hand_xy[..., 0]] > 0).all()
    assert (m["hands"][:, :, 24:40] == 0).all()  # the torso column between the raised hands
    assert (m["lips"][:, 40:] == 0).all()
    # knees/ankles are hidden: the body box stops at the hips
    assert (m["body"][:, 54:] == 0).all()
    with_hands = _hard(kp, ["face", "hands"], face_includes_hands=True)
    assert (with_hands["face"] >= with_hands["hands"]).all() and with_hands["face"].sum() > m["face"].sum()


def test_boxes_at_latent_size_match_downsampled_full_size() -> None:
    kp = torch.from_numpy(make_keypoints(3, size=64))
    vis = visibility(kp)
    box, ok = region_boxes(kp, vis, LIPS)
    fine = rasterize_boxes(box, ok, (64, 64), (64, 64))
    coarse = rasterize_boxes(box, ok, (64, 64), (16, 16))
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(fine[:, None], 4)[:, 0], coarse)


def test_padding_grows_boxes() -> None:
    kp = make_keypoints(2)
    tight = _hard(kp, ["lips"])["lips"]
    padded = _hard(kp, ["lips"], padding=0.25)["lips"]
    assert (padded >= tight).all()
    ratio = (padded.sum() / tight.sum()).item()
    assert 1.5**2 * 0.85 < ratio < 1.5**2 * 1.15  # each side grows by 25 % of the size -> 1.5x per axis


def test_union_covers_every_frame_and_none_is_ones() -> None:
    kp = make_keypoints(6)
    common = dict(branches={"face": "face", "lips": "lips", "hands": "hands"}, blur={})
    boxes = RegionMaskBuilder(MaskConfig(mode="boxes", **common))(kp, (64, 64), (64, 64))
    union = RegionMaskBuilder(MaskConfig(mode="union", **common))(kp, (64, 64), (64, 64))
    assert union.shape == boxes.shape == (3, 6, 64, 64)
    assert (union >= boxes).all()
    assert (union == union[:, :1]).all()  # static over the clip
    assert (union.sum((-1, -2)) > boxes.sum((-1, -2))).any()  # the moving hands/lips make it strictly larger
    none = RegionMaskBuilder(MaskConfig(mode="none", **common))(kp, (64, 64))
    assert none.shape == (3, 6, 8, 8) and (none == 1).all()  # the default 8-px cell grid


def test_empty_region_gives_zeros_not_nan() -> None:
    kp = make_keypoints(3)
    kp[1, list(LIPS), 2] = 0.0  # lips lost in one frame
    kp[2, :, 2] = 0.0  # nobody in the last frame
    masks = RegionMaskBuilder(MaskConfig(branches={"face": "face", "lips": "lips", "full": "full"}))(
        kp, (64, 64), (16, 16))
    assert torch.isfinite(masks).all()
    assert masks[1, 1].max() == 0 and masks[:2, 2].max() == 0
    assert masks[1, 0].max() == 1  # a present, blurred region is normalised to peak 1
    assert (masks[2] == 1).all()  # the whole frame stays ones
    # a degenerate box (all lips on one row) has no height -> nothing
    flat = make_keypoints(1)
    flat[0, list(LIPS), 1] = 20.0
    assert _hard(flat, ["lips"])["lips"].max() == 0


def test_soft_masks_in_unit_range() -> None:
    kp = make_keypoints(4)
    cfg = MaskConfig(branches={"full": "full", "face": "face", "lips": "lips", "hands": "hands", "bg": "background"},
                     blur={"face": 0.5, "lips": 0.33, "hands": 0.33, "background": 0.2})
    masks = RegionMaskBuilder(cfg)(kp, (64, 64), (32, 32))
    assert masks.min() >= 0 and masks.max() <= 1
    for k in range(1, 5):
        peak = masks[k].amax((-1, -2))
        torch.testing.assert_close(peak, torch.ones_like(peak))
    hard = RegionMaskBuilder(MaskConfig(branches={"face": "face"}, blur={}))(kp, (64, 64), (32, 32))
    assert (masks[1] > 0).sum() > (hard[0] > 0).sum()  # blurring spreads the mask
    assert gaussian_kernel_size(31 / 64, 64) == 31 and gaussian_kernel_size(21 / 64, 64) == 21
    assert gaussian_kernel_size(0.5, 1) == 1


def test_builder_shapes_and_determinism() -> None:
    kp = make_keypoints(5, size=64)
    for branches in ({"full": "full", "face": "face"}, {"a": "hands", "b": "lips", "c": "face", "d": "body"}):
        builder = RegionMaskBuilder(MaskConfig(branches=branches))
        out = builder(kp, (64, 64), (8, 6))
        k = len(branches)
        assert builder.branch_names == tuple(branches)
        assert out.shape == (k, 5, 8, 6) and out.dtype == torch.float32
        # the one size masks are delivered at: the mask config's cell grid
        assert builder(kp, (64, 64)).shape == (k, 5, 8, 8)
        assert RegionMaskBuilder(MaskConfig(branches=branches, cell=4))(kp, (64, 48)).shape == (k, 5, 16, 12)
    # train and generate call the very same function: equal inputs (numpy or torch, any builder of
    # the same config) give identical outputs
    cfg = {"mode": "boxes", "branches": {"full": "full", "face": "face", "lips": "lips"}}
    a = RegionMaskBuilder(cfg)(kp, (64, 64), (16, 16))
    b = RegionMaskBuilder(MaskConfig.from_dict(cfg))(torch.from_numpy(kp.copy()), (64, 64), (16, 16))
    assert torch.equal(a, b)
    assert (a[0] == 1).all()  # default "full" branch = whole frame


def test_config_validation_and_hydra_files() -> None:
    with pytest.raises(ValueError, match="unknown regions"):
        MaskConfig(branches={"full": "torso"})
    with pytest.raises(ValueError, match="mode"):
        MaskConfig(mode="flow")
    with pytest.raises(ValueError, match="unknown mask config keys"):
        MaskConfig.from_dict({"mode": "boxes", "kernel": 3})
    with pytest.raises(ValueError, match=r"\(T, 134, 3\)"):
        RegionMaskBuilder()(np.zeros((3, 133, 3)), (64, 64))

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for mode in ("boxes", "union", "none"):
            cfg = compose(overrides=[f"+mask={mode}", "mask.branches.full=hands"]).mask
            from_dict = MaskConfig.from_dict(cfg)
            assert from_dict == instantiate(cfg)
            assert from_dict.mode == mode and from_dict.branches == {"full": "hands", "face": "face", "lips": "lips"}
            assert from_dict.face_includes_hands and from_dict.padding == 0.0


# ---------------------------------------------------------------------------------------------- official masks

OFFICIAL = dict(mode="official", legacy_uint8_wrap=True, branches={"full": "one_plus_lips", "face": "face",
                                                                    "lips": "lips"})


def test_official_boxes_truncate_and_exclude_the_max() -> None:
    lips = [(LIPS[0], 10.7, 30.5, 0.9), (LIPS[1], 20.2, 35.9, 0.9), (LIPS[2], 15.0, 33.0, 0.9),
            (LIPS[3], 0.6, 32.0, 0.9),  # integer x 0: not used
            (LIPS[4], 40.0, 50.0, 0.29)]  # below the threshold: not used
    kp = torch.from_numpy(_points(*lips))[None]
    builder = RegionMaskBuilder(MaskConfig(**OFFICIAL))
    m = builder.region_masks(kp, (64, 64), (64, 64), ["lips"])["lips"][0]
    expected = torch.zeros(64, 64)
    expected[30:35, 10:20] = 1.0  # [int min, int max) on both axes
    torch.testing.assert_close(m, expected, rtol=0, atol=0)


def test_official_face_plus_hands_wraps_to_254() -> None:
    face = [(i, x, y, 0.9) for i, (x, y) in zip(layout.FACE[:2], [(10, 10), (30, 30)], strict=True)]
    hand = [(i, x, y, 0.9) for i, (x, y) in zip(LEFT_HAND[:2], [(20, 20), (40, 40)], strict=True)]
    kp = torch.from_numpy(_points(*face, *hand))[None]
    wrap = RegionMaskBuilder(MaskConfig(**OFFICIAL)).region_masks(kp, (64, 64), (64, 64), ["face"])["face"][0]
    values = torch.round(wrap * 255).to(torch.uint8)
    assert values.unique().tolist() == [0, 254, 255]
    assert values[25, 25] == 254 and values[15, 15] == 255 and values[35, 35] == 255
    plain = {**OFFICIAL, "legacy_uint8_wrap": False}
    sat = RegionMaskBuilder(MaskConfig(**plain)).region_masks(kp, (64, 64), (64, 64), ["face"])["face"][0]
    assert sat.unique().tolist() == [0.0, 1.0] and sat[25, 25] == 1


def test_official_masks_on_the_blur_side_canvas_and_one_plus_lips() -> None:
    kp = make_keypoints(3, size=128)
    builder = RegionMaskBuilder(MaskConfig(**OFFICIAL, blur_side=32))
    out = builder(kp, (128, 96))
    assert out.shape == (3, 3, 32, 32)  # the original's square canvas, whatever the frame
    torch.testing.assert_close(out[0], 1.0 + out[2], rtol=0, atol=0)  # full = 1 + lips
    assert out[1:].amax((-1, -2)).eq(1).all()  # the MIN-MAX mask: peak 1
    assert torch.equal(torch.round(out[1:] * 255) / 255, out[1:])  # 8-bit levels
    assert MaskConfig(**OFFICIAL).resize == "pil" and MaskConfig().resize == "area"
    with pytest.raises(ValueError, match="blur_side canvas"):
        builder(kp, (128, 96), (16, 12))
    # same routing in mmgt's own mode: 1 + the (blurred, normalised) lips mask
    boxes = RegionMaskBuilder(MaskConfig(branches={"full": "one_plus_lips", "lips": "lips"}))(kp, (128, 128), (16, 16))
    torch.testing.assert_close(boxes[0], 1.0 + boxes[1], rtol=0, atol=0)


def test_official_blur() -> None:
    boxes = np.zeros((2, 96, 96), np.uint8)
    boxes[0, 30:60, 20:50] = 255
    soft = official_soft_masks(boxes, 21, 64)
    assert soft.shape == (2, 64, 64) and soft.dtype == np.uint8
    assert soft[0].min() == 0 and soft[0].max() == 255 and not soft[1].any()  # empty stays empty
    sharp = official_soft_masks(boxes, 1, 64)
    assert (soft[0] > 0).sum() > (sharp[0] > 0).sum()  # the blur spreads the box



def test_official_config_validation_and_presets() -> None:
    with pytest.raises(ValueError, match="official"):
        MaskConfig(mode="official", branches={"full": "background"})
    with pytest.raises(ValueError, match="padding"):
        MaskConfig(mode="official", padding=0.1)
    with pytest.raises(ValueError, match="legacy_uint8_wrap"):
        MaskConfig(mode="boxes", legacy_uint8_wrap=True)
    with pytest.raises(ValueError, match="blur_side"):
        MaskConfig(blur_side=0)
    assert not MaskConfig().legacy_uint8_wrap and MaskConfig().mode == "boxes"  # defaults stay mmgt's

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        infer = MaskConfig.from_dict(compose(overrides=["+mask=official"]).mask)
        train = MaskConfig.from_dict(compose(overrides=["+mask=official_train"]).mask)
    for cfg in (infer, train):
        assert cfg.mode == "official" and cfg.legacy_uint8_wrap and cfg.face_includes_hands and cfg.blur_side == 64
        assert gaussian_kernel_size(cfg.blur["face"], cfg.blur_side) == 31
        assert gaussian_kernel_size(cfg.blur["lips"], 64) == gaussian_kernel_size(cfg.blur["hands"], 64) == 21
    assert infer.branches == {"full": "one_plus_lips", "face": "face", "lips": "lips"}
    assert train.branches == {"full": "hands", "face": "face", "lips": "lips"}
