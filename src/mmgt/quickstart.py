"""``python -m mmgt.quickstart`` (``make quickstart``): the main job on the embedded default.

Runs the whole chain on the synthetic corpus with tiny models on the CPU, each step through the same
command-line entry points a user would type, and prints where everything went. Steps are separate
processes so that each one is exactly the documented command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def steps(root: Path, out: Path) -> list[tuple[str, list[str]]]:
    """The chain of commands (name, argv) the quickstart runs, in order."""
    data = root / "data" / "synthetic"
    py = [sys.executable, "-m"]
    return [
        ("synthetic corpus", py + ["mmgt.prepare", "task=synthetic", f"data.root={data}"]),
        ("validate corpus", py + ["mmgt.prepare", "task=validate", f"data.root={data}"]),
        ("stage 1: SMGA (tiny)", py + ["mmgt.train", "experiment=quickstart_smga", f"data.root={data}",
                                       f"hydra.run.dir={out / 'smga'}"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MMGT_ROOT", "."), help="project root (data/, outputs/)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/quickstart)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    out = Path(args.out or root / "outputs" / "quickstart").resolve()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MMGT_ROOT=str(root))
    t0 = time.time()
    for name, cmd in steps(root, out):
        print(f"\n=== {name}: {shlex.join(cmd[1:])}", flush=True)
        t = time.time()
        rc = subprocess.call(cmd, env=env, cwd=root)
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t:.0f} s", flush=True)
        if rc:
            return rc
    print(f"\nquickstart finished in {time.time() - t0:.0f} s; outputs in {out}")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
