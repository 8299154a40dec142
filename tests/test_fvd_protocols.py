"""Metrics comparable with published numbers (issue 15): the FVD protocols against independent computations on
planted inputs, the I3D BatchNorm-eps and resize-grid switches, no standard-named metric when a protocol is not
met (1- and 12-frame clips), weight-file checksums, the protocol card.

Feature networks are random-init (no published weights offline) and run at a small, non-standard resolution where
the protocol is not what is tested; the names say so (``_r32``, ``_randinit``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from mmgt.metrics import (
    PROTOCOLS,
    ChecksumMismatchError,
    FrechetVideoDistance,
    InceptionI3d,
    MetricSuite,
    SyncNet,
    SyncScore,
    build_i3d,
    build_suite,
)
from mmgt.metrics.i3d import resize_frames
from mmgt.utils.paths import CONF_DIR

S = 32  # I3D input size of these tests (non-standard: the protocols' clip selection is what is tested)


# ---------------------------------------------------------------- independent references
def _tf1_bilinear(img: np.ndarray, out_h: int, out_w: int, align_corners: bool = False) -> np.ndarray:
    """TensorFlow 1 ``resize_bilinear`` of an (H, W, C) image written from its definition: source coordinate =
    output index · scale (scale = in/out, or (in−1)/(out−1) with aligned corners), no half-pixel offset, the upper
    neighbour clamped to the last pixel."""
    h, w = img.shape[:2]
    sy = (h - 1) / max(out_h - 1, 1) if align_corners else h / out_h
    sx = (w - 1) / max(out_w - 1, 1) if align_corners else w / out_w
    out = np.zeros((out_h, out_w, img.shape[2]))
    for y in range(out_h):
        fy = y * sy
        y0 = int(math.floor(fy))
        y1, dy = min(y0 + 1, h - 1), fy - y0
        for x in range(out_w):
            fx = x * sx
            x0 = int(math.floor(fx))
            x1, dx = min(x0 + 1, w - 1), fx - x0
            top = img[y0, x0] * (1 - dx) + img[y0, x1] * dx
            bottom = img[y1, x0] * (1 - dx) + img[y1, x1] * dx
            out[y, x] = top * (1 - dy) + bottom * dy
    return out


def _frechet_numpy(f1: np.ndarray, f2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Σ √λᵢ(Σ₁Σ₂), with numpy's covariance and the eigenvalues of the product (real
    and ≥ 0 for PSD Σ: round-off clipped) — not the eigh/symmetric-square-root route of mmgt.metrics.frechet."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    lam = np.linalg.eigvals(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def _features(net: torch.nn.Module, clips: list[torch.Tensor], grid: str) -> np.ndarray:
    """I3D logits of clips (T, 3, H, W) in [−1, 1], each resized to S² on ``grid`` by the references above (tf1) or
    torch's own interpolation (half-pixel), one clip at a time."""
    rows = []
    for clip in clips:
        if grid == "tf1":
            frames = np.stack([_tf1_bilinear(f.permute(1, 2, 0).double().numpy(), S, S) for f in clip])
            x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)  # (3, T, S, S)
        else:
            x = F.interpolate(clip, size=(S, S), mode="bilinear", align_corners=False).transpose(0, 1)
        with torch.no_grad():
            rows.append(net(x[None].contiguous()).double()[0].numpy())
    return np.stack(rows)


