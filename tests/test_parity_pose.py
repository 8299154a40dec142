"""Official parity of pose images and movement masks against the golden fixtures of the original code.

The fixture folder (``render/`` and ``masks/``) comes from env ``MMGT_OFFICIAL_FIXTURES`` (default
``<repo>/../shared/fixtures/mmgt_official``). Every size, frame count and level count is read from the files,
so a fixture set with other keypoints or resolutions runs unchanged. The inputs are the normalised 402-d
vectors the original renderer starts from; everything after that is mmgt code (``PoseNormalizer(legacy=True)``,
``render_pose(style="official")``, ``RegionMaskBuilder`` with conf/mask/official*.yaml).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.pose.layout import LEG_POINTS, NUM_CHANNELS, NUM_KEYPOINTS, PoseNormalizer
from mmgt.pose.masks import MaskConfig, RegionMaskBuilder, gaussian_kernel_size, official_soft_masks
from mmgt.pose.render import LEGACY_HAND_EDGE_COLORS, render_pose

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMGT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "mmgt_official"))
RENDER, MASKS = FIXTURES / "render", FIXTURES / "masks"
# The original divides pixel keypoints by this fixed canvas side and multiplies by the canvas it draws on.
OFFICIAL_CANVAS = 512.0
# Renders go through OpenCV's rasteriser, which changed slightly between releases: the fixture notes report ~10
# differing pixels of one frame (a hand bone towards an off-canvas point) between OpenCV 4.8.1 and 4.14. Allow
# max(16, 0.01 % of the frame) differing pixels; a wrong rule moves far more (measured on the public set at 512²:
# plain HSV hand colours 623-670 px, a body threshold of 0.31 instead of 0.3 189 px, mmgt's own style > 2000 px).
MAX_DIFF_FRACTION, MIN_DIFF_ALLOWED = 1e-4, 16
# region file stem -> (mmgt region, level key in mask_levels.safetensors)
MASK_FILES = {"face_hands": "face", "lips": "lips", "hands": "hands"}

pytestmark = pytest.mark.skipif(not (RENDER.is_dir() and MASKS.is_dir()),
                                reason=f"official fixtures not found at {FIXTURES} (set MMGT_OFFICIAL_FIXTURES)")


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


def _frames(stem: str, folder: Path) -> list[np.ndarray]:
    paths = sorted(folder.glob(f"{stem}_f*.png"), key=lambda p: int(p.stem.rsplit("_f", 1)[1]))
    assert paths, f"no {stem}_f*.png in {folder}"
    return [_png(p) for p in paths]


@pytest.fixture(scope="module")
def keypoints() -> np.ndarray:
    """``(T, 134, 3)`` float32 pixel keypoints: the official normalised vectors through mmgt's legacy denormalise."""
    norm = np.load(RENDER / "keypoints_402_normalized.npy")
    assert norm.dtype == np.float32 and norm.shape[1] == NUM_KEYPOINTS * NUM_CHANNELS
    return PoseNormalizer(legacy=True).denormalize(norm.reshape(-1, NUM_KEYPOINTS, NUM_CHANNELS))


