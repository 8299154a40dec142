"""Throughput of the batched metric suite vs a straightforward per-frame loop on the same videos.

    python experiments/bench/metrics.py [--videos 2 --frames 40 --size 128 --device cpu --weights-dir weights/
                                         --repeats 2 --threads N --reference-cache-mb 256 --no-flops --fid --no-lse]

The loop is what one writes first: scikit-image PSNR/SSIM per frame, LPIPS one frame at a time, I3D one clip at a
time, SyncNet one 5-frame window at a time and the published Python offset loop, and for LSE-C/D S3FD one frame per
forward (as syncnet_python's ``run_pipeline`` calls it) before the same tracking, crops and per-window SyncNet. Both
paths use the same networks (random-init unless ``--weights-dir`` holds the published files) at the standard
settings (FVD's ``videogpt`` protocol: I3D 224², every non-overlapping 16-frame clip; the SyncNet monitor: 224²
crops, offsets ±15, which needs clips of at least 35 frames — hence 40 frames by default; LSE-C/D: S3FD at scale
0.25 and the published selection, ``min_track`` one less than the clip length instead of 100 so that 40-frame clips
hold a track, hence ``lse_t39_*``). S3FD runs in the published layout with random weights, which find no real faces: its
detections are replaced by one centred face box per frame after it ran (``_customdet``), so tracking, crops and
SyncNet run on every frame as for a video with one speaker; the S3FD forward passes of both paths are counted and
printed (the suite's are batched over frames). Prints frames/s of each and the ratio (best of ``--repeats``
alternating runs: the machine may be shared), per part the network FLOPs (``torch.utils.flop_counter``), the
achieved GFLOP/s and its share of this machine's float32 matmul peak (a 2048² matmul, 8192² on a GPU, measured in
the same run), and an upper bound on the ratio: the loop's time over the suite's FLOPs at that peak. The suite runs
as ``metrics=default`` does (no reference cache, no FID; ``--fid`` adds FID to both paths). With
``--reference-cache-mb > 0`` a second suite with the reference-feature cache is timed on a first evaluation (misses:
hashing + networks) and a second one of the same references (hits), labelled as such: on a CPU the hits pay, on a
fast GPU hashing the references costs more than the networks.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

PARTS = ("psnr+ssim+lpips", "fvd", "sync", "lse", "fid")


class Parts:
    """Seconds (and optionally network FLOPs) spent per part of an evaluation."""

    def __init__(self, device: torch.device, count_flops: bool = False):
        self.device, self.count_flops = device, count_flops
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False) if self.count_flops else nullcontext()
        t = time.perf_counter()
        with counter:
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        if self.count_flops:
            self.flops[name] = self.flops.get(name, 0.0) + counter.get_total_flops()


class CentredFaceS3FD:
    """LSE's detector for the bench: S3FD (``frames_per_batch`` 1: one frame per forward) on every frame, then one
    centred face box per frame in place of its detections (random weights find no real faces); counts the network's
    forward passes."""

    def __init__(self, frames_per_batch: int = 32, scale: float = 0.25) -> None:
        from mmgt.metrics.s3fd import S3FD, random_s3fd

        net = random_s3fd()
        self.forwards, self.frames, self.raw_detections = 0, 0, 0

        def count(module: torch.nn.Module, args: tuple, output: object) -> None:
            self.forwards += 1
            self.frames += int(args[0].shape[0])

        net.register_forward_hook(count)
        self.s3fd = S3FD(net, scale=scale, conf_threshold=0.9, frames_per_batch=frames_per_batch)

    def __call__(self, frames: torch.Tensor) -> list[np.ndarray]:
        self.raw_detections += sum(len(d) for d in self.s3fd.detect(frames))
        h, w = frames.shape[-2:]
        side = min(h, w) / 2
        box = np.array([[w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2, 0.99]])
        return [box.copy() for _ in range(frames.shape[0])]


def matmul_peak(device: torch.device, n: int | None = None, reps: int = 3) -> float:
    """Best float32 GFLOP/s of an n×n matmul on ``device`` (the machine's practical peak for the nets' GEMMs;
    n = 2048 on a CPU, 8192 on a GPU, where a 2048² product does not fill the chip: cuDNN's batched I3D convs
    beat it)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):  # the first one warms up
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def suite_pass(suite, gen: torch.Tensor, ref: torch.Tensor, audio: torch.Tensor, parts: Parts) -> dict[str, float]:
    """What ``suite.update`` + ``compute`` do, timed per member."""
    suite.reset()
    for key, metric in suite.metrics.items():
        with parts("psnr+ssim+lpips" if key in ("psnr", "ssim", "lpips") else key):
            metric.update(gen, audio) if key in ("sync", "lse") else metric.update(gen, ref)
    with parts("compute"):
        return suite.compute()


