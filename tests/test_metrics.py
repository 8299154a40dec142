"""Metrics suite (issue 5): each metric against an independent computation, DDP invariance, weight files, CLI.

Feature networks are random-init (no published weights offline) and FVD runs at a non-standard 16 px to stay
cheap; the names say so (``fvd_videogpt_r16_8f_randinit``). The FVD protocols are tested in test_fvd_protocols.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mmgt.metrics import (
    LPIPS,
    PSNR,
    SSIM,
    ChecksumMismatchError,
    FrechetVideoDistance,
    InceptionI3d,
    MetricSuite,
    MissingMetricWeightsError,
    SyncNet,
    build_i3d,
    build_syncnet,
    frechet_distance,
    frechet_distance_from_features,
    mfcc,
    sync_scores,
)
from mmgt.metrics.syncnet import crop_faces, face_track

ROOT = Path(__file__).resolve().parents[1]
# non-standard, cheap FVD (named fvd_videogpt_r16_8f_*), FID at 96² (fid_r96_*; FID is off unless asked for) and
# the sync monitor over ±1 offset (clips of >= 7 frames; named kpsync_v1_*)
FAST = {"fvd": {"resize": 16, "clip_frames": 8}, "fid": {"resize": 96}, "sync": {"vshift": 1}}


def _videos(seed: int, b: int = 2, t: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(b, t, 3, size, size, generator=g) * 2 - 1
    gen = (ref + 0.3 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    return gen, ref


# ---------------------------------------------------------------- per-frame metrics
def test_psnr_ssim_match_scikit_image_per_frame_then_clip():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gen, ref = _videos(0, b=3, t=3)
    psnr, ssim = PSNR(), SSIM()
    psnr.update(gen[:1], ref[:1])  # batches of different sizes: every clip still weighs the same
    psnr.update(gen[1:], ref[1:])
    ssim.update(gen, ref)
    g01 = ((gen + 1) / 2).permute(0, 1, 3, 4, 2).double().numpy()
    r01 = ((ref + 1) / 2).permute(0, 1, 3, 4, 2).double().numpy()
    exp_p = np.mean([np.mean([peak_signal_noise_ratio(r01[b, t], g01[b, t], data_range=1.0) for t in range(3)])
                     for b in range(3)])
    exp_s = np.mean([np.mean([structural_similarity(r01[b, t], g01[b, t], data_range=1.0, channel_axis=-1,
                                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                              for t in range(3)]) for b in range(3)])
    assert float(psnr.compute()) == pytest.approx(exp_p, rel=1e-5)
    assert float(ssim.compute()) == pytest.approx(exp_s, rel=1e-5)
    # uint8 videos are [0, 255]: the same frames quantised give (almost) the same PSNR
    q = lambda v: ((v + 1) * 127.5).round().to(torch.uint8)  # noqa: E731
    p8 = PSNR()
    p8.update(q(gen), q(ref))
    assert float(p8.compute()) == pytest.approx(exp_p, abs=0.05)


def test_separable_valid_ssim_equals_torchmetrics_map_without_border():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(4)
    for h, w in ((11, 11), (23, 37), (64, 48)):  # 64x48: 2**16 // (3*64*48) = 7 frames a chunk, 9 take two
        a = torch.rand(9, 3, h, w, generator=g)
        b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
        _, full = tm_ssim(a, b, data_range=1.0, reduction="none", return_full_image=True)
        expected = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
        torch.testing.assert_close(SSIM()._frames(a, b), expected, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="11x11"):
        SSIM()._frames(a[..., :10, :], b[..., :10, :])


def test_lpips_matches_lpips_package_with_same_backbone_file(tmp_path, monkeypatch):
    import lpips
    import torchvision

    torch.manual_seed(3)
    sd = torchvision.models.alexnet().state_dict()
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    weight_file = hub / "alexnet-owt-7be5be79.pth"
    torch.save(sd, weight_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the lpips package finds "its" AlexNet in the hub cache
    reference_net = lpips.LPIPS(net="alex", verbose=False).eval()

    gen, ref = _videos(1, b=2, t=3)
    with torch.no_grad():
        per_frame = reference_net(gen.flatten(0, 1), ref.flatten(0, 1)).reshape(2, 3)
    metric = LPIPS(weight_file, verify_checksums=False)
    metric.update(gen, ref)
    assert metric.name_suffix == ""
    assert float(metric.compute()) == pytest.approx(float(per_frame.mean(1).mean()), rel=1e-5)
    with pytest.raises(ChecksumMismatchError, match="7be5be79"):  # a random file is not the published one
        LPIPS(weight_file, verify_checksums=True)


# ---------------------------------------------------------------- Fréchet distance
def _scipy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n1,n2,d", [(200, 150, 8), (40, 30, 16)])
def test_frechet_distance_matches_scipy(n1, n2, d):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d))
    b = rng.standard_normal((n2, d)) @ rng.standard_normal((d, d)) + 0.5
    expected = _scipy_frechet(a, b)
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance_from_features(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == \
        pytest.approx(expected, rel=1e-4)
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_non_finite_features_is_nan_with_a_warning():
    """A diverged model's NaN features gave an obscure LinAlgError; now the metric says so and returns nan."""
    from mmgt.metrics.gesture import FrechetGestureDistance

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
    a[3, 1] = np.nan
    with pytest.warns(UserWarning, match="first feature set holds NaN"):
        assert math.isnan(frechet_distance_from_features(a, b))
    poses = torch.randn(4, 16, 134, 3)
    fgd = FrechetGestureDistance()
    fgd.update(poses.clone().fill_(float("nan")), poses)
    with pytest.warns(UserWarning, match="NaN"):
        assert math.isnan(float(fgd.compute()))