def _on_canvas(kp: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The original's ``x / 512 * W`` (float32), for a canvas other than 512 px."""
    out = kp.copy()
    out[..., 0] = kp[..., 0] / np.float32(OFFICIAL_CANVAS) * np.float32(hw[1])
    out[..., 1] = kp[..., 1] / np.float32(OFFICIAL_CANVAS) * np.float32(hw[0])
    return out


def _mask_config(name: str, **overrides: object) -> MaskConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(overrides=[f"+mask={name}", *(f"mask.{k}={v}" for k, v in overrides.items())]).mask
    return MaskConfig.from_dict(cfg)


# ---------------------------------------------------------------------------------------------- keypoints


def test_legacy_denormalize_is_bit_exact(keypoints: np.ndarray) -> None:
    ref = np.load(RENDER / "keypoints_402_denormalized.npy").reshape(keypoints.shape)
    np.testing.assert_array_equal(keypoints, ref)
    meta = json.loads((RENDER / "render_meta.json").read_text())
    for key, value in meta.get("score_after_float32_normalise_round_trip", {}).items():
        if value is None:
            continue
        frame, point = map(int, re.fullmatch(r"frame(\d+)_point(\d+)", key).groups())  # type: ignore[union-attr]
        assert keypoints[frame, point, 2] == np.float32(value)


def test_drop_legs_is_the_original_mask_leg(keypoints: np.ndarray) -> None:
    after = np.load(RENDER / "keypoints_402_after_mask_leg.npy").reshape(keypoints.shape)
    legs = list(LEG_POINTS)
    assert (after[:, legs] == 0).all()
    np.testing.assert_array_equal(np.delete(after, legs, 1), np.delete(keypoints, legs, 1))
    h, w = _frames("pose", RENDER)[0].shape[:2]
    ours = render_pose(_on_canvas(keypoints, (h, w)), h, w, style="official")  # legs hidden by flag
    theirs = render_pose(_on_canvas(after, (h, w)), h, w, style="official", drop_legs=False)  # zeroed legs
    np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize(("stem", "parts"), [("pose", ("body", "hands", "face")), ("part_body", ("body",)),
                                             ("part_hands", ("hands",)), ("part_face", ("face",))])
def test_pose_images_match_official(keypoints: np.ndarray, stem: str, parts: tuple[str, ...]) -> None:
    refs = _frames(stem, RENDER)
    assert len(refs) == keypoints.shape[0]
    h, w = refs[0].shape[:2]
    out = render_pose(_on_canvas(keypoints, (h, w)), h, w, style="official", parts=parts)
    assert out.shape == (len(refs), h, w, 3)
    for t, ref in enumerate(refs):
        assert ref.any(), f"{stem} frame {t} of the fixture is empty"
        n_diff = int((out[t] != ref[..., :3]).any(-1).sum())
        assert n_diff <= max(MIN_DIFF_ALLOWED, MAX_DIFF_FRACTION * h * w), f"{stem} frame {t}: {n_diff} pixels differ"


def test_legacy_hand_colours_are_the_fixture_list() -> None:
    meta = json.loads((RENDER / "render_meta.json").read_text())
    np.testing.assert_array_equal(LEGACY_HAND_EDGE_COLORS, np.array(meta["hand_bone_colours_in_canvas_order"]))


# ---------------------------------------------------------------------------------------------- masks


@pytest.fixture(scope="module")
def box_masks(keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """mmgt's official box masks ``(T, H, W)`` uint8, at the fixture's canvas size."""
    hw = _frames("lips_box", MASKS)[0].shape[:2]
    builder = RegionMaskBuilder(_mask_config("official"))
    kp = torch.from_numpy(_on_canvas(keypoints, hw))
    hard = builder.region_masks(kp, hw, hw, list(MASK_FILES.values()))
    return {stem: torch.round(hard[region] * 255).to(torch.uint8).numpy() for stem, region in MASK_FILES.items()}


@pytest.mark.parametrize("stem", list(MASK_FILES))
def test_box_masks_exact(box_masks: dict[str, np.ndarray], stem: str) -> None:
    refs = _frames(f"{stem}_box", MASKS)
    ours = box_masks[stem]
    assert ours.shape == (len(refs), *refs[0].shape[:2])
    for t, ref in enumerate(refs):
        rgb = ref.reshape(*ref.shape[:2], -1)[..., :3]
        np.testing.assert_array_equal(np.broadcast_to(ours[t][..., None], rgb.shape), rgb, err_msg=f"{stem} f{t}")
    meta = json.loads((RENDER / "render_meta.json").read_text()).get("unique_values_in_512_masks", {})
    if stem in meta:
        assert [np.unique(m).tolist() for m in ours] == meta[stem]


@pytest.mark.parametrize("stem", list(MASK_FILES))
def test_blurred_masks_exact(box_masks: dict[str, np.ndarray], stem: str) -> None:
    """Same OpenCV fixed-point resize/blur/normalise as the original: no grey level may differ."""
    ref = np.load(MASKS / f"{stem}_blur64_L.npy")
    side = ref.shape[-1]
    assert ref.shape == (box_masks[stem].shape[0], side, side)
    cfg = _mask_config("official", blur_side=side)
    ours = official_soft_masks(box_masks[stem], gaussian_kernel_size(cfg.blur[MASK_FILES[stem]], side), side)
    np.testing.assert_array_equal(ours, ref)
    for t, png in enumerate(_frames(f"{stem}_blur64", MASKS)):
        np.testing.assert_array_equal(ours[t], png)
    rgb0 = np.load(MASKS / f"{stem}_blur64_rgb_f0.npy")  # the 3 channels before PIL's convert("L")
    np.testing.assert_array_equal(np.broadcast_to(ours[0][..., None], rgb0.shape), rgb0)


@pytest.mark.parametrize(("preset", "prefix"), [("official", "infer"), ("official_train", "train")])
def test_mask_levels_match_official_routing(keypoints: np.ndarray, preset: str, prefix: str) -> None:
    """Both routings of the original, branch by branch (full, face, lip = MM-HAA branch order) and level by level."""
    from safetensors.numpy import load_file

    levels = load_file(str(MASKS / "mask_levels.safetensors"))
    n_levels = len([k for k in levels if re.fullmatch(rf"{prefix}\.face\.level\d+", k)])
    assert n_levels > 0
    if "train.face.level0.bf1hw" in levels:  # (1, F, 1, h, w): the level-0 size as stored
        latent_hw = tuple(levels["train.face.level0.bf1hw"].shape[-2:])
    else:  # square levels, Resize((s, s))
        s0 = math.isqrt(levels[f"{prefix}.face.level0"].shape[-1])
        latent_hw = (s0, s0)
    box_hw = _frames("lips_box", MASKS)[0].shape[:2]
    side = np.load(MASKS / "lips_blur64_L.npy").shape[-1]
    builder = RegionMaskBuilder(_mask_config(preset, blur_side=side))
    assert builder.branch_names == ("full", "face", "lips")
    out = builder(_on_canvas(keypoints, box_hw), box_hw, latent_hw, n_levels)
    assert len(out["pyramid"]) == n_levels
    torch.testing.assert_close(out["masks"], out["pyramid"][0], rtol=0, atol=0)
    for lvl, ours in enumerate(out["pyramid"]):
        for k, key in enumerate(("full", "face", "lip")):
            ref = torch.from_numpy(levels[f"{prefix}.{key}.level{lvl}"])  # ((b f), h*w)
            assert ours.shape[1] == ref.shape[0] == keypoints.shape[0]
            torch.testing.assert_close(ours[k].reshape(ref.shape), ref, rtol=0, atol=1e-6,
                                       msg=lambda m, lvl=lvl, key=key: f"{prefix}.{key}.level{lvl}: {m}")
            bf1hw = levels.get(f"{prefix}.{key}.level{lvl}.bf1hw")
            if bf1hw is not None:  # (1, F, 1, h, w) before get_attention_mask
                torch.testing.assert_close(ours[k][None, :, None], torch.from_numpy(bf1hw), rtol=0, atol=1e-6)
    if prefix == "infer":  # the original's inference "full" is 1 + lips everywhere
        assert all((p[0] >= 1).all() and (p[0] <= 2).all() for p in out["pyramid"])
