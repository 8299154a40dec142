"""``python -m mmgt.quickstart`` (``make quickstart``): the main job on the embedded default.

Runs the whole chain on the synthetic corpus with tiny models on the CPU, each step through the same
command-line entry points a user would type, and prints where everything went:

synthetic corpus -> validate -> stage 1 SMGA -> stage 2A video image model -> stage 2B temporal + audio ->
generate videos for the held-out (test) clips -> evaluate them against the ground truth -> summary table.

Steps are separate processes so that each one is exactly the documented command. Training lengths are explicit
``trainer.max_steps`` overrides here (``--steps smga,video_a,video_b``), sized so the whole chain takes well under
15 minutes on a 2-core machine. ``--threads`` sets ``OMP_NUM_THREADS`` for the steps: on small, busy CPUs one
intra-op thread is much faster than oversubscribing the cores with torch's default.
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
DEFAULT_STEPS = (600, 300, 120)  # trainer.max_steps of SMGA, video sub-stage A, video sub-stage B
# typical share of the whole run per step on 2 idle cores (measured with the default steps): the remaining-time
# estimate scales these by how fast the finished steps went
EXPECTED_SHARE = (0.01, 0.02, 0.22, 0.27, 0.22, 0.20, 0.06)


def steps(root: Path, out: Path, max_steps: tuple[int, int, int] = DEFAULT_STEPS) -> list[tuple[str, list[str]]]:
    """The chain of commands (name, argv) the quickstart runs, in order."""
    data = root / "data" / "synthetic"
    py = [sys.executable, "-m"]
    n_smga, n_a, n_b = max_steps
    return [
        ("synthetic corpus", py + ["mmgt.prepare", "task=synthetic", f"data.root={data}"]),
        ("validate corpus", py + ["mmgt.prepare", "task=validate", f"data.root={data}"]),
        ("stage 1: SMGA (tiny)", py + ["mmgt.train", "experiment=quickstart_smga", f"data.root={data}",
                                       f"trainer.max_steps={n_smga}", f"hydra.run.dir={out / 'smga'}"]),
        ("stage 2A: video image model", py + [
            "mmgt.train", "experiment=video_stage_a", f"data.root={data}", f"trainer.max_steps={n_a}",
            f"trainer.val_check_interval={n_a}", f"hydra.run.dir={out / 'video_a'}"]),
        ("stage 2B: motion + MM-HAA audio", py + [
            "mmgt.train", "experiment=quickstart_video", f"data.root={data}",
            f"model.init_from={out / 'video_a' / 'checkpoints' / 'last.ckpt'}", f"trainer.max_steps={n_b}",
            f"trainer.val_check_interval={n_b}", f"hydra.run.dir={out / 'video_b'}"]),
        ("generate held-out clips", py + [
            "mmgt.generate", "split=test", f"data.root={data}", f"smga.ckpt={out / 'smga'}",
            f"video.ckpt={out / 'video_b'}", f"out={out / 'generated'}", f"reference_dir={out / 'reference'}",
            "pose_video=true", "side_by_side=true", "progress=true", f"hydra.run.dir={out / 'generate'}"]),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MMGT_ROOT", "."), help="project root (data/, outputs/)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/quickstart)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                        help="trainer.max_steps of SMGA, video stage A, video stage B (default %(default)s)")
    parser.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "1"),
                        help="OMP_NUM_THREADS for every step (default: $OMP_NUM_THREADS or 1)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    out = Path(args.out or root / "outputs" / "quickstart").resolve()
    max_steps = tuple(int(v) for v in args.steps.split(","))
    if len(max_steps) != 3:
        parser.error("--steps needs three numbers: SMGA, video stage A, video stage B")
    prepare_out(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MMGT_ROOT=str(root), OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    timings: list[tuple[str, float]] = []
    chain = steps(root, out, max_steps)  # type: ignore[arg-type]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