# ---------------------------------------------------------------- Sync-C / Sync-D
def _direct_sync(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int) -> tuple[int, float, float]:
    """The published calc_pdist + evaluate, loop for loop."""
    win = vshift * 2 + 1
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    dists = [torch.nn.functional.pairwise_distance(video_emb[[i], :].repeat(win, 1), padded[i:i + win, :])
             for i in range(len(video_emb))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return vshift - int(minidx), float(torch.median(mdist) - minval), float(minval)


@pytest.mark.parametrize("n,vshift", [(40, 15), (7, 15), (20, 3)])
def test_sync_offset_search_matches_direct_implementation(n, vshift):
    g = torch.Generator().manual_seed(n)
    v, a = torch.randn(n, 32, generator=g), torch.randn(n, 32, generator=g)
    got, exp = sync_scores(v, a, vshift), _direct_sync(v, a, vshift)
    assert got[0] == exp[0]
    assert got[1] == pytest.approx(exp[1], rel=1e-5, abs=1e-6)
    assert got[2] == pytest.approx(exp[2], rel=1e-5)


def test_sync_finds_a_planted_offset():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(40, 16, generator=g)
    a = torch.randn(40, 16, generator=g)
    a[3:] = v[:-3] + 0.01 * torch.randn(37, 16, generator=g)  # audio embedding i+3 matches video window i
    offset, conf, dist = sync_scores(v, a, 15)
    assert offset == -3 and conf > 1.0 and dist < 2.0


def test_mfcc_matches_python_speech_features():
    # reference values: python_speech_features 0.6 `mfcc(int16 signal, 16000)` rows 0, 10, 40 (computed once)
    t = np.arange(8000) / 16000
    x = ((0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t * (1 + t))) * 32768).astype(np.int16)
    expected = np.array([
        [20.8296, 11.3428, -19.3153, -13.401, 19.7215, 26.8002, -10.6357, -48.0493, -40.3983, -9.3256, -2.689,
         -24.891, -36.1636],
        [21.1625, 13.0383, -25.8815, -8.3988, 26.9632, 10.3415, -37.2872, -43.2189, -8.3597, -2.0911, -33.6915,
         -45.1633, -16.6117],
        [21.8911, 1.6074, -21.3033, 30.9763, 22.4876, -33.1194, -10.7535, 17.7866, -29.2213, -43.3031, 0.1827,
         -7.8485, -36.3292]])
    got = mfcc(x)
    assert got.shape == (13, 49)  # 100 Hz
    np.testing.assert_allclose(got[:, [0, 10, 40]].T, expected, atol=2e-3)


