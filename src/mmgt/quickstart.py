"""``python -m mmgt.quickstart`` (``make quickstart``): the main job on the embedded default.

Runs the whole chain on the synthetic corpus with tiny models on the CPU, each step through the same
command-line entry points a user would type, and prints where everything went:

synthetic corpus -> validate -> stage 1 SMGA -> stage 2A video image model -> stage 2B temporal + audio ->
generate videos for the held-out (test) clips -> evaluate them against the ground truth -> summary table.

Why it starts from shipped weights: tiny models trained from scratch for a few minutes on 2 cores generate noisy
frames that lose to simply repeating the reference frame. The chain therefore fine-tunes a small checkpoint pair
that ships with the package (``mmgt/assets/quickstart``: SMGA + the stage-2 video model, fp16 safetensors exports
written by :mod:`mmgt.checkpoints`), made by this same chain run from scratch for longer:
``python -m mmgt.quickstart --pretrain`` (trains SMGA, sub-stage A and sub-stage B with the
``quickstart_chain_*`` experiments, generates, evaluates and rewrites the shipped files). Every step still runs
and can be read as the documented command; ``--steps`` sets the training lengths (``trainer.max_steps``).

The quickstart corpus is the synthetic default generated at 32 px (``data/quickstart``): videos are generated and
scored at the size they were trained at (a 32-px video upscaled to the default's 64 px scores below copying the
reference frame whatever the model does). ``--threads`` sets ``OMP_NUM_THREADS`` for the steps: on small, busy
CPUs one intra-op thread is much faster than oversubscribing the cores with torch's default.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

MARKER = ".mmgt_quickstart"  # marks a folder the quickstart created (and so may clear on a re-run)
# the shipped checkpoint pair (package data) and how it was made
ASSETS = Path(__file__).resolve().parent / "assets" / "quickstart"
SHIPPED = {"smga": ASSETS / "smga.safetensors", "video": ASSETS / "video.safetensors"}
# trainer.max_steps of SMGA, video sub-stage A, video sub-stage B: fine-tuning the shipped weights (make quickstart)
DEFAULT_STEPS = (200, 100, 40)
# ... and training them from scratch (--pretrain)
PRETRAIN_STEPS = (3000, 2500, 150)
# fine-tuning learning rates (the experiments' own rates are the from-scratch recipe): small enough that a few
# hundred steps refine the shipped weights instead of shaking them
FINETUNE_LR = {"smga": 1.0e-4, "video_a": 2.0e-4, "video_b": 2.0e-4}
# the quickstart corpus (the experiments' too): the synthetic default at 32 px, its videos in 4:4:4 colour at crf 10
# (4:2:0 keeps a 16x16 colour plane at 32 px, whose error would dominate every method's PSNR), and the generated
# videos are written the same way (ENCODING) so that both sides of the comparison went through the same codec
CORPUS = ["data.synthetic.size=32", "data.synthetic.crf=10", "data.synthetic.pix_fmt=yuv444p"]
ENCODING = ["encoding.crf=10", "encoding.pix_fmt=yuv444p"]
# typical share of the whole run per step on 2 idle cores (measured with the default steps: 245 s in all): the
# remaining-time estimate scales these by how fast the finished steps went
EXPECTED_SHARE = (0.015, 0.002, 0.138, 0.22, 0.089, 0.205, 0.331)


def steps(root: Path, out: Path, max_steps: tuple[int, int, int] = DEFAULT_STEPS,
          pretrained: bool = True) -> list[tuple[str, list[str]]]:
    """The chain of commands (name, argv) the quickstart runs, in order; ``pretrained``: fine-tune the shipped
    weights (else train from scratch, as ``--pretrain`` does)."""
    data = root / "data" / "quickstart"
    py = [sys.executable, "-m"]
    n_smga, n_a, n_b = max_steps

    def init(kind: str, stage: str) -> list[str]:
        return [f"model.init_from={SHIPPED[kind]}", f"model.optim.lr={FINETUNE_LR[stage]}"] if pretrained else []

    def train(experiment: str, n: int, run: str) -> list[str]:
        return ["mmgt.train", f"experiment={experiment}", f"data.root={data}", f"trainer.max_steps={n}",
                f"trainer.val_check_interval={max(n, 1)}", f"hydra.run.dir={out / run}"]

    return [
        ("synthetic corpus", py + ["mmgt.prepare", "task=synthetic", f"data.root={data}", *CORPUS]),
        ("validate corpus", py + ["mmgt.prepare", "task=validate", f"data.root={data}"]),
        ("stage 1: SMGA (tiny)", py + train("quickstart_chain_smga", n_smga, "smga") + init("smga", "smga")),
        ("stage 2A: video image model", py + train("quickstart_chain_video_a", n_a, "video_a")
         + init("video", "video_a")),
        ("stage 2B: motion + MM-HAA audio", py + train("quickstart_chain_video_b", n_b, "video_b") + [
            f"model.init_from={out / 'video_a' / 'checkpoints' / 'last.ckpt'}"]
         + ([f"model.optim.lr={FINETUNE_LR['video_b']}"] if pretrained else [])),
        ("generate held-out clips", py + [
            "mmgt.generate", "split=test", f"data.root={data}", f"smga.ckpt={out / 'smga'}",
            f"video.ckpt={out / 'video_b'}", f"out={out / 'generated'}", f"reference_dir={out / 'reference'}",
            "pose_video=true", "side_by_side=true", "progress=true", *ENCODING, f"hydra.run.dir={out / 'generate'}"]),
        ("evaluate", py + [
            "mmgt.evaluate", f"generated={out / 'generated'}", f"reference={out / 'reference'}",
            "metrics.allow_random_weights=true", f"hydra.run.dir={out / 'evaluate'}"]),
    ]


def prepare_out(out: Path) -> None:
    """Start from an empty output folder; only a folder this driver created before is cleared."""
    if out.exists() and any(out.iterdir()):
        ours = {MARKER, "smga", "video_a", "video_b", "generate", "generated", "reference", "evaluate"}
        if not (out / MARKER).exists() and not {p.name for p in out.iterdir()} <= ours:
            raise SystemExit(f"{out} exists and was not made by the quickstart; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("created by python -m mmgt.quickstart\n")


def summary(out: Path, timings: list[tuple[str, float]]) -> str:
    """The closing report: step times, metrics, generation speed and where the videos and TensorBoard runs are."""
    lines = ["", "quickstart summary", "=" * 60]
    for name, sec in timings:
        lines.append(f"{name:<40} {sec:8.1f} s")
    lines.append(f"{'total':<40} {sum(s for _, s in timings):8.1f} s")
    metrics_file = out / "evaluate" / "metrics.json"
    if metrics_file.exists():
        data = json.loads(metrics_file.read_text())
        lines += ["", f"metrics of {len(data.get('pairs', []))} generated vs ground-truth test clips "
                      "(random-init feature nets: *_randinit values are only comparable with each other)"]
        base = data.get("baselines", {})
        lines.append(f"  {'metric':<30} {'generated':>10}" + "".join(f" {b.replace('_', ' '):>15}" for b in base))
        for k, v in data.get("metrics", {}).items():
            cells = [v] + [base[b].get(k) for b in base]
            lines.append(f"  {k:<30} " + " ".join(f"{'-' if c is None else f'{c:.4f}':>{10 if i == 0 else 15}}"
                                                  for i, c in enumerate(cells)))
        if base:
            lines.append("  (copy reference = the reference frame repeated; ground truth = the reference video scored "
                         "against itself)")
    gen_file = out / "generate" / "generation.json"
    if gen_file.exists():
        rows = json.loads(gen_file.read_text())
        frames = sum(r["n_frames"] for r in rows)
        busy = sum(sum(v for k, v in r["seconds"].items() if k != "write") for r in rows)
        lines += ["", f"generation: {len(rows)} videos, {frames} frames, {frames / max(busy, 1e-9):.1f} frames/s"]
    lines += ["", f"generated videos : {out / 'generated'}/*.mp4  (pose/ and panel/ = pose | masks | result)",
              f"ground truth     : {out / 'reference'}",
              f"checkpoints      : {out}/{{smga,video_a,video_b}}/checkpoints/last.ckpt",
              f"TensorBoard      : tensorboard --logdir {out}   (runs: smga, video_a, video_b, evaluate)"]
    return "\n".join(lines)


def elapsed_and_left(done: int, elapsed: float) -> str:
    """``"elapsed 3:05, about 6:40 left"`` after ``done`` steps: the typical shares scaled by this machine's pace."""
    def mmss(sec: float) -> str:
        return f"{int(sec) // 60}:{int(sec) % 60:02d}"

    if done == 0 or elapsed < 1:
        return "elapsed 0:00"
    share = sum(EXPECTED_SHARE[:done])
    left = elapsed / max(share, 1e-3) * max(0.0, 1.0 - share)
    return f"elapsed {mmss(elapsed)}, about {mmss(left)} left"