def _planted(seed: int, b: int, t: int) -> torch.Tensor:
    """Videos (B, T, 3, 40, 40) in [−1, 1] whose 16-frame blocks differ in brightness and motion, so that a protocol
    taking other frames than its own gets other features."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 1, 3, 40, 40, generator=g) * 2 - 1
    ramp = torch.linspace(0, 1, t)[None, :, None, None, None]
    block = (torch.arange(t) // 16).float()[None, :, None, None, None]
    video = base + 0.6 * ramp * torch.randn(b, 1, 3, 1, 1, generator=g) + 0.3 * block
    return (video + 0.2 * torch.randn(b, t, 3, 40, 40, generator=g)).clamp(-1, 1)


# ---------------------------------------------------------------- the protocols
@pytest.mark.parametrize("protocol,t", [("videogpt", 40), ("styleganv", 40), ("whole", 12)])
def test_each_protocol_equals_an_independent_computation_on_planted_videos(protocol: str, t: int) -> None:
    gen, ref = _planted(0, 6, t), _planted(1, 6, t)
    fvd = FrechetVideoDistance(allow_random_weights=True, protocol=protocol, resize=S)
    assert fvd.names()[0] == f"fvd_{protocol}_r{S}_randinit"
    fvd.update(gen[:4], ref[:4])
    fvd.update(gen[4:], ref[4:])
    value = float(fvd.compute())
    net = fvd.__dict__["_net"]  # the feature network as a black box: the protocol's clips are what is tested

    def clips(videos: torch.Tensor) -> list[torch.Tensor]:
        if protocol == "videogpt":  # every non-overlapping 16-frame clip; frames 32..39 are a partial clip
            return [v[i:i + 16] for v in videos for i in (0, 16)]
        if protocol == "styleganv":  # one clip per video: its first 16 frames
            return [v[:16] for v in videos]
        return list(videos)  # whole: the 12-frame video itself

    grid = "tf1" if protocol == "styleganv" else "half_pixel"
    expected = _frechet_numpy(_features(net, clips(gen), grid), _features(net, clips(ref), grid))
    assert fvd.num_clips == len(clips(gen)) == {"videogpt": 12, "styleganv": 6, "whole": 6}[protocol]
    assert expected > 1.0 and value == pytest.approx(expected, rel=2e-4)
    card = fvd.protocol()
    assert card["variant"] == protocol and card["num_clips"] == fvd.num_clips and card["videos_scored"] == 6
    assert card["clip_frames_max"] == (12 if protocol == "whole" else 16) and card["resolution"] == [S, S]


def test_protocols_differ_on_the_same_videos() -> None:
    """The frames a protocol takes matter: the first-clip FVD ignores what happens after frame 16."""
    gen, ref = _planted(2, 5, 40), _planted(3, 5, 40)
    later = gen.clone()
    later[:, 16:] = -1.0  # change only frames 16..39 (black)
    values = {}
    for protocol in ("videogpt", "styleganv"):
        for name, g in (("gen", gen), ("later", later)):
            fvd = FrechetVideoDistance(allow_random_weights=True, protocol=protocol, resize=S)
            fvd.update(g, ref)
            values[protocol, name] = float(fvd.compute())
    assert values["styleganv", "gen"] == pytest.approx(values["styleganv", "later"], rel=1e-9)
    assert values["videogpt", "later"] > 1.3 * values["videogpt", "gen"]  # its second clip went black


def test_batchnorm_eps_switch_changes_the_network_as_batchnorm_defines(tmp_path: Path) -> None:
    """BatchNorm divides by √(running_var + eps): the eps-1e-3 network equals the eps-1e-5 network whose running
    variances are 1e-3 − 1e-5 larger, and differs from it with the same variances (small variances: eps matters)."""
    torch.manual_seed(0)
    net = InceptionI3d(400).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.05)
                m.running_var.uniform_(2e-4, 2e-3)
    sd = net.state_dict()
    torch.save(sd, tmp_path / "a.pt")
    torch.save({k: v + (1e-3 - 1e-5) if k.endswith("running_var") else v for k, v in sd.items()}, tmp_path / "b.pt")
    tf_eps, _ = build_i3d(tmp_path / "a.pt", verify_checksums=False, bn_eps=1e-3)
    shifted, _ = build_i3d(tmp_path / "b.pt", verify_checksums=False, bn_eps=1e-5)
    torch_eps, _ = build_i3d(tmp_path / "a.pt", verify_checksums=False, bn_eps=1e-5)
    x = torch.rand(2, 3, 16, S, S) * 2 - 1
    with torch.no_grad():
        a, b, c = tf_eps(x), shifted(x), torch_eps(x)
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 1e-4 * scale
    assert float((a - c).abs().max()) > 1e-2 * scale
    # the protocols pick their eps (styleganv: the TF-Hub network's); another eps is named
    sgv = FrechetVideoDistance(tmp_path / "a.pt", verify_checksums=False, protocol="styleganv")
    assert sgv.bn_eps == 1e-3 and PROTOCOLS["videogpt"].bn_eps == PROTOCOLS["whole"].bn_eps == 1e-5
    with torch.no_grad():
        torch.testing.assert_close(sgv.__dict__["_net"](x), a)
    odd = FrechetVideoDistance(tmp_path / "a.pt", verify_checksums=False, bn_eps=1e-3)
    assert odd.names()[0] == "fvd_videogpt_eps0.001"


def test_resize_grids_match_tensorflow_reference_values() -> None:
    """TensorFlow's own expected values for ``resize_bilinear`` of a 2×3×2 image to 4×5 (tfjs' test that
    "matches tensorflow w/ random numbers"), without and with aligned corners."""
    img = np.array([1.19074044, 0.91373104, 2.01611669, -0.52270832, 0.38725395, 1.30809779, 0.61835143, 3.49600659,
                    2.09230986, 0.56473997, 0.03823943, 1.19864896]).reshape(2, 3, 2)
    tf1 = np.array([1.19074047, 0.91373104, 1.68596613, 0.05186744, 1.69034398, -0.15654698, 0.7130264, 0.94193673,
                    0.38725394, 1.30809784, 0.9045459, 2.20486879, 1.59434628, 0.89455694, 1.68591988, 0.26748738,
                    0.58103991, 1.00690198, 0.21274668, 1.25337338, 0.6183514, 3.49600649, 1.50272655, 1.73724651,
                    1.68149579, 0.69152176, 0.44905344, 1.07186723, 0.03823943, 1.19864893, 0.6183514, 3.49600649,
                    1.50272655, 1.73724651, 1.68149579, 0.69152176, 0.44905344, 1.07186723, 0.03823943,
                    1.19864893]).reshape(4, 5, 2)
    img2 = np.array([1.56324531, 2.13817752, 1.44398421, 1.07632684, 0.59306785, -0.36970865, 1.62451879, 1.8367334,
                     1.13944798, 2.01993218, 2.01919952, 2.67524054]).reshape(2, 3, 2)
    aligned = np.array([1.5632453, 2.13817763, 1.50361478, 1.60725224, 1.44398427, 1.07632685, 1.01852608,
                        0.35330909, 0.59306782, -0.36970866, 1.58366978, 2.03769612, 1.46307099, 1.71427906,
                        1.3424722, 1.39086199, 1.20545864, 1.01806819, 1.06844509, 0.6452744, 1.60409427,
                        1.93721485, 1.42252707, 1.82130599, 1.24096, 1.70539713, 1.3923912, 1.68282723, 1.54382229,
                        1.66025746, 1.62451875, 1.83673346, 1.38198328, 1.92833281, 1.13944793, 2.01993227,
                        1.57932377, 2.34758639, 2.01919961, 2.67524052]).reshape(4, 5, 2)

    def run(x: np.ndarray, grid: str) -> np.ndarray:
        t = torch.from_numpy(x).float().permute(2, 0, 1)[None]
        return resize_frames(t, (4, 5), grid)[0].permute(1, 2, 0).double().numpy()

    np.testing.assert_allclose(run(img, "tf1"), tf1, atol=1e-5)
    np.testing.assert_allclose(run(img2, "align_corners"), aligned, atol=1e-5)
    np.testing.assert_allclose(_tf1_bilinear(img, 4, 5), tf1, atol=1e-6)  # the test's own reference, too
    half = run(img, "half_pixel")
    assert np.abs(half - tf1).max() > 0.1  # half-pixel centres are another grid


def test_fvd_preprocessing_uses_the_protocols_grid() -> None:
    clip = torch.rand(1, 2, 3, 40, 40) * 2 - 1
    sgv = FrechetVideoDistance(allow_random_weights=True, protocol="styleganv", resize=S)._preprocess(clip)
    vgpt = FrechetVideoDistance(allow_random_weights=True, resize=S)._preprocess(clip)
    expected_tf1 = np.stack([_tf1_bilinear(f.permute(1, 2, 0).double().numpy(), S, S) for f in clip[0]])
    np.testing.assert_allclose(sgv[0].permute(1, 2, 3, 0).numpy(), expected_tf1, atol=1e-5)
    expected_half = F.interpolate(clip[0], size=(S, S), mode="bilinear", align_corners=False)
    torch.testing.assert_close(vgpt[0].transpose(0, 1), expected_half)
    renamed = FrechetVideoDistance(allow_random_weights=True, protocol="styleganv", resize_grid="half_pixel")
    assert renamed.names()[0] == "fvd_styleganv_halfpixel_randinit"
    with pytest.raises(ValueError, match="resize_grid"):
        FrechetVideoDistance(allow_random_weights=True, resize_grid="nearest")
    with pytest.raises(ValueError, match="protocol"):
        FrechetVideoDistance(allow_random_weights=True, protocol="tats")


# ---------------------------------------------------------------- protocols not met: nothing logged
STANDARD = ("fvd", "fvd_videogpt", "fvd_styleganv", "fvd_whole", "sync_c", "sync_d", "lse_c", "lse_d")


@pytest.mark.parametrize("t", [1, 12])
def test_no_standard_named_metric_on_short_clips(t: int) -> None:
    """At the standard settings: 1-frame (sub-stage A) and 12-frame clips get PSNR/SSIM/LPIPS, no FVD (16-frame
    clips), no sync monitor (35 frames for ±15 offsets) and no LSE-C/D (tracks of > 100 frames; S3FD is not even
    run): nothing is logged for them, not a padded number."""
    suite = MetricSuite(allow_random_weights=True, lse=True)  # 224², 16-frame clips, vshift 15, min_track 100
    g = torch.Generator().manual_seed(t)
    ref = torch.rand(2, t, 3, 32, 32, generator=g) * 2 - 1
    with pytest.warns(UserWarning, match="not scored"):
        suite.update(ref.flip(-1), ref, audio=torch.randn(2, t * 640, generator=g))
    out = suite.compute()
    assert set(out) == {"psnr", "ssim", "lpips_randinit"}
    assert not set(out) & set(STANDARD)
    card = suite.last_card
    assert card["fvd"]["videos_skipped"] == 2 and card["fvd"]["videos_scored"] == 0
    assert card["sync"]["skipped_clips"] == 2 and card["sync"]["num_clips"] == 0
    assert card["lse"]["short_clips"] == 2 and card["lse"]["detections"] == 0 and card["lse"]["tracks"] == 0


def test_whole_video_fvd_on_12_frames_and_never_on_one() -> None:
    suite = MetricSuite(allow_random_weights=True, psnr=False, ssim=False, lpips=False, sync=False,
                        fvd={"protocol": "whole", "resize": S})
    for t, logged in ((12, True), (1, False)):
        suite.reset()
        videos = _planted(t, 3, t)
        suite.update(videos, videos.flip(0))
        out = suite.compute()
        assert ("fvd_whole_r32_randinit" in out) is logged, out
        if logged:
            assert out["fvd_whole_r32_randinit_num_clips"] == 3 and suite.last_card["fvd"]["clip_frames_max"] == 12
    with pytest.raises(ValueError, match="at least 2 frames"):
        FrechetVideoDistance(allow_random_weights=True, protocol="whole", min_frames=1)


def _quick_suite(tmp_path: Path) -> MetricSuite:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["metrics=quick", "metrics.lpips.enabled=false",
                                          f"paths.root_dir={tmp_path}"])
    return build_suite(cfg.metrics, MetricSuite)


def test_quick_config_logs_no_fvd_or_sync_for_substage_a_samples(tmp_path: Path) -> None:
    """Sub-stage A validates 1-frame samples with the quick suite: the suite itself leaves FVD and sync out; the
    12-frame windows of stage B get the quick config's explicitly non-standard names."""
    suite = _quick_suite(tmp_path)
    one = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    suite.update(one, one.clone(), audio=torch.randn(2, 640), keypoints=torch.zeros(2, 1, 134, 3))
    assert set(suite.compute()) == {"psnr", "ssim"}
    suite.reset()
    twelve = _planted(4, 2, 12)
    suite.update(twelve, twelve.flip(0), audio=torch.randn(2, 12 * 640))
    out = suite.compute()
    assert {"fvd_videogpt_r64_4f_randinit", "kpsync_v3_conf_randinit", "kpsync_v3_dist_randinit"} <= set(out)
    assert not set(out) & set(STANDARD)