def test_mouth_crop_follows_face_keypoints():
    from mmgt.pose.layout import FACE, NUM_KEYPOINTS

    frames = torch.zeros(3, 3, 128, 128)
    frames[:, 1, 60:100, 30:70] = 255.0  # a green "face" at x 30..70, y 60..100
    kp = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    xs, ys = np.meshgrid(np.linspace(32, 68, 10), np.linspace(62, 98, 10))
    kp[:, list(FACE), 0] = xs.ravel()[: len(FACE)]
    kp[:, list(FACE), 1] = ys.ravel()[: len(FACE)]
    kp[:, list(FACE), 2] = 1.0
    crops = crop_faces(frames, face_track(kp))
    assert crops.shape == (3, 3, 224, 224)
    assert crops[:, 1, 40:100, 70:150].mean() > 250  # the face fills the upper-middle of the crop
    assert crops[:, 1, 200:, :20].max() < 120  # below-left: background / grey padding


# ---------------------------------------------------------------- the suite
def test_identical_videos_give_ideal_values_and_randinit_names():
    suite = MetricSuite(allow_random_weights=True, **FAST)
    fvd_name = "fvd_videogpt_r16_8f_randinit"
    assert suite.names == ["psnr", "ssim", "lpips_randinit", fvd_name, f"{fvd_name}_num_clips",
                           "kpsync_v1_conf_randinit", "kpsync_v1_dist_randinit", "kpsync_v1_offset_randinit",
                           "kpsync_v1_num_clips", "fid_r96_randinit", "fid_num_frames"]
    _, ref = _videos(2, b=2, t=9)
    audio = torch.randn(2, 9 * 640) * 0.1
    suite.update(ref, ref.clone(), audio=audio)
    out = suite.compute()
    assert out["psnr"] == 100.0  # the cap
    assert out["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert out["lpips_randinit"] == pytest.approx(0.0, abs=1e-6)
    assert out[fvd_name] == pytest.approx(0.0, abs=1e-6)
    assert out[f"{fvd_name}_num_clips"] == 2  # one 8-frame clip per 9-frame video, the 9th frame ignored
    assert out["fid_r96_randinit"] == pytest.approx(0.0, abs=1e-6) and out["fid_num_frames"] == 18
    assert np.isfinite(out["kpsync_v1_conf_randinit"]) and out["kpsync_v1_dist_randinit"] > 0
    assert out["kpsync_v1_num_clips"] == 2
    assert not any(k.startswith(("sync_", "lse")) for k in out)  # the keypoint-crop monitor is not LSE-C/D
    card = suite.last_card
    assert card["fvd"]["metric"] == fvd_name and card["fvd"]["num_clips"] == 2
    assert card["fvd"]["weights_status"] == "random-init" and card["sync"]["min_frames"] == 7
    # and the random-init FVD is informative: different videos are far apart
    fvd = suite.metrics["fvd"]
    fvd.reset()
    fvd.update(ref, ref * 0.2 - 0.7)
    assert float(fvd.compute()) > 0.1
    fid = suite.metrics["fid"]
    fid.reset()
    fid.update(ref, ref * 0.2 - 0.7)
    assert float(fid.compute()) > 0.1
    assert "fid" not in MetricSuite(allow_random_weights=True, fvd=False, lpips=False, sync=False).metrics


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str, gen, ref, audio) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on a 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    suite = MetricSuite(allow_random_weights=True, **FAST)
    shard = [slice(0, 3), slice(3, 4)][rank]  # uneven shards
    suite.update(gen[shard], ref[shard], audio=audio[shard])
    out = suite.compute()
    if rank == 0:
        Path(out_file).write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.mark.slow
def test_same_values_with_one_and_two_ddp_ranks(tmp_path):
    gen, ref = _videos(5, b=4, t=9)
    audio = torch.randn(4, 9 * 640) * 0.1
    single = MetricSuite(allow_random_weights=True, **FAST)
    single.update(gen[:2], ref[:2], audio=audio[:2])
    single.update(gen[2:], ref[2:], audio=audio[2:])
    expected = single.compute()
    out_file = tmp_path / "ddp.json"
    # fork: the ranks inherit the imported modules (a spawned rank would pay ~10 s of imports); each rank uses one
    # thread, as DataLoader workers do after a fork
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "store"), str(out_file), gen, ref, audio), nprocs=2,
                       join=True, start_method="fork")
    got = json.loads(out_file.read_text())
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        # float32 network outputs may differ in the last bits with another thread count / batch split
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-9), k


