"""Throughput of the batched metric suite vs a straightforward per-frame loop on the same videos.

    python experiments/bench/metrics.py [--videos 2 --frames 32 --size 128 --device cpu --weights-dir weights/]

The loop is what one writes first: scikit-image PSNR/SSIM per frame, LPIPS one frame at a time, I3D one clip at a
time, SyncNet one 5-frame window at a time and the published Python offset loop. Both paths use the same networks
(random-init unless ``--weights-dir`` holds the published files) at the standard settings (I3D 224², 16-frame
clips; SyncNet 224² crops). Prints frames/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch


def loop_baseline(suite, gen: torch.Tensor, ref: torch.Tensor, audio: torch.Tensor,
                  timers: dict[str, float]) -> dict[str, float]:
    """Per-frame / per-clip / per-window evaluation with the suite's own networks; seconds per part in timers."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from mmgt.metrics.frechet import frechet_distance_from_features
    from mmgt.metrics.i3d import video_to_clips
    from mmgt.metrics.syncnet import HOP, WINDOW, crop_faces, mfcc
    from mmgt.metrics.video import to_unit

    m = suite.metrics
    lp, i3d, sync = m["lpips"].__dict__["_net"], m["fvd"].__dict__["_net"], m["sync"].__dict__["_net"]
    dev = gen.device
    psnr, ssim, lpips_v, gen_f, ref_f, confs = [], [], [], [], [], []
    with torch.no_grad():
        for b in range(gen.shape[0]):
            g01, r01 = to_unit(gen[b]), to_unit(ref[b])
            gp, rp, ls = [], [], []
            t0 = time.perf_counter()
            for t in range(gen.shape[1]):
                gn = g01[t].permute(1, 2, 0).cpu().double().numpy()
                rn = r01[t].permute(1, 2, 0).cpu().double().numpy()
                gp.append(peak_signal_noise_ratio(rn, gn, data_range=1.0))
                rp.append(structural_similarity(rn, gn, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                                sigma=1.5, use_sample_covariance=False))
                ls.append(float(lp(g01[t:t + 1] * 2 - 1, r01[t:t + 1] * 2 - 1)))
            t1 = time.perf_counter()
            timers["psnr+ssim+lpips"] = timers.get("psnr+ssim+lpips", 0.0) + t1 - t0
            psnr.append(np.mean(gp))
            ssim.append(np.mean(rp))
            lpips_v.append(np.mean(ls))
            for video, store in ((gen[b:b + 1], gen_f), (ref[b:b + 1], ref_f)):
                for clip in video_to_clips(video, 16):
                    c = torch.nn.functional.interpolate(to_unit(clip), size=(224, 224), mode="bilinear")
                    store.append(i3d((c * 2 - 1).transpose(0, 1)[None]).double().cpu())
            t2 = time.perf_counter()
            timers["fvd"] = timers.get("fvd", 0.0) + t2 - t1
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
            padded = torch.nn.functional.pad(a, (0, 0, 15, 15))
            dists = [torch.nn.functional.pairwise_distance(v[[i]].repeat(31, 1), padded[i:i + 31])
                     for i in range(len(v))]
            mdist = torch.stack(dists, 1).mean(1)
            confs.append(float(torch.median(mdist) - mdist.min()))
            assert audio.shape[1] >= len(frames) * HOP
            timers["sync"] = timers.get("sync", 0.0) + time.perf_counter() - t2
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "lpips": float(np.mean(lpips_v)),
            "fvd": frechet_distance_from_features(torch.cat(gen_f), torch.cat(ref_f)), "sync_c": float(np.mean(confs))}


def main() -> None:
    from mmgt.metrics import MetricSuite

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights-dir", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    dev = torch.device(args.device)
    weights = {k: args.weights_dir for k in ("i3d", "syncnet", "alexnet")}
    suite = MetricSuite(weights, allow_random_weights=True, verify_checksums=False).to(dev)
    g = torch.Generator().manual_seed(0)
    shape = (args.videos, args.frames, 3, args.size, args.size)
    ref = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    gen = (ref.float() + 20 * torch.randn(shape, generator=g)).clamp(0, 255).to(torch.uint8)
    audio = torch.randn(args.videos, args.frames * 640, generator=g) * 0.1
    gen, ref = gen.to(dev), ref.to(dev)
    n_frames = args.videos * args.frames

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    suite.update(gen[:1, :16], ref[:1, :16], audio=audio[:1, : 16 * 640])  # warm-up (lazy device moves, kernels)
    suite.reset()
    sync()
    suite_timers: dict[str, float] = {}
    t0 = time.perf_counter()
    for key, metric in suite.metrics.items():  # what suite.update does, timed per member
        t = time.perf_counter()
        metric.update(gen, audio) if key == "sync" else metric.update(gen, ref)
        sync()
        part = "psnr+ssim+lpips" if key in ("psnr", "ssim", "lpips") else key
        suite_timers[part] = suite_timers.get(part, 0.0) + time.perf_counter() - t
    batched = suite.compute()
    sync()
    t_suite = time.perf_counter() - t0
    loop_timers: dict[str, float] = {}
    t0 = time.perf_counter()
    looped = loop_baseline(suite, gen, ref, audio, loop_timers)
    sync()
    t_loop = time.perf_counter() - t0
    print(f"device={dev} videos={args.videos} frames={args.frames} size={args.size}px torch_threads="
          f"{torch.get_num_threads()} (random-init nets unless --weights-dir)")
    print(f"suite (batched): {t_suite:8.2f} s  {n_frames / t_suite:8.2f} frames/s")
    print(f"per-frame loop : {t_loop:8.2f} s  {n_frames / t_loop:8.2f} frames/s")
    print(f"ratio          : {t_loop / t_suite:8.2f}x")
    for part in ("psnr+ssim+lpips", "fvd", "sync"):
        a, b = suite_timers.get(part, float("nan")), loop_timers.get(part, float("nan"))
        print(f"  {part:16s} suite {a:7.2f} s  loop {b:7.2f} s  ratio {b / a:6.2f}x")
    for k in ("psnr", "ssim", "lpips", "fvd", "sync_c"):
        key = next(n for n in batched if n.startswith(k))
        print(f"  {key:22s} suite {batched[key]:.5f}  loop {looped[k]:.5f}")


if __name__ == "__main__":
    main()