def test_sync_minimum_length_follows_the_offset_search() -> None:
    sync = SyncScore(allow_random_weights=True, vshift=3)
    assert sync.min_frames == 2 * 3 + 5
    video = torch.rand(3, 11, 3, 32, 32) * 2 - 1
    audio = torch.randn(3, 11 * 640)
    audio[2, 10 * 640:] = 0
    sync.update(video[:2], audio[:2])
    sync.update(video[2:, :10], audio[2:, :10 * 640])  # 10 frames: one short of 2·3 + 5
    out = sync.results()
    assert out["kpsync_v3_num_clips"] == 2 and sync.last_counts["skipped_clips"] == 1
    assert SyncScore(allow_random_weights=True).min_frames == 35
    with pytest.raises(ValueError, match="at least 6"):
        SyncScore(allow_random_weights=True, min_frames=5)


# ---------------------------------------------------------------- weight files
def test_a_wrong_weight_file_is_refused_naming_file_and_checksums(tmp_path: Path) -> None:
    path = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), path)  # the published keys, other bytes
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ChecksumMismatchError) as err:
        SyncScore(path)
    msg = str(err.value)
    for part in (str(path), "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442", actual,
                 "metrics.checksums.syncnet"):
        assert part in msg
    # the user's own file, declared by its checksum: accepted and recorded as such
    own = SyncScore(path, checksums={"syncnet": actual})
    assert own.protocol()["weights_status"] == "user-declared" and own.protocol()["weights_sha256"] == actual
    with pytest.raises(ChecksumMismatchError, match="declared"):
        SyncScore(path, checksums={"syncnet": "0" * 64})
    assert SyncScore(path, verify_checksums=False).protocol()["weights_status"] == "unverified"

    # I3D: either published file is accepted; the message names both
    i3d = tmp_path / "i3d"
    i3d.mkdir()
    torch.save(InceptionI3d(400).state_dict(), i3d / "i3d_torchscript.pt")
    with pytest.raises(ChecksumMismatchError, match="a867b87a.*bec6519f") as err:
        FrechetVideoDistance(i3d)
    assert str(i3d / "i3d_torchscript.pt") in str(err.value)