# ---------------------------------------------------------------- weight files
def _same_function(fast: torch.Tensor, ref: torch.Tensor) -> None:
    """Outputs of a BatchNorm-folded copy vs the published layout, relative to the output's scale: float32 summation
    order differs by machine (seen: 2.6e-8 at scale 0.07, over allclose's default atol near zero), while a wrong
    fold (eps, bias or a channel order lost) is off by > 1e-2 of the scale."""
    scale = float(ref.abs().max())
    assert scale > 1e-3
    assert float((fast - ref).abs().max()) <= 1e-5 * scale


def test_published_key_layouts_load_from_files(tmp_path):
    torch.manual_seed(0)
    i3d = InceptionI3d(400).eval()
    sd = {k: v for k, v in i3d.state_dict().items() if not k.endswith("num_batches_tracked")}  # as TF-converted
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b1b.bn.running_var", "Mixed_5c.b3b.conv3d.weight",
                "logits.conv3d.bias"):
        assert key in sd
    assert sd["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    torch.save(sd, tmp_path / "i3d_pretrained_400.pt")
    loaded, randinit = build_i3d(tmp_path, verify_checksums=False)  # a folder holding the published name works
    assert not randinit
    x = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        _same_function(loaded(x), i3d(x))
    with pytest.raises(ChecksumMismatchError, match="a867b87a"):
        build_i3d(tmp_path / "i3d_pretrained_400.pt")

    net = SyncNet().eval()
    sd = net.state_dict()
    assert sd["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7) and sd["netfcaud.3.weight"].shape == (1024, 512)
    assert sd["netcnnaud.0.weight"].shape == (64, 1, 3, 3)
    torch.save(sd, tmp_path / "syncnet_v2.model")
    loaded, randinit = build_syncnet(tmp_path / "syncnet_v2.model", verify_checksums=False)
    assert not randinit
    aud = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        _same_function(loaded.forward_aud(aud), net.forward_aud(aud))


def test_fid_inception_loads_the_published_layout_and_matches_torchmetrics_fid(tmp_path):
    import torchvision
    from torchmetrics.image.fid import FrechetInceptionDistance as TorchmetricsFID

    from mmgt.metrics import FrechetInceptionDistance, build_fid_inception
    from mmgt.metrics.i3d import he_init

    # pytorch-fid's file is a torchvision Inception3(num_classes=1008) state dict: build one with random weights
    # (aux head included, as torchvision saves it) under the published name
    torch.manual_seed(0)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, num_classes=1008, init_weights=False)
    he_init(tv).eval()  # torchvision's own init blows activations up to ~1e11 through the 20 layers
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong key mapping would show
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    _, randinit = build_fid_inception(tmp_path, verify_checksums=False)  # folder holding the published name;
    assert not randinit  # loaded strictly, so every key of the published layout matched
    with pytest.raises(ChecksumMismatchError, match="6726825d"):
        build_fid_inception(tmp_path)
    wrong = {k.replace("Mixed_7c", "Mixed_7x"): v for k, v in tv.state_dict().items()}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match="not an FID Inception-v3 state dict"):
        build_fid_inception(tmp_path / "wrong.pth", verify_checksums=False)

    # the metric vs torchmetrics' own FID (torch-fidelity's network and loader, its sum-state statistics) on the
    # same frames and the same weight file: an independent path to the same number
    gen, ref = _videos(11, b=2, t=3, size=48)
    fid = FrechetInceptionDistance(tmp_path / "pt_inception-2015-12-05-6726825d.pth", verify_checksums=False)
    assert fid.name_suffix == ""
    fid.update(gen, ref)
    value = float(fid.compute())
    # torchmetrics (unfolded BatchNorm) loads the same weights by name: the torchvision layout without AuxLogits;
    # torch-fidelity unpickles the file, which is fine for our own file in a test
    tm_file = tmp_path / "tm.pth"
    torch.save({k: v for k, v in tv.state_dict().items() if not k.startswith("AuxLogits.")}, tm_file)
    tm = TorchmetricsFID(feature=2048, feature_extractor_weights_path=str(tm_file), antialias=False)

    def uint8(v: torch.Tensor) -> torch.Tensor:
        return ((v.flatten(0, 1) + 1) / 2 * 255).round().to(torch.uint8)

    tm.update(uint8(ref), real=True)
    tm.update(uint8(gen), real=False)
    assert fid.num_frames == 6
    assert 1e-3 < value < 1e3 and value == pytest.approx(float(tm.compute()), rel=1e-5)