def lse_loop(lse, detector: CentredFaceS3FD, video: torch.Tensor, audio: np.ndarray) -> list[tuple[float, float]]:
    """LSE-C/D of one clip as written first: S3FD one frame per forward, the suite's tracking and crops, SyncNet one
    window at a time and the published Python offset loop; ``[(lse_c, lse_d)]`` per track."""
    from mmgt.metrics.lse import crop_track, smooth_track, track_faces
    from mmgt.metrics.syncnet import HOP, WINDOW, mfcc

    o, net = lse.opts, lse.__dict__["_net"]
    frames = lse._frames(video)
    dets = [detector(frames[t:t + 1])[0] for t in range(frames.shape[0])]
    res = track_faces(dets, iou_threshold=o["iou_threshold"], num_failed_det=o["num_failed_det"],
                      min_track=o["min_track"], min_face_size=o["min_face_size"])
    out, vshift = [], o["vshift"]
    for tr in res.tracks:
        crops = crop_track(frames.flip(1)[torch.from_numpy(tr.frames).to(frames.device)],
                           smooth_track(tr.boxes, o["smooth_kernel"]), o["crop_scale"])
        seg = audio[tr.frames[0] * HOP:(tr.frames[-1] + 1) * HOP]
        cc = torch.from_numpy(mfcc(seg)).to(frames.device)
        n = min(len(crops), len(seg) // HOP) - WINDOW
        v = torch.cat([net.forward_lip(crops[i:i + WINDOW].transpose(0, 1)[None]) for i in range(n)]).cpu()
        a = torch.cat([net.forward_aud(cc[None, None, :, 4 * i:4 * i + 20]) for i in range(n)]).cpu()
        win = 2 * vshift + 1
        padded = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
        dists = [torch.nn.functional.pairwise_distance(v[[i]].repeat(win, 1), padded[i:i + win]) for i in range(n)]
        mdist = torch.stack(dists, 1).mean(1)
        out.append((float(torch.median(mdist) - mdist.min()), float(mdist.min())))
    return out


def loop_baseline(suite, gen: torch.Tensor, ref: torch.Tensor, audio: torch.Tensor,
                  parts: Parts, lse_detector: CentredFaceS3FD | None = None) -> dict[str, float]:
    """Per-frame / per-clip / per-window evaluation with the suite's own networks, timed per part."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from mmgt.metrics.frechet import frechet_distance_from_features
    from mmgt.metrics.i3d import resize_frames
    from mmgt.metrics.syncnet import HOP, WINDOW, crop_faces, mfcc
    from mmgt.metrics.video import to_unit

    m = suite.metrics
    lp, i3d, sync = m["lpips"].__dict__["_net"], m["fvd"].__dict__["_net"], m["sync"].__dict__["_net"]
    fvd_metric, vshift = m["fvd"], m["sync"].vshift
    dev = gen.device
    psnr, ssim, lpips_v, gen_f, ref_f, confs, fid_g, fid_r = [], [], [], [], [], [], [], []
    lse_tracks: list[tuple[float, float]] = []
    with torch.no_grad():
        for b in range(gen.shape[0]):
            g01, r01 = to_unit(gen[b]), to_unit(ref[b])
            gp, rp, ls = [], [], []
            with parts("psnr+ssim+lpips"):
                for t in range(gen.shape[1]):
                    gn = g01[t].permute(1, 2, 0).cpu().double().numpy()
                    rn = r01[t].permute(1, 2, 0).cpu().double().numpy()
                    gp.append(peak_signal_noise_ratio(rn, gn, data_range=1.0))
                    rp.append(structural_similarity(rn, gn, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                                    sigma=1.5, use_sample_covariance=False))
                    ls.append(float(lp(g01[t:t + 1] * 2 - 1, r01[t:t + 1] * 2 - 1)))
            psnr.append(np.mean(gp))
            ssim.append(np.mean(rp))
            lpips_v.append(np.mean(ls))
            with parts("fvd"):
                for video, store in ((gen[b:b + 1], gen_f), (ref[b:b + 1], ref_f)):
                    for clip in fvd_metric.clips_of(video):  # the protocol's clips (videogpt: every 16 frames)
                        c = resize_frames(to_unit(clip) * 2 - 1, fvd_metric.resize, fvd_metric.resize_grid)
                        store.append(i3d(c.transpose(0, 1)[None]).double().cpu())
            if "fid" in m:  # Inception one frame at a time (uint8, as the suite feeds it)
                with parts("fid"):
                    net = m["fid"].__dict__["_net"]
                    for video, store in ((gen[b], fid_g), (ref[b], fid_r)):
                        for t in range(video.shape[0]):
                            frame = (to_unit(video[t:t + 1]) * 255).round().to(torch.uint8)
                            store.append(net(frame).double().cpu())
            with parts("sync"):
                # SyncNet: whole-frame crops, one window at a time
                frames = to_unit(gen[b]) * 255.0
                h, w = frames.shape[-2:]
                s = min(h, w) / 2.8
                crops = crop_faces(frames.flip(1), np.tile([[w / 2, s, s]], (len(frames), 1)))
                cc = torch.from_numpy(mfcc(audio[b].cpu().numpy())).to(dev)
                v_emb, a_emb = [], []
                for i in range(len(frames) - WINDOW):
                    v_emb.append(sync.forward_lip(crops[i:i + WINDOW].transpose(0, 1)[None]))
                    a_emb.append(sync.forward_aud(cc[None, None, :, 4 * i:4 * i + 20]))
                v, a = torch.cat(v_emb).cpu(), torch.cat(a_emb).cpu()
                win = 2 * vshift + 1
                padded = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
                dists = [torch.nn.functional.pairwise_distance(v[[i]].repeat(win, 1), padded[i:i + win])
                         for i in range(len(v))]
                mdist = torch.stack(dists, 1).mean(1)
                confs.append(float(torch.median(mdist) - mdist.min()))
                assert audio.shape[1] >= len(frames) * HOP
            if "lse" in m and lse_detector is not None:
                with parts("lse"):
                    lse_tracks += lse_loop(m["lse"], lse_detector, gen[b], audio[b].cpu().numpy())
    with parts("compute"):
        fvd = frechet_distance_from_features(torch.cat(gen_f), torch.cat(ref_f))
        fid = frechet_distance_from_features(torch.cat(fid_g), torch.cat(fid_r)) if fid_g else float("nan")
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "lpips": float(np.mean(lpips_v)),
            "fvd": fvd, "kpsync_conf": float(np.mean(confs)), "fid": fid,
            "lse": float(np.mean([c for c, _ in lse_tracks])) if lse_tracks else float("nan")}


def _best(runs: list[Parts]) -> dict[str, float]:
    """Per part (and ``total``) the fastest of several runs."""
    out = {k: min(r.seconds.get(k, float("nan")) for r in runs) for k in (*PARTS, "compute")}
    out["total"] = min(sum(r.seconds.values()) for r in runs)
    return out


def _clear_caches(suite) -> None:
    for m in suite.metrics.values():
        if "cache" in m.__dict__:
            m.__dict__["cache"].clear()


def main() -> None:
    from mmgt.metrics import MetricSuite

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--frames", type=int, default=40, help="per video (the sync monitor needs >= 35 at ±15)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--repeats", type=int, default=2, help="alternating suite/loop runs; the best of each counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--reference-cache-mb", type=float, default=256.0,
                    help="FVD/LPIPS reference-feature cache; > 0 adds the 'second evaluation' line")
    ap.add_argument("--no-flops", action="store_true", help="skip the (untimed) FLOP-counting passes")
    ap.add_argument("--fid", action="store_true", help="include the optional FID (Inception-v3 at 299² per frame)")
    ap.add_argument("--no-lse", action="store_true", help="leave LSE-C/D (S3FD + SyncNet on face tracks) out")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
        # numpy's BLAS too (the Fréchet step's eigh): on a busy machine OpenBLAS' default threads spin (a 400-dim
        # eigh measured 4 s instead of 0.03 s on 2 shared cores)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    dev = torch.device(args.device)
    weights = {k: args.weights_dir for k in ("i3d", "syncnet", "alexnet", "inception")}
    scale = max(0.25, 32 / args.size)  # S3FD needs >= 32 px inputs: 0.25 (published) from 128-px frames on
    suite_det, loop_det = CentredFaceS3FD(scale=scale), CentredFaceS3FD(frames_per_batch=1, scale=scale)

    def lse(detector: CentredFaceS3FD) -> dict | bool:
        return False if args.no_lse else {"detector": detector, "min_track": args.frames - 1, "facedet_scale": scale,
                                          "min_face_size": args.size / 4}

    suite = MetricSuite(weights, allow_random_weights=True, verify_checksums=False, fid=args.fid,
                        lse=lse(suite_det)).to(dev)
    cached = None
    if args.reference_cache_mb > 0:
        cache = {"reference_cache_mb": args.reference_cache_mb}
        cached = MetricSuite(weights, allow_random_weights=True, verify_checksums=False, lpips=cache,
                             fvd=cache, fid=cache if args.fid else False, lse=lse(CentredFaceS3FD(scale=scale))
                             ).to(dev)
    g = torch.Generator().manual_seed(0)
    shape = (args.videos, args.frames, 3, args.size, args.size)
    ref = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    gen = (ref.float() + 20 * torch.randn(shape, generator=g)).clamp(0, 255).to(torch.uint8)
    audio = torch.randn(args.videos, args.frames * 640, generator=g) * 0.1
    gen, ref = gen.to(dev), ref.to(dev)
    n_frames = args.videos * args.frames

    for s in (suite, cached) if cached is not None else (suite,):  # warm-up (lazy device moves, kernels)
        s.update(gen[:1], ref[:1], audio=audio[:1])
    peak = matmul_peak(dev)
    suite_runs, loop_runs, miss_runs, warm_runs = [], [], [], []
    for _ in range(max(1, args.repeats)):  # alternate, so a busy spell on a shared machine hits both
        suite_runs.append(Parts(dev))
        batched = suite_pass(suite, gen, ref, audio, suite_runs[-1])
        loop_runs.append(Parts(dev))
        looped = loop_baseline(suite, gen, ref, audio, loop_runs[-1], loop_det)
        if cached is not None:
            _clear_caches(cached)
            miss_runs.append(Parts(dev))
            miss = suite_pass(cached, gen, ref, audio, miss_runs[-1])
            # per-video reference batches: the plain suite's values up to float round-off (printed below)
            miss_dev = max(abs(miss[k] - batched[k]) / max(abs(batched[k]), 1e-12) for k in batched)
            warm_runs.append(Parts(dev))  # the cache now holds these references' features
            warm = suite_pass(cached, gen, ref, audio, warm_runs[-1])
            if warm != miss:  # hits return the stored features; only a non-deterministic kernel could differ
                print(f"warning: second evaluation differs from the first: {warm} vs {miss}")
    peak = max(peak, matmul_peak(dev))
    ts, tl = _best(suite_runs), _best(loop_runs)
    flops_s = flops_l = flops_w = None
    if not args.no_flops:
        flops_s, flops_l = Parts(dev, count_flops=True), Parts(dev, count_flops=True)
        suite_pass(suite, gen, ref, audio, flops_s)
        loop_baseline(suite, gen, ref, audio, flops_l, loop_det)
        if warm_runs:
            flops_w = Parts(dev, count_flops=True)
            suite_pass(cached, gen, ref, audio, flops_w)

    used = [p for p in PARTS if (p != "fid" or args.fid) and (p != "lse" or not args.no_lse)]
    print(f"device={dev} videos={args.videos} frames={args.frames} size={args.size}px torch_threads="
          f"{torch.get_num_threads()} repeats={len(suite_runs)} (best of each; random-init nets unless "
          f"--weights-dir)")
    print(f"suite (batched): {ts['total']:8.2f} s  {n_frames / ts['total']:8.2f} frames/s")
    print(f"per-frame loop : {tl['total']:8.2f} s  {n_frames / tl['total']:8.2f} frames/s")
    print(f"ratio          : {tl['total'] / ts['total']:8.2f}x")
    for part in used:
        a, b = ts[part], tl[part]
        print(f"  {part:16s} suite {a:7.2f} s  loop {b:7.2f} s  ratio {b / a:6.2f}x")
    print(f"  {'compute':16s} suite {ts['compute']:7.2f} s  loop {tl['compute']:7.2f} s  (Fréchet step etc.)")
    print(f"matmul peak (float32 {8192 if dev.type == 'cuda' else 2048}², "
          f"{'GPU' if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}): {peak:8.1f} GFLOP/s")
    if flops_s is not None:
        for part in used:
            fs, fl = flops_s.flops.get(part, 0.0), flops_l.flops.get(part, 0.0)
            gs, gl = fs / ts[part] / 1e9, fl / tl[part] / 1e9
            print(f"  {part:16s} suite {fs / 1e9:7.1f} GFLOP {gs:7.1f} GFLOP/s {100 * gs / peak:5.1f}% of peak | "
                  f"loop {fl / 1e9:7.1f} GFLOP {gl:7.1f} GFLOP/s {100 * gl / peak:5.1f}% | "
                  f"ratio bound {tl[part] / (fs / 1e9 / peak):6.2f}x")
        fs, fl = sum(flops_s.flops.values()), sum(flops_l.flops.values())
        print(f"  {'all':16s} suite {fs / 1e9:7.1f} GFLOP {fs / ts['total'] / 1e9:7.1f} GFLOP/s "
              f"{100 * fs / ts['total'] / 1e9 / peak:5.1f}% of peak | loop {fl / 1e9:7.1f} GFLOP "
              f"{fl / tl['total'] / 1e9:7.1f} GFLOP/s {100 * fl / tl['total'] / 1e9 / peak:5.1f}%")
        print(f"upper bound on the ratio (loop time / suite FLOPs at matmul peak): "
              f"{tl['total'] / (fs / 1e9 / peak):6.2f}x")
    if warm_runs:
        tm, tw = _best(miss_runs), _best(warm_runs)
        print(f"with the reference cache, first evaluation (misses: hashing + networks): {tm['total']:6.2f} s  "
              f"{n_frames / tm['total']:7.2f} frames/s  ratio vs loop {tl['total'] / tm['total']:5.2f}x  "
              f"(values vs the plain suite: max relative difference {miss_dev:.1e}, batch-size round-off)")
        line = (f"second evaluation of the same references (FVD/LPIPS reference features cached): "
                f"{tw['total']:6.2f} s  {n_frames / tw['total']:7.2f} frames/s  ratio vs loop "
                f"{tl['total'] / tw['total']:5.2f}x")
        if flops_w is not None:
            fw = sum(flops_w.flops.values())
            line += (f"  ({fw / 1e9:.1f} GFLOP, {100 * fw / tw['total'] / 1e9 / peak:.1f}% of peak; bound "
                     f"{tl['total'] / (fw / 1e9 / peak):.2f}x)")
        print(line)
    if not args.no_lse:
        for name, det in (("suite", suite_det), ("loop", loop_det)):
            print(f"S3FD ({name}): {det.forwards} forward passes over {det.frames} frames "
                  f"({det.frames / max(det.forwards, 1):.1f} frames per forward), {det.raw_detections} raw detections "
                  "(random weights; replaced by a centred box)")
    keys = ["psnr", "ssim", "lpips", "fvd", "kpsync_conf", *(["lse"] if not args.no_lse else []),
            *(["fid"] if args.fid else [])]
    for k in keys:
        key = next(n for n in batched if n.startswith(k) and (k != "lse" or n.endswith(("_c_customdet_randinit",
                                                                                       "_c_customdet"))))
        print(f"  {key:30s} suite {batched[key]:.5f}  loop {looped[k]:.5f}")


if __name__ == "__main__":
    main()