def test_every_registry_file_states_a_checksum() -> None:
    from mmgt.metrics.weights import REGISTRY

    for spec in REGISTRY.values():
        for known in spec.known_files():
            assert known.sha256 or known.git_blob_sha1, known.filename
            if known.sha256:
                assert len(known.sha256) == 64 and int(known.sha256, 16) >= 0
    assert {"i3d", "syncnet", "s3fd", "alexnet", "inception"} <= set(REGISTRY)


# ---------------------------------------------------------------- the protocol card
def test_protocol_card_is_written_to_metrics_json_and_tensorboard_hparams(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmgt.evaluation.reports import write_reports

    suite = MetricSuite(allow_random_weights=True, lpips=False, sync=False, fvd={"resize": S})
    videos = _planted(5, 3, 16)
    suite.update(videos, videos.flip(0))
    metrics = suite.compute()
    write_reports(tmp_path, metrics, {"pairs": ["a", "b", "c"]}, tensorboard=True, protocol=suite.last_card)
    report = json.loads((tmp_path / "metrics.json").read_text())
    fvd = report["protocol"]["fvd"]
    assert fvd["metric"] == "fvd_videogpt_r32_randinit" and fvd["variant"] == "videogpt"
    assert fvd["num_clips"] == 3 and fvd["bn_eps"] == 1e-5 and fvd["resolution"] == [S, S]
    assert fvd["input_resolution"] == [40, 40] and fvd["weights_status"] == "random-init"
    assert report["protocol"]["psnr"]["num_frames"] == 48
    tags = set()
    for events in (tmp_path / "tensorboard").glob("**/events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags().get("scalars", []))
        assert b"fvd/variant" in events.read_bytes() or "eval/psnr" not in acc.Tags().get("scalars", [])
    assert "eval/fvd_videogpt_r32_randinit" in tags
    raw = b"".join(e.read_bytes() for e in (tmp_path / "tensorboard").glob("**/events.out.tfevents.*"))
    assert b"fvd/variant" in raw and b"videogpt" in raw and b"fvd/weights_status" in raw