def test_syncnet_sliding_lip_trunk_equals_per_window_forward():
    net = build_syncnet(None, allow_random_weights=True)[0]
    clip = torch.rand(3, 7, 224, 224) * 255
    windows = torch.stack([clip[:, i:i + 5] for i in range(3)])
    with torch.no_grad():
        sliding, per_window = net.forward_lip_sliding(clip), net.forward_lip(windows)
    # float32 sums in another order (memory format, batch): agree to 1e-5 of the embedding scale
    torch.testing.assert_close(sliding, per_window, rtol=1e-4, atol=1e-5 * float(per_window.abs().max()))


def test_torchscript_i3d_file_is_accepted(tmp_path):
    class Detector(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                    return_features: bool = False) -> torch.Tensor:
            assert not rescale and not resize and return_features
            return x.mean(dim=(2, 3, 4)).repeat(1, 134)[:, :400]

    torch.jit.script(Detector()).save(str(tmp_path / "i3d_torchscript.pt"))
    fvd = FrechetVideoDistance(tmp_path / "i3d_torchscript.pt", verify_checksums=False, protocol="styleganv")
    assert fvd.name_suffix == "_styleganv" and fvd.protocol()["bn_eps"] == "built into the TorchScript file"
    assert fvd.protocol()["weights_status"] == "unverified"
    assert FrechetVideoDistance(tmp_path, verify_checksums=False).name_suffix == "_videogpt_torchscript"
    gen, ref = _videos(7, b=3, t=16)
    fvd.update(gen, ref)
    assert fvd.compute() >= 0 and fvd.num_clips == 3


