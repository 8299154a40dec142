"""LSE-C/D, the standard pipeline: S3FD against the published layout and selection rules, the tracker / smoothing /
crop on planted detections (no detector), and the metric end to end with a stubbed detector."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgt.metrics import MetricSuite
from mmgt.metrics.lse import LipSyncError, crop_track, smooth_track, track_faces
from mmgt.metrics.s3fd import S3FD, L2Norm, S3FDNet, build_s3fd, decode, prior_boxes, random_s3fd
from mmgt.metrics.syncnet import SyncNet
from mmgt.metrics.weights import ChecksumMismatchError, MissingMetricWeightsError

# ----------------------------------------------------------------------------------------------- S3FD layout
# The published sfd_face.pth (syncnet_python detectors/s3fd): VGG16 convs at these ModuleList indices (ReLU and
# pools in between), fc6 dilated 3x3 512->1024 at vgg.31, fc7 1x1 at vgg.33; three L2Norm scales; four extra convs;
# six loc heads (4 outputs) and six conf heads (2 outputs, 4 on conv3_3).
_VGG = {0: (3, 64, 3), 2: (64, 64, 3), 5: (64, 128, 3), 7: (128, 128, 3), 10: (128, 256, 3), 12: (256, 256, 3),
        14: (256, 256, 3), 17: (256, 512, 3), 19: (512, 512, 3), 21: (512, 512, 3), 24: (512, 512, 3),
        26: (512, 512, 3), 28: (512, 512, 3), 31: (512, 1024, 3), 33: (1024, 1024, 1)}
_EXTRAS = {0: (1024, 256, 1), 1: (256, 512, 3), 2: (512, 128, 1), 3: (128, 256, 3)}
_SOURCES = (256, 512, 512, 1024, 512, 256)


def published_keys() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, cin: int, cout: int, k: int) -> None:
        keys[f"{prefix}.weight"] = (cout, cin, k, k)
        keys[f"{prefix}.bias"] = (cout,)

    for i, spec in _VGG.items():
        conv(f"vgg.{i}", *spec)
    keys.update({"L2Norm3_3.weight": (256,), "L2Norm4_3.weight": (512,), "L2Norm5_3.weight": (512,)})
    for i, spec in _EXTRAS.items():
        conv(f"extras.{i}", *spec)
    for i, c in enumerate(_SOURCES):
        conv(f"loc.{i}", c, 4, 3)
    for i, c in enumerate(_SOURCES):
        conv(f"conf.{i}", c, 4 if i == 0 else 2, 3)
    return keys


def test_s3fd_state_dict_matches_published_layout():
    sd = S3FDNet().state_dict()
    want = published_keys()
    assert sorted(sd) == sorted(want)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert S3FDNet().vgg[16].ceil_mode and not S3FDNet().vgg[23].ceil_mode  # the pool after conv3_3 rounds up
    assert S3FDNet().vgg[31].dilation == (6, 6)
    net = S3FDNet().requires_grad_(False)
    assert torch.equal(net.L2Norm3_3.weight, torch.full((256,), 10.0))  # published initial scales 10, 8, 5
    assert torch.equal(net.L2Norm4_3.weight, torch.full((512,), 8.0))
    assert torch.equal(net.L2Norm5_3.weight, torch.full((512,), 5.0))


def test_s3fd_forward_shapes():
    # input 96x128: conv3_3 stride 4 (24x32), conv4_3 8 (12x16), conv5_3 16 (6x8), fc7 32 (3x4), extras 2x2, 1x1
    loc, logits, sizes = random_s3fd()(torch.randn(2, 3, 96, 128))
    assert sizes == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    p = 24 * 32 + 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2 + 1
    assert loc.shape == (2, p, 4) and logits.shape == (2, p, 2)
    assert torch.isfinite(loc).all() and torch.isfinite(logits).all()


def test_l2norm_priors_decode_independent():
    x = torch.randn(2, 5, 3, 4)
    norm = L2Norm(5, 7.0)
    assert torch.allclose(norm(x), 7.0 * F.normalize(x, dim=1, eps=0.0), atol=1e-5)
    # priors: one per cell, row-major, (cx, cy, w, h) normalised by the network input
    maps = [(3, 4), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1)]
    h, w = 12, 16
    expect = []
    for (fh, fw), step, size in zip(maps, (4, 8, 16, 32, 64, 128), (16, 32, 64, 128, 256, 512), strict=True):
        for i, j in itertools.product(range(fh), range(fw)):
            expect.append([(j + 0.5) / (w / step), (i + 0.5) / (h / step), size / w, size / h])
    pri = prior_boxes((h, w), maps)
    assert torch.allclose(pri, torch.tensor(expect, dtype=torch.float32))
    loc = torch.randn(len(expect), 4)
    cx = pri[:, 0] + loc[:, 0] * 0.1 * pri[:, 2]
    bw = pri[:, 2] * torch.exp(loc[:, 2] * 0.2)
    box = decode(loc, pri)
    assert torch.allclose(box[:, 0], cx - bw / 2) and torch.allclose(box[:, 2], cx + bw / 2)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = iw * ih
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) <= thr:
                rest.append(j)
        order = rest
    return keep


def test_s3fd_detection_batched_equals_per_frame_and_published_selection():
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 64, 80)).float()
    det = S3FD(random_s3fd(), scale=1.0, conf_threshold=0.5, frames_per_batch=3)
    batched = det.detect(frames)
    single = [det.detect(frames[i: i + 1])[0] for i in range(4)]
    assert sum(len(d) for d in batched) > 0
    for a, b in zip(batched, single, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    # the published per-frame selection, written as loops: > 0.05, NMS 0.3, best 750, > conf_th, pixels, NMS 0.1
    boxes, scores = det.raw(frames)
    for i in range(4):
        s, b = scores[i].numpy().astype(np.float64), boxes[i].numpy().astype(np.float64)
        m = s > 0.05
        s, b = s[m], b[m]
        k = _greedy_nms(b, s, 0.3)[:750]
        s, b = s[k], b[k]
        m = s > 0.5
        s, b = s[m], b[m] * np.array([80, 64, 80, 64])
        k = _greedy_nms(b, s, 0.1)
        np.testing.assert_allclose(batched[i], np.concatenate([b[k], s[k, None]], 1), rtol=1e-4, atol=1e-3)


def test_s3fd_scaled_input_and_batches():
    torch.manual_seed(1)
    frames = torch.randint(0, 256, (3, 3, 128, 192), dtype=torch.uint8)
    det = S3FD(random_s3fd(), scale=0.25, conf_threshold=0.5)
    boxes, scores = det.raw(frames)
    assert boxes.shape[1] == 8 * 12 + 4 * 6 + 2 * 3 + 1 + 1 + 1  # 32x48 input
    with pytest.raises(ValueError, match="at least 32 px"):
        det.detect(frames[:, :, :96])
    out = det.detect(frames)
    assert len(out) == 3 and all(d.shape[1] == 5 for d in out)
    for d in out:  # decreasing score, above the threshold
        assert np.all(np.diff(d[:, 4]) <= 0) and np.all(d[:, 4] > 0.5)


def test_build_s3fd_loads_and_refuses(tmp_path):
    ref = random_s3fd(seed=3)
    path = tmp_path / "sfd_face.pth"
    torch.save(ref.state_dict(), path)
    net, rand = build_s3fd(path, verify_checksums=False)
    assert not rand
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(ChecksumMismatchError, match="sfd_face.pth"):  # the right keys, not the published bytes
        build_s3fd(path)
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(KeyError, match="not an S3FD state dict"):
        build_s3fd(bad, verify_checksums=False)


# ----------------------------------------------------------------------------------------------- tracking
def _box(cx: float, cy: float, size: float) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2, 0.99]


def test_two_moving_faces_give_two_tracks():
    t = 30
    dets = [np.array([_box(50 + f, 60, 40), _box(200, 80 + 0.5 * f, 36)]) for f in range(t)]
    dets = [d[::-1] if f % 2 else d for f, d in enumerate(dets)]  # face order within a frame does not matter
    res = track_faces(dets, min_track=10, min_face_size=30)
    assert len(res.tracks) == 2 and res.too_short == 0 and res.too_small == 0
    a, b = sorted(res.tracks, key=lambda tr: tr.boxes[0, 0])
    np.testing.assert_array_equal(a.frames, np.arange(t))
    np.testing.assert_allclose(a.boxes, np.array([_box(50 + f, 60, 40)[:4] for f in range(t)]))
    np.testing.assert_allclose(b.boxes, np.array([_box(200, 80 + 0.5 * f, 36)[:4] for f in range(t)]))


def test_gap_interpolated_or_track_ends():
    t = 30
    true = np.array([_box(50 + 2 * f, 60, 40)[:4] for f in range(t)])
    missing = set(range(10, 15))  # 5 missed frames: the next detection is 6 frames after the last
    dets = [np.zeros((0, 5)) if f in missing else np.array([[*true[f], 0.95]]) for f in range(t)]
    res = track_faces(dets, num_failed_det=6, min_track=10, min_face_size=30)
    assert len(res.tracks) == 1
    np.testing.assert_array_equal(res.tracks[0].frames, np.arange(t))
    np.testing.assert_allclose(res.tracks[0].boxes, true)  # linear motion: interpolation restores it
    # a gap longer than num_failed_det ends the track: 10 + 15 detections, each <= min_track 15 -> both dropped
    res = track_faces(dets, num_failed_det=5, min_track=15, min_face_size=30)
    assert res.tracks == [] and res.too_short == 2
    res = track_faces(dets, num_failed_det=5, min_track=12, min_face_size=30)
    assert len(res.tracks) == 1 and res.too_short == 1
    np.testing.assert_array_equal(res.tracks[0].frames, np.arange(15, t))


def test_short_and_small_tracks_dropped():
    t = 40
    dets = []
    for f in range(t):
        faces = [_box(60, 60, 50)]
        if f < 10:  # exactly min_track detections: published keeps only tracks with MORE than min_track
            faces.append(_box(200, 60, 50))
        if 5 <= f < 16:  # min_track + 1 detections
            faces.append(_box(200, 200, 50))
        faces.append(_box(300, 300, 20))  # long but small
        dets.append(np.array(faces))
    res = track_faces(dets, min_track=10, min_face_size=25)
    starts = sorted((int(tr.frames[0]), int(tr.frames[-1])) for tr in res.tracks)
    assert starts == [(0, 39), (5, 15)]
    assert res.too_short == 1 and res.too_small == 1


def test_iou_jump_starts_a_new_track():
    t = 24
    dets = [np.array([_box(50 if f < 12 else 58, 50, 20)]) for f in range(t)]  # IoU of the jump: 240/560 < 0.5
    res = track_faces(dets, min_track=10, min_face_size=10)
    assert [(int(tr.frames[0]), int(tr.frames[-1])) for tr in res.tracks] == [(0, 11), (12, 23)]
    res = track_faces(dets, min_track=10, min_face_size=10, iou_threshold=0.3)
    assert len(res.tracks) == 1


def test_smoothing_is_zero_padded_median():
    rng = np.random.default_rng(0)
    boxes = np.cumsum(rng.normal(size=(20, 4)), 0) + np.array([50, 50, 90, 100])
    xys = smooth_track(boxes, 5)
    raw = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                    np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2], 1)
    padded = np.concatenate([np.zeros((2, 3)), raw, np.zeros((2, 3))])
    expect = np.stack([np.median(padded[i: i + 5], axis=0) for i in range(20)])
    np.testing.assert_allclose(xys, expect)


def test_crop_equals_pad_slice_resize():
    rng = np.random.default_rng(1)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 3, 120, 160), dtype=np.uint8))
    centres = np.array([[80.3, 60.7, 30.2], [10.0, 100.0, 55.5], [150.2, 5.1, 70.9]])  # inside; at edges
    crops = crop_track(frames, centres, 0.4)
    for i, (x, y, s) in enumerate(centres):
        img = frames[i].permute(1, 2, 0).numpy()
        pad = int(s * 1.8)
        big = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        my, mx = y + pad, x + pad
        face = big[int(my - s): int(my + s * 1.8), int(mx - s * 1.4): int(mx + s * 1.4)]
        ref = cv2.resize(face, (224, 224)).astype(np.float64)
        diff = np.abs(crops[i].permute(1, 2, 0).numpy() - ref)
        assert diff.max() <= 1.0 and diff.mean() < 0.2  # cv2's fixed-point bilinear weights: ±1 grey level


# ----------------------------------------------------------------------------------------------- the metric
class StubDetector:
    """One face per frame, drifting right: ``(T,3,H,W)`` -> list of (1, 5)."""

    def __init__(self, size: float = 30.0):
        self.size, self.calls = size, 0

    def __call__(self, frames: torch.Tensor) -> list[np.ndarray]:
        self.calls += 1
        assert frames.dtype == torch.uint8 and frames.shape[1] == 3
        return [np.array([_box(24 + 0.5 * f, 24, self.size)]) for f in range(frames.shape[0])]


def _clip(b: int, t: int, hw: int = 48):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(b, t, 3, hw, hw, generator=g) * 2 - 1
    audio = torch.randn(b, t * 640, generator=g) * 0.1
    return video, audio


def test_metric_end_to_end_stub_detector():
    stub = StubDetector()
    m = LipSyncError(allow_random_weights=True, detector=stub, min_track=8, min_face_size=20, vshift=1)
    assert m.names() == ["lse_t8_f20_v1_c_customdet_randinit", "lse_t8_f20_v1_d_customdet_randinit",
                         "lse_t8_f20_v1_num_tracks"]
    video, audio = _clip(2, 12)
    m.update(video, audio)
    out = m.results()
    assert set(out) == set(m.names()) and all(math.isfinite(v) for v in out.values())
    assert out["lse_t8_f20_v1_num_tracks"] == 2 and out["lse_t8_f20_v1_d_customdet_randinit"] > 0
    assert out["lse_t8_f20_v1_c_customdet_randinit"] >= 0  # median - min
    assert len(m.per_clip()["lse_t8_f20_v1_c_customdet_randinit"]) == 2
    card = m.protocol()
    assert card["tracks"] == 2 and card["detections"] == 24 and not card["standard_settings"]
    assert card["settings"]["min_track"] == 8 and card["files"]["syncnet"]["weights_status"] == "random-init"


def test_metric_logs_nothing_when_protocol_not_met():
    # published settings: 1- and 12-frame clips cannot hold a track of > 100 frames; the detector is never run
    stub = StubDetector()
    suite = MetricSuite(allow_random_weights=True, psnr=False, ssim=False, lpips=False, fvd=False, sync=False,
                        lse={"detector": stub})
    assert suite.names == ["lse_c_customdet_randinit", "lse_d_customdet_randinit", "lse_num_tracks"]
    with pytest.warns(UserWarning, match="min_track"):
        for t in (1, 12):
            video, audio = _clip(1, t)
            suite.update(video, None, audio=audio)
    assert suite.compute() == {} and stub.calls == 0
    assert suite.last_card["lse"]["short_clips"] == 2 and suite.last_card["lse"]["tracks"] == 0
    # long enough, but the faces are too small: nothing logged either
    small = LipSyncError(allow_random_weights=True, detector=StubDetector(size=10), min_track=8, min_face_size=20,
                         vshift=1)
    small.update(*_clip(1, 12))
    assert small.results() == {} and small.protocol()["small_tracks"] == 1


def test_metric_with_s3fd_network_runs():
    # the real detection path on random weights (names say _randinit; tracks may or may not form)
    m = LipSyncError(allow_random_weights=True, min_track=8, min_face_size=1, vshift=1, facedet_scale=1.0,
                     conf_threshold=0.5, frames_per_batch=4)
    assert m.names()[0] == "lse_t8_f1_v1_s1_ct0.5_c_randinit"
    frames_per_forward: list[int] = []
    net = m.__dict__["_detector"].__self__.net
    hook = net.register_forward_hook(lambda mod, args, out: frames_per_forward.append(int(args[0].shape[0])))
    m.update(*_clip(1, 10, hw=64))
    hook.remove()
    assert frames_per_forward == [4, 4, 2]  # detection batched over the clip's frames, frames_per_batch at a time
    card = m.protocol()
    assert card["clips"] == 1 and card["short_clips"] == 0 and card["detections"] >= 0
    assert all(math.isfinite(v) for v in m.results().values())


def test_settings_validated():
    with pytest.raises(ValueError, match="offset search"):
        LipSyncError(allow_random_weights=True, detector=StubDetector(), min_track=8, vshift=15)
    with pytest.raises(ValueError, match="odd"):
        LipSyncError(allow_random_weights=True, detector=StubDetector(), smooth_kernel=4)


def test_missing_s3fd_file_is_one_clear_error_and_random_weights_cover_it(tmp_path):
    """metrics=default has LSE on: without sfd_face.pth the suite is not built, and the error names the file, the
    config key and where it is published; allow_random_weights=true covers it as for the other feature networks."""
    from hydra import compose, initialize_config_dir

    from mmgt.metrics import build_suite
    from mmgt.utils.paths import CONF_DIR

    torch.save(SyncNet().state_dict(), tmp_path / "syncnet_v2.model")  # published keys: only S3FD is missing
    overrides = ["metrics=default", f"paths.weights_dir={tmp_path}", "metrics.verify_checksums=false",
                 "metrics.lpips.enabled=false", "metrics.fvd.enabled=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        rand = compose("train", overrides=[*overrides, "metrics.allow_random_weights=true"])
    assert cfg.metrics.lse.enabled and cfg.metrics.lse.s3fd == str(tmp_path / "sfd_face.pth")
    with pytest.raises(MissingMetricWeightsError) as err:
        build_suite(cfg.metrics, MetricSuite)
    msg = str(err.value)
    for part in (str(tmp_path / "sfd_face.pth"), "metrics.weights.s3fd", "syncnet_python download_model.sh",
                 "robots.ox.ac.uk", "d54a87c2b7543b64729c9a25eafd188da15fd3f6e02f0ecec76ae1b30d86c491",
                 "metrics.allow_random_weights=true"):
        assert part in msg, part
    suite = build_suite(rand.metrics, MetricSuite)
    assert {"lse_c_randinit", "lse_d_randinit", "lse_num_tracks"} <= set(suite.names)
    assert suite.metrics["lse"].files["s3fd"]["weights_status"] == "random-init"
    assert suite.metrics["lse"].files["syncnet"]["weights_status"] == "unverified"  # the file was there
