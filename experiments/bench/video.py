"""Stage-2 video model throughput: sub-stage-B training step (Lightning vs a plain PyTorch loop on the same module
and batch), and generation frames/s.

    python experiments/bench/video.py [--steps 10 --frames 4 --batch 2 --size 32 --gen-steps 10]
    python experiments/bench/video.py --full --device cuda   # SD-1.5 layout at 512², random init (GPU)

Batches are synthetic tensors of the stage-2 contract held in memory, so data loading is excluded (the DataModule
has its own benchmark); both training paths run the same ``VideoModule.training_step`` with AdamW. Prints seconds
per step of each, their ratio (Lightning overhead), and generated frames/s for DDIM with CFG.
"""

from __future__ import annotations

import argparse
import time

import torch

TINY_NET = dict(
    codec=dict(type="pixel", factor=2), image_encoder=dict(type="conv", channels=[16, 32]),
    unet=dict(block_out_channels=[32, 64], layers_per_block=1, down_blocks=["cross", "cross"], heads=4,
              cross_attention_dim=32, norm_num_groups=8, motion_heads=2),
    pose_guider=dict(channels=[16, 32]), audio_proj=dict(hidden_dim=64, tokens=4, dim=32),
    audio_attention=dict(heads=2),
)
FULL_NET = dict(
    codec=dict(type="vae"), image_encoder=dict(type="clip"),
    unet=dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, down_blocks=["cross"] * 3 + ["plain"],
              heads=8, cross_attention_dim=768, norm_num_groups=32, motion_heads=8, motion_max_seq_length=32),
    pose_guider=dict(channels=[16, 32, 96, 256]), audio_proj=dict(hidden_dim=512, tokens=32, dim=768),
    audio_attention=dict(heads=8),
)


def make_batch(b: int, n: int, size: int, factor: int, audio: tuple[int, int, int], k: int = 3,
               device: str = "cpu") -> dict:
    h = size // factor
    masks = torch.rand(b, k, n, h, h, device=device)
    return dict(frames=torch.rand(b, n, 3, size, size, device=device) * 2 - 1,
                pose_images=torch.rand(b, n, 3, size, size, device=device), masks=masks,
                ref_frame=torch.rand(b, 3, size, size, device=device) * 2 - 1,
                audio_emb=torch.randn(b, n, *audio, device=device), clip_id=[f"c{i}" for i in range(b)])


def build(args: argparse.Namespace, audio: tuple[int, int, int]):
    from mmgt.lit.video import VideoModule

    net = FULL_NET if args.full else TINY_NET
    return VideoModule(net, attention={"type": "mm_haa", "blocks": ["down"]},
                       loss={"snr_gamma": 5.0, "noise_offset": 0.05}, optim={"lr": 1e-5}, substage="b",
                       sampling={"steps": args.gen_steps, "guidance": 3.5, "context_frames": 12, "context_overlap": 4},
                       gradient_checkpointing=args.full, autocast="bf16" if args.full else None,
                       load_weights=False, data_info={"audio_embed_shape": list(audio), "num_branches": 3})


def plain_loop(m, batch: dict, steps: int) -> float:
    opt = m.configure_optimizers()["optimizer"]
    m.train()
    for i in range(steps + 1):
        if i == 1:  # first step = warm-up
            sync(batch)
            t0 = time.perf_counter()
        loss = m.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(batch)
    return (time.perf_counter() - t0) / steps


def lightning_loop(m, batch: dict, steps: int, device: str) -> float:
    import lightning as L

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, i):
            if i == 1:
                sync(batch)
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            sync(batch)
            self.dt = (time.perf_counter() - self.t0) / steps

    timer = Timer()
    data = [batch] * (steps + 1)
    loader = torch.utils.data.DataLoader(data, batch_size=None, collate_fn=lambda x: x)
    trainer = L.Trainer(max_steps=steps + 1, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], limit_val_batches=0)
    trainer.fit(m, loader)
    return timer.dt


def sync(batch: dict) -> None:
    if batch["frames"].is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--gen-steps", type=int, default=10)
    p.add_argument("--gen-frames", type=int, default=16)
    p.add_argument("--full", action="store_true", help="SD-1.5 layout, random init (use --device cuda --size 512)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    audio = (5, 12, 768) if args.full else (5, 2, 32)
    factor = 8 if args.full else 2
    torch.manual_seed(0)
    m = build(args, audio).to(args.device)
    batch = make_batch(args.batch, args.frames, args.size, factor, audio, device=args.device)
    print(f"stage B, {'full (SD-1.5)' if args.full else 'tiny'}, {args.device}: batch {args.batch} x {args.frames} "
          f"frames x {args.size}², trainable {m.n_trainable:,} params")
    t_plain = plain_loop(m, batch, args.steps)
    t_light = lightning_loop(m, batch, args.steps, args.device)
    print(f"train step  plain loop {t_plain * 1e3:8.1f} ms   Lightning {t_light * 1e3:8.1f} ms   "
          f"ratio Lightning/plain {t_light / t_plain:.3f}")
    print(f"            {args.batch * args.frames / t_plain:.1f} training frames/s (plain)")
    m.eval()
    gb = make_batch(1, args.gen_frames, args.size, factor, audio, device=args.device)
    g = torch.Generator(device=args.device).manual_seed(0)
    m.generate(make_batch(1, 2, args.size, factor, audio, device=args.device), generator=g, steps=1)  # warm-up
    sync(gb)
    t0 = time.perf_counter()
    out = m.generate(gb, generator=g)
    sync(gb)
    dt = time.perf_counter() - t0
    print(f"generation  {args.gen_frames} frames, {args.gen_steps} DDIM steps, CFG 3.5, context 12/4: {dt:.2f} s = "
          f"{args.gen_frames / dt:.2f} frames/s  (output {tuple(out.shape)})")
    if args.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
