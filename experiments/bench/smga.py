"""Stage-1 training throughput: Lightning ``SMGAModule`` vs a plain PyTorch loop, and achieved GFLOP/s.

    python experiments/bench/smga.py                        # tiny net, CPU, batch 16 x 32 frames
    python experiments/bench/smga.py --size full --batch 8 --frames 80 --device cuda --precision bf16

Both runs use the same network configuration, the same pre-built random batches (stage-1 batch contract) and the
same work per step (diffusion noising, forward, loss, backward, optimizer step, EMA update); the Lightning run goes
through ``Trainer.fit`` (no logger, checkpointing, progress bar or validation). Printed: training samples/s of
each and their ratio (Lightning overhead), the FLOPs of one step counted with ``torch.utils.flop_counter``
(matmuls/attention; elementwise ops are not counted), the GFLOP/s that achieves and a measured matmul peak of
this machine (square fp32/bf16 matmul), so the fraction of peak is visible.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def make_batches(n: int, batch: int, frames: int, audio_dim: int, device: str) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        poses = torch.rand(batch, frames, 134, 3, generator=g) * 2 - 1
        poses[..., 2] = 0.9
        out.append({"poses": poses.to(device), "cond_pose": poses[:, 0].clone().to(device),
                    "vis": torch.ones(batch, frames, 134, dtype=torch.bool, device=device),
                    "audio_feat": torch.randn(batch, frames, audio_dim, generator=g).to(device)})
    return out


def build(size: str, frames: int, audio_dim: int):  # type: ignore[no-untyped-def]
    from omegaconf import OmegaConf

    from mmgt.lit.smga import SMGAModule
    from mmgt.utils.paths import CONF_DIR

    net = OmegaConf.load(Path(CONF_DIR) / "size" / f"{size}.yaml").smga
    return SMGAModule(net=net, loss={"_target_": "mmgt.losses.smga.SMGALoss"},
                      data_info={"audio_feature_dim": audio_dim, "window": frames})


def autocast(device: str, precision: str):  # type: ignore[no-untyped-def]
    dtype = torch.bfloat16 if precision == "bf16" else None
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def plain_loop(model, batches, warmup: int, device: str, precision: str) -> float:  # type: ignore[no-untyped-def]
    """Samples/s of forward + loss + backward + step + EMA, written by hand."""
    model.to(device).train()
    opt = model.configure_optimizers()
    n = 0
    for i, b in enumerate(batches):
        if i == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast(device, precision):
            loss = model._loss(model.net, b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_ema()
        n += b["poses"].shape[0] if i >= warmup else 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def lightning_loop(model, batches, warmup: int, device: str, precision: str) -> float:  # type: ignore[no-untyped-def]
    """Samples/s of ``Trainer.fit`` on the same batches (timed from batch ``warmup`` on)."""
    import lightning as L

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.t0, self.n = 0.0, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001, ANN201
            if batch_idx == warmup:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001, ANN201
            if batch_idx >= warmup:
                self.n += batch["poses"].shape[0]

    timer = Timer()
    accel = "gpu" if device.startswith("cuda") else "cpu"
    trainer = L.Trainer(accelerator=accel, devices=1, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
                        precision="bf16-mixed" if precision == "bf16" else "32-true")
    loader = torch.utils.data.DataLoader([{k: v.cpu() for k, v in b.items()} for b in batches], batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return timer.n / (time.perf_counter() - timer.t0)


def step_flops(model, batch, device: str, precision: str) -> int:  # type: ignore[no-untyped-def]
    from torch.utils.flop_counter import FlopCounterMode

    model.to(device).train()
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            loss = model._loss(model.net, batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_peak(device: str, precision: str) -> float:
    """GFLOP/s of a square matmul (the best of a few sizes)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best = 0.0
    for n in ((512, 1024, 2048) if device == "cpu" else (4096, 8192)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        reps = 3 if device == "cpu" else 20
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "full"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--audio-dim", type=int, default=66)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = make_batches(args.steps, args.batch, args.frames, args.audio_dim, args.device)

    torch.manual_seed(0)
    model = build(args.size, args.frames, args.audio_dim)
    flops = step_flops(model, batches[0], args.device, args.precision)
    plain = plain_loop(model, batches, args.warmup, args.device, args.precision)
    torch.manual_seed(0)
    lit = lightning_loop(build(args.size, args.frames, args.audio_dim), batches, args.warmup, args.device,
                         args.precision)
    peak = matmul_peak(args.device, args.precision)
    params = sum(p.numel() for p in model.net.parameters())
    achieved = flops / args.batch * plain / 1e9
    print(f"SMGA {args.size} ({params / 1e6:.2f} M params), batch {args.batch} x {args.frames} frames, "
          f"{args.device} {args.precision}, threads {torch.get_num_threads()}")
    print(f"  plain PyTorch loop : {plain:9.1f} samples/s")
    print(f"  Lightning module   : {lit:9.1f} samples/s   (ratio Lightning/plain = {lit / plain:.3f})")
    print(f"  FLOPs per step     : {flops / 1e9:9.3f} GFLOP (fwd+bwd, matmul/attention only)")
    print(f"  achieved (plain)   : {achieved:9.2f} GFLOP/s = {100 * achieved / peak:.1f} % of matmul peak "
          f"{peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