@pytest.mark.slow
def test_reference_cache_gives_identical_values_and_skips_the_reference_pass():
    from mmgt.metrics.cache import FeatureCache

    gen, ref = _videos(8, b=3, t=16)
    opts = {"psnr": False, "ssim": False, "sync": False}  # (FAST's sync entry is overridden: off)
    cached = MetricSuite(allow_random_weights=True, fvd={**FAST["fvd"], "reference_cache_mb": 8},
                         fid={**FAST["fid"], "reference_cache_mb": 8},
                         lpips={"reference_cache_mb": 8, "frames_per_batch": 4}, **opts)
    plain = MetricSuite(allow_random_weights=True, **{**FAST, **opts})
    calls = {"i3d": 0, "alexnet": 0}
    fvd, lp = cached.metrics["fvd"], cached.metrics["lpips"]
    fvd.__dict__["_net"].register_forward_hook(lambda *_: calls.__setitem__("i3d", calls["i3d"] + 1))
    lp.__dict__["_net"].net.register_forward_hook(lambda *_: calls.__setitem__("alexnet", calls["alexnet"] + 1))

    plain.update(gen, ref)
    cached.update(gen, ref)
    first = cached.compute()
    first_calls = dict(calls)
    for key, value in plain.compute().items():  # the cache path computes the same numbers
        assert first[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # second evaluation of the same references: only the generated side goes through the networks
    cached.reset()
    cached.update(gen, ref)
    assert cached.compute() == first  # bit-identical
    assert calls["i3d"] - first_calls["i3d"] == 1  # one batch of 6 generated clips (clips_per_batch 8)
    assert first_calls["i3d"] == 1 + 3  # first time also one call per reference video
    assert calls["alexnet"] - first_calls["alexnet"] == 3 * 4  # 3 videos x 16 frames / 4 per batch, gen only
    assert fvd.cache.hits == 3 and lp.cache.hits == 3 and len(fvd.cache) == 3
    assert cached.metrics["fid"].cache.hits == 3  # FID shares FVD's reference path (FrechetMetric)
    # different references miss (a changed pixel changes the key)
    ref2 = ref.clone()
    ref2[0, 0, 0, 0, 0] += 0.5
    cached.update(gen, ref2)
    assert fvd.cache.misses == 3 + 1 and fvd.cache.hits == 3 + 2

    # bounded: least recently used entries go first; an entry over the whole budget is not kept
    cache = FeatureCache(max_bytes=3 * 400)
    for i in range(4):
        cache.get_or_compute(bytes([i]), lambda: torch.zeros(100))
    assert len(cache) == 3 and cache.nbytes == 1200 and bytes([0]) not in cache._items
    cache.get_or_compute(b"big", lambda: torch.zeros(1000))
    assert len(cache) == 3 and b"big" not in cache._items
    assert not FeatureCache(0).enabled


def test_missing_weight_file_error_names_file_key_and_source(tmp_path):
    with pytest.raises(MissingMetricWeightsError) as err:
        MetricSuite({"i3d": tmp_path / "nope.pt"}, psnr=False, ssim=False, lpips=False, sync=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for part in ("nope.pt", "i3d_pretrained_400.pt", "metrics.weights.i3d", "songweige/TATS",
                 "allow_random_weights"):
        assert part in msg
    with pytest.raises(MissingMetricWeightsError, match="metrics.weights.syncnet"):
        MetricSuite({}, psnr=False, ssim=False, lpips=False, fvd=False)
    with pytest.raises(MissingMetricWeightsError, match="pt_inception-2015-12-05-6726825d.pth.*pytorch-fid"):
        MetricSuite({}, psnr=False, ssim=False, lpips=False, fvd=False, sync=False, fid=True)


# ---------------------------------------------------------------- CLI
def _write_pair_folders(root: Path) -> None:
    from mmgt.data.video_io import write_video

    rng = np.random.default_rng(0)
    (root / "gen").mkdir(parents=True)
    (root / "ref").mkdir()
    for i in range(2):
        ref = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
        audio = (rng.standard_normal(16 * 640) * 0.1).astype(np.float32)
        write_video(root / "ref" / f"clip{i}.mp4", ref, audio=audio)
        gen = np.clip(ref.astype(int) + rng.integers(-20, 20, ref.shape), 0, 255).astype(np.uint8)
        if i == 1:  # shorter and larger: truncated and resized, with a note
            gen = np.repeat(np.repeat(gen[:14], 2, axis=1), 2, axis=2)
        write_video(root / "gen" / f"clip{i}.mp4", gen)  # no audio track: the reference's is used
    write_video(root / "gen" / "extra.mp4", ref)
    kp = np.zeros((16, 134, 3), np.float32)  # face keypoints for clip0 locate the Sync-C/D crop
    kp[:, 24:92] = (16.0, 16.0, 1.0)
    kp[:, 24:92, :2] += rng.uniform(-6, 6, (16, 68, 2))
    np.save(root / "ref" / "clip0.npy", kp)


@pytest.mark.slow
def test_evaluate_cli_over_two_folders(tmp_path):
    from omegaconf import OmegaConf

    from mmgt.evaluate import evaluate_folders

    _write_pair_folders(tmp_path)
    # the unmatched "extra.mp4" fails the run before any metric is built
    cfg = OmegaConf.create({"generated": str(tmp_path / "gen"), "reference": str(tmp_path / "ref"),
                            "allow_missing": False})
    assert evaluate_folders(cfg) == 1

    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMGT_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "mmgt.evaluate", f"generated={tmp_path / 'gen'}", f"reference={tmp_path / 'ref'}",
         "allow_missing=true", "metrics.allow_random_weights=true", "metrics.fvd.resize=16",
         "metrics.fvd.clip_frames=8", "metrics.fid.enabled=true", "metrics.fid.resize=96", "metrics.sync.vshift=3",
         f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["pairs"] == ["clip0", "clip1"] and report["only_generated"] == ["extra"]
    notes = " ".join(report["notes"])
    assert "truncated to 14" in notes and "resized" in notes
    m = report["metrics"]
    assert {"psnr", "ssim", "lpips_randinit", "fvd_videogpt_r16_8f_randinit", "kpsync_v3_conf_randinit",
            "kpsync_v3_dist_randinit"} <= set(m)
    card = report["protocol"]  # the protocol card beside the numbers
    assert card["fvd"]["metric"] == "fvd_videogpt_r16_8f_randinit"
    assert card["fvd"]["num_clips"] == 2 + 1  # 16 and 14 frames: 8-frame clips
    assert card["lpips"]["num_frames"] == 16 + 14 and card["sync"]["num_clips"] == 2
    assert 20 < m["psnr"] < 40 and 0 < m["ssim"] < 1
    assert m["fid_r96_randinit"] > 0 and m["fid_num_frames"] == 16 + 14  # optional FID from the config: every frame
    assert (out / "metrics.csv").read_text().startswith("metric,value\npsnr,")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    import csv

    per_video = list(csv.DictReader((out / "per_video.csv").read_text().splitlines()))
    assert [r["video"] for r in per_video] == ["clip0", "clip1"] and per_video[1]["frames"] == "14"
    assert np.mean([float(r["psnr"]) for r in per_video]) == pytest.approx(m["psnr"], rel=1e-6)
    assert np.mean([float(r["kpsync_v3_dist_randinit"]) for r in per_video]) == pytest.approx(
        m["kpsync_v3_dist_randinit"], rel=1e-5)
    assert "psnr" in proc.stdout and "copy reference" in proc.stdout and "random-init" in proc.stdout
    # the baselines, scored by the same suite against the same ground truth
    from skimage.metrics import peak_signal_noise_ratio

    from mmgt.data.video_io import read_video

    base = report["baselines"]
    assert set(base) == {"copy_reference", "ground_truth"} and set(base["copy_reference"]) == set(m)
    assert base["ground_truth"]["psnr"] == pytest.approx(100.0)  # identical frames: the protocol's cap
    per_clip = []
    for name, t in (("clip0", 16), ("clip1", 14)):  # clip1 truncated to the generated 14 frames
        ref = read_video(tmp_path / "ref" / f"{name}.mp4")[:t].astype(np.float64) / 255
        per_clip.append(np.mean([min(100.0, peak_signal_noise_ratio(f, ref[0], data_range=1.0)) for f in ref]))
    assert base["copy_reference"]["psnr"] == pytest.approx(float(np.mean(per_clip)), rel=1e-4)


def test_batchnorm_folding_keeps_the_function() -> None:
    """The inference copies (BatchNorm folded into convs/linears, channels-last) compute what the published
    layout computes, with non-trivial running statistics."""
    import copy

    from mmgt.metrics import i3d, syncnet

    torch.manual_seed(0)
    nets = {"i3d": i3d.InceptionI3d(), "sync": syncnet.SyncNet()}
    for net in nets.values():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0, 0.1)
        net.eval()
    fast_i3d, fast_sync = i3d._fast(copy.deepcopy(nets["i3d"])), syncnet._fast(copy.deepcopy(nets["sync"]))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for net in (fast_i3d, fast_sync) for m in net.modules())
    x, clip, aud = torch.randn(1, 3, 16, 64, 64), torch.randn(3, 7, 224, 224), torch.randn(1, 1, 13, 20)
    with torch.no_grad():
        pairs = [(nets["i3d"](x), fast_i3d(x.contiguous(memory_format=torch.channels_last_3d))),
                 (nets["sync"].forward_lip_sliding(clip), fast_sync.forward_lip_sliding(clip)),
                 (nets["sync"].forward_aud(aud), fast_sync.forward_aud(aud))]
    for ref, fast in pairs:
        scale = ref.abs().max()
        assert scale > 1e-3
        # relative to the output's scale: float32 summation order differs by machine (seen: 2e-5 absolute at
        # scale ~10), while a wrong fold (eps, bias or a channel order lost) is off by > 1e-2 of the scale
        assert (fast - ref).abs().max() <= 1e-5 * scale, float((fast - ref).abs().max() / scale)