def export_shipped(out: Path, assets: Path = ASSETS) -> dict[str, Path]:
    """Write the shipped pair from a from-scratch run's checkpoints (``--pretrain``): SMGA from ``<out>/smga``, the
    video model from ``<out>/video_b`` (all of it: sub-stage A's image model and B's motion and audio modules), as
    :mod:`mmgt.checkpoints` exports (kind, format version and settings in the metadata, EMA applied) with the
    parameters in float16, which halves the files; ``model.init_from`` reads them back into float32 parameters."""
    import torch

    from mmgt import checkpoints

    written = {}
    for kind, run in (("smga", "smga"), ("video", "video_b")):
        ckpt = checkpoints.read(out / run, f"{run}.ckpt")
        module = checkpoints.build_module(ckpt, kind)  # EMA weights applied
        for p in module.net.parameters():  # buffers (noise tables, running statistics) stay as they are
            p.data = p.data.to(torch.float16)
        assets.mkdir(parents=True, exist_ok=True)
        written[kind] = checkpoints.write_export(module.net, kind, module.hparams, ckpt.datamodule,
                                                 assets / f"{kind}.safetensors")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MMGT_ROOT", "."), help="project root (data/, outputs/)")
    parser.add_argument("--out", default=None,
                        help="output folder (default outputs/quickstart, with --pretrain outputs/quickstart_pretrain)")
    parser.add_argument("--steps", default=None,
                        help="trainer.max_steps of SMGA, video stage A, video stage B (default "
                             f"{','.join(map(str, DEFAULT_STEPS))}; --pretrain: {','.join(map(str, PRETRAIN_STEPS))})")
    parser.add_argument("--pretrain", action="store_true",
                        help=f"train the chain from scratch and rewrite the shipped weights in {ASSETS}")
    parser.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "1"),
                        help="OMP_NUM_THREADS for every step (default: $OMP_NUM_THREADS or 1)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    out = Path(args.out or root / "outputs" / ("quickstart_pretrain" if args.pretrain else "quickstart")).resolve()
    default = PRETRAIN_STEPS if args.pretrain else DEFAULT_STEPS
    max_steps = tuple(int(v) for v in args.steps.split(",")) if args.steps else default
    if len(max_steps) != 3:
        parser.error("--steps needs three numbers: SMGA, video stage A, video stage B")
    missing = [str(p) for p in SHIPPED.values() if not p.is_file()]
    if missing and not args.pretrain:
        parser.error(f"the shipped quickstart weights are missing ({', '.join(missing)}); make them with "
                     "python -m mmgt.quickstart --pretrain")
    prepare_out(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MMGT_ROOT=str(root), OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    timings: list[tuple[str, float]] = []
    chain = steps(root, out, max_steps, pretrained=not args.pretrain)  # type: ignore[arg-type]
    start = time.time()
    for i, (name, cmd) in enumerate(chain):
        print(f"\n=== step {i + 1}/{len(chain)}: {name} ({elapsed_and_left(i, time.time() - start)})\n"
              f"    {shlex.join(cmd[1:])}", flush=True)
        t = time.time()
        rc = subprocess.call(cmd, env=env, cwd=root)
        timings.append((name, time.time() - t))
        print(f"=== step {i + 1}/{len(chain)}: {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{timings[-1][1]:.0f} s", flush=True)
        if rc:
            return rc
    print(summary(out, timings), flush=True)
    if args.pretrain:
        for kind, path in export_shipped(out).items():
            print(f"shipped {kind} weights: {path} ({path.stat().st_size / 2**20:.2f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
