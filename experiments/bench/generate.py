"""Generation throughput of the whole pipeline (image + speech -> mp4): frames/s and seconds per stage.

    python experiments/bench/generate.py                                  # tiny random-init modules, CPU
    python experiments/bench/generate.py --threads 1,2                     # intra-op threads compared
    python experiments/bench/generate.py --smga outputs/quickstart/smga --video outputs/quickstart/video_b
    python experiments/bench/generate.py --full --device cuda --seconds 3.2  # paper-size nets, random init

Runs :class:`mmgt.inference.GesturePipeline` end to end on synthetic speech of the given lengths (default 3.2 s and
7.3 s) and prints, per run: frames, seconds per stage (inputs, poses = SMGA, conditions = pose images + masks +
wav2vec, video = diffusion, write = H.264/AAC muxing), generated frames/s (writing excluded) and peak memory.
Network sizes come from conf/size/{tiny,full}.yaml; ``--full`` gives the paper's layout (SD-1.5 UNet shapes, VAE,
CLIP-shaped encoder) with random weights; the speech encoders stay the tiny seeded ones (small next to the UNet).

Measured here (2 cores, tiny nets, 32 px, 10 video steps + CFG, 50 SMGA steps): 1 thread 4.0 frames/s whatever the
load; 2 threads 6.6 frames/s on an idle machine but 0.4-1.1 frames/s when other jobs load the cores (load ~5): torch's
default threading is ~1.6x faster alone and ~9x slower on oversubscribed cores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def size_blocks(name: str) -> tuple[dict, dict]:
    """The ``smga`` and ``video`` blocks of conf/size/<name>.yaml (what training builds), interpolations resolved."""
    from omegaconf import OmegaConf

    from mmgt.utils.paths import CONF_DIR

    cfg = OmegaConf.load(Path(CONF_DIR) / "size" / f"{name}.yaml")
    cfg.paths = {"weights_dir": "weights"}  # only named in pretrained paths, which are not loaded here
    smga = OmegaConf.to_container(cfg.smga, resolve=True)
    smga["dropout"] = 0.0
    return smga, OmegaConf.to_container(cfg.video, resolve=True)


def build_pipeline(args: argparse.Namespace):
    from mmgt.inference import GesturePipeline
    from mmgt.lit.smga import SMGAModule
    from mmgt.lit.video import VideoModule
    from mmgt.pose.masks import MaskConfig

    if args.smga and args.video:
        return GesturePipeline.from_checkpoints(args.smga, args.video, device=args.device, progress=False)
    size = 512 if args.full else args.size
    smga_net, video_net = size_blocks("full" if args.full else "tiny")
    torch.manual_seed(0)
    smga = SMGAModule(smga_net,
                      data_info=dict(audio_feature_dim=66, window=80 if args.full else 32, frame_size=[size, size],
                                     fps=25.0, normalizer=dict(width=size, height=size, margin=0.5, legacy=False)),
                      sampling=dict(steps=args.pose_steps, guidance=2.0))
    info = dict(audio_embed_shape=[5, 2, 32], num_branches=3, frame_size=[size, size], fps=25.0,
                audio_context=2, mask=MaskConfig().to_dict())
    video = VideoModule(video_net, attention={"type": "mm_haa", "blocks": ["down"]},
                        substage="b", load_weights=False, data_info=info,
                        autocast="bf16" if args.full and args.device.startswith("cuda") else None,
                        sampling=dict(steps=args.steps, guidance=2.0, context_frames=args.context,
                                      context_overlap=args.overlap))
    return GesturePipeline.from_modules(smga, video, device=args.device, progress=False)


def inputs(folder: Path, size: int, seconds: float) -> tuple[Path, Path, Path]:
    from PIL import Image

    from mmgt.data.synthetic import synth_sequence
    from mmgt.data.video_io import write_audio

    n = int(np.ceil(seconds * 25)) + 1
    frames, audio, kp = synth_sequence(n, size, seed=0)
    Image.fromarray(frames[0]).save(folder / "image.png")
    np.save(folder / "pose.npy", kp[0])
    write_audio(folder / "speech.wav", audio[: int(round(seconds * 16000))])
    return folder / "image.png", folder / "speech.wav", folder / "pose.npy"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", default="3.2,7.3", help="audio lengths, comma separated")
    p.add_argument("--threads", default="1", help="torch intra-op threads to compare, e.g. 1,2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--full", action="store_true", help="paper-size networks (random init)")
    p.add_argument("--size", type=int, default=32, help="frame size of the tiny video model")
    p.add_argument("--steps", type=int, default=10, help="video DDIM steps (the quickstart's)")
    p.add_argument("--pose-steps", type=int, default=50, help="SMGA DDIM steps")
    p.add_argument("--context", type=int, default=8, help="video context window (frames)")
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--smga", default=None, help="stage-1 checkpoint (with --video: benchmark trained models)")
    p.add_argument("--video", default=None, help="stage-2 checkpoint")
    args = p.parse_args(argv)
    pipe = build_pipeline(args)
    h, w = pipe.frame_size
    print(f"device {args.device}, frame {h}x{w}, video steps {pipe.video_sampling.steps}, "
          f"SMGA steps {pipe.pose_sampling.steps}")
    print(f"{'threads':>7} {'audio s':>7} {'frames':>6} {'inputs':>7} {'poses':>7} {'conds':>7} {'video':>7} "
          f"{'write':>6} {'frames/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for sec in (float(s) for s in args.seconds.split(",")):
                image, audio, pose = inputs(Path(tmp), max(h, 64), sec)
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                res = pipe.generate(image, audio, Path(tmp) / "out.mp4", keypoints=pose)
                wall = time.perf_counter() - t
                s = res.seconds
                print(f"{threads:>7} {sec:>7.1f} {res.n_frames:>6} {s['inputs']:>7.2f} {s['poses']:>7.2f} "
                      f"{s['conditions']:>7.2f} {s['video']:>7.2f} {s['write']:>6.2f} {res.frames_per_second:>8.2f}"
                      f"   (wall {wall:.1f} s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if args.device.startswith("cuda") else ""
    print(f"peak RSS {peak:.0f} MiB{gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
