"""Paper-size stage 2 measured: generation s/frame, sub-stage A/B step time and memory per lever, achieved TFLOP/s
against a measured matmul peak, and host peak RSS of checkpoint save, load and generation.

    python experiments/bench/fullsize.py --device cuda            # SD-1.5 size at 512² (one GPU, ~10 min)
    python experiments/bench/fullsize.py --smoke                  # the same code on CPU at a small size (minutes)
    python experiments/bench/fullsize.py --preset medium --only host   # host RSS of save/load at ~0.7 B params, CPU

Networks are built from their published configurations with random weights (no download): the SD-1.5 /
sd-image-variations UNet (:data:`mmgt.models.video.unet.SD15_UNET`, AnimateDiff v1-5-2 motion modules: 8 heads,
32 positions, mid block), the sd-vae-ft-mse VAE (:data:`mmgt.models.video.codec.SD_VAE_CONFIG`), the CLIP
ViT-L/14 image encoder (:data:`mmgt.models.video.encoders.CLIP_L14_CONFIG`), the ControlNet-openpose pose guider
and wav2vec2-base-shaped audio features (5 × 12 × 768 per frame); ``smoke`` and ``medium`` narrow the same
layouts. Sections (``--only``):

- ``peak``: dense matmul TFLOP/s (bf16 on CUDA, fp32 on CPU), the reference for the achieved figures below;
- ``generate``: ``VideoModule.generate`` on a ~4 s clip (100 frames at 25 fps): 30 DDIM steps, CFG 3.5 (both
  branches in one batched forward), context windows 12 / overlap 4; s/frame, UNet forwards, model FLOPs
  (``torch.utils.flop_counter``, extrapolated from 1 and 2 steps) and achieved TFLOP/s;
- ``train``: one optimiser step (AdamW on the trainable groups) of sub-stage A (batch 4, one frame) and B (1 × 12
  frames); the levers are added one at a time (fp32 → bf16 autocast → gradient checkpointing → frozen parts in
  bf16), each row with ms/step, peak GPU memory and achieved TFLOP/s (model FLOPs, recomputation not counted);
- ``host``: child processes measure the peak RSS above their post-import baseline of saving a checkpoint
  (mmgt's streaming ``AtomicCheckpointIO`` and Lightning's stock ``TorchCheckpointIO``), loading it
  (``mmgt.checkpoints``: memory-mapped, meta-device module, ``assign=True``; and the copy it replaces: read into
  memory, random-init module, ``load_state_dict``) and generating after the load; each as a ratio to the weights.

Every figure and ratio is printed from this one run; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

AUDIO = {"full": (5, 12, 768), "medium": (5, 12, 768), "smoke": (5, 2, 32)}
PRESETS: dict[str, dict[str, Any]] = {
    # frames: a ~4 s clip at 25 fps; context 12 / overlap 4; sub-stage A batch 4 x 1 frame, B 1 x 12 frames
    "full": dict(size=512, frames=100, steps=30, guidance=3.5, context=12, overlap=4, batch_a=4, frames_b=12,
                 train_steps=5),
    "medium": dict(size=256, frames=24, steps=4, guidance=3.5, context=12, overlap=4, batch_a=2, frames_b=6,
                   train_steps=2),
    "smoke": dict(size=64, frames=10, steps=3, guidance=3.5, context=4, overlap=2, batch_a=2, frames_b=4,
                  train_steps=2),
}


def net_config(preset: str) -> dict[str, Any]:
    """The ``size.video`` block of a preset, built without weights from the published configurations."""
    from mmgt.models.video.codec import SD_VAE_CONFIG
    from mmgt.models.video.encoders import CLIP_L14_CONFIG
    from mmgt.models.video.unet import SD15_UNET

    if preset == "smoke":
        vae = {**SD_VAE_CONFIG, "block_out_channels": [16, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
        clip = {**CLIP_L14_CONFIG, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                "num_hidden_layers": 2, "image_size": 32, "patch_size": 16, "projection_dim": 32}
        unet = {**SD15_UNET, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "heads": 2,
                "cross_attention_dim": 32, "norm_num_groups": 8, "motion_heads": 2}
        pose, audio = [8, 16, 16, 32], dict(hidden_dim=32, tokens=4, dim=32)
    else:
        vae, clip, unet = dict(SD_VAE_CONFIG), dict(CLIP_L14_CONFIG), dict(SD15_UNET)
        if preset == "medium":  # 0.4x the UNet widths (~0.16x its parameters): ~0.7 B parameters in all
            unet["block_out_channels"] = [128, 256, 512, 512]
        pose, audio = [16, 32, 96, 256], dict(hidden_dim=512, tokens=32, dim=768)
    vae = {k: list(v) if isinstance(v, tuple) else v for k, v in vae.items()}
    return dict(codec=dict(type="vae", config=vae, scaling_factor=0.18215, factor=8),
                image_encoder=dict(type="clip", config=clip), unet={**unet, "motion_norm": "per_frame"},
                pose_guider=dict(channels=pose), audio_proj=audio, audio_attention=dict(heads=8 if preset != "smoke"
                                                                                          else 2))


def build(preset: str, substage: str, device: str = "cpu", **kw: Any):
    from mmgt.lit.video import VideoModule

    p = PRESETS[preset]
    torch.manual_seed(0)
    m = VideoModule(net_config(preset), attention={"type": "mm_haa", "blocks": ["down"]}, substage=substage,
                    load_weights=False, data_info={"audio_embed_shape": list(AUDIO[preset]), "num_branches": 3,
                                                   "frame_size": [p["size"], p["size"]], "fps": 25.0},
                    optim={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5},
                    sampling=dict(steps=p["steps"], guidance=p["guidance"], context_frames=p["context"],
                                  context_overlap=p["overlap"]), **kw)
    return m.to(device)


def make_batch(preset: str, b: int, n: int, device: str) -> dict[str, Any]:
    size = PRESETS[preset]["size"]
    h = size // 8
    g = torch.Generator().manual_seed(0)
    out = dict(frames=torch.rand(b, n, 3, size, size, generator=g) * 2 - 1,
               pose_images=torch.rand(b, n, 3, size, size, generator=g),
               masks=torch.rand(b, 3, n, h, h, generator=g),
               ref_frame=torch.rand(b, 3, size, size, generator=g) * 2 - 1,
               audio_emb=torch.randn(b, n, *AUDIO[preset], generator=g))
    return {k: v.to(device) for k, v in out.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def n_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def flops_of(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


# ------------------------------------------------------------------------------------------------- peak


def matmul_peak(device: str, smoke: bool) -> dict[str, Any]:
    """Dense matmul throughput: bf16 on CUDA (the training/generation dtype), fp32 on CPU."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    n = 512 if smoke else (8192 if device.startswith("cuda") else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - t0 < (0.3 if smoke else 2.0):
        a @ b
        reps += 1
    sync(device)
    tflops = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": tflops}


# --------------------------------------------------------------------------------------------- generate


def generation(preset: str, device: str, autocast: str | None) -> dict[str, Any]:
    p = PRESETS[preset]
    m = build(preset, "b", device, autocast=autocast).eval()
    calls: list[int] = []
    m.net.register_forward_pre_hook(lambda mod, args: calls.append(int(args[0].shape[0])))
    batch = make_batch(preset, 1, p["frames"], device)
    short = make_batch(preset, 1, min(p["frames"], p["context"]), device)
    gen = lambda b, **o: m.generate(b, generator=torch.Generator(device=device).manual_seed(0), **o)  # noqa: E731
    gen(short, steps=1)  # warm-up (kernels, allocator)
    f1, f2 = flops_of(lambda: gen(batch, steps=1)), flops_of(lambda: gen(batch, steps=2))
    flops = f1 + (p["steps"] - 1) * (f2 - f1)  # fixed part (reference, VAE) + steps x one denoising step
    calls.clear()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    out = gen(batch)
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    assert out.shape[1] == p["frames"] and torch.isfinite(out).all()
    return {"frames": p["frames"], "size": p["size"], "steps": p["steps"], "guidance": p["guidance"],
            "context": [p["context"], p["overlap"]], "seconds": dt, "s_per_frame": dt / p["frames"],
            "unet_forwards": len(calls), "forward_batch": max(calls), "tflop": flops / 1e12,
            "achieved_tflops": flops / dt / 1e12, "peak_gpu_gib": peak, "params": sum(t.numel() for t in
                                                                                     m.parameters())}


# ------------------------------------------------------------------------------------------------ train

LEVERS = ["fp32", "+bf16 autocast", "+gradient checkpointing", "+frozen parts bf16"]


def apply_lever(m, lever: str) -> None:
    if lever == "+bf16 autocast":
        m.hparams.autocast = "bf16"  # VideoModule._autocast reads it per forward
    elif lever == "+gradient checkpointing":
        m.net.enable_gradient_checkpointing()
    elif lever == "+frozen parts bf16":
        with torch.no_grad():
            for prm in m.net.parameters():
                if not prm.requires_grad:
                    prm.data = prm.data.to(torch.bfloat16)


def training(preset: str, substage: str, device: str) -> list[dict[str, Any]]:
    p = PRESETS[preset]
    m = build(preset, substage, device).train()
    b, n = (p["batch_a"], 1) if substage == "a" else (1, p["frames_b"])
    batch = make_batch(preset, b, n, device)
    params = [prm for _, prm in m._trainable_params()]

    def step(opt: torch.optim.Optimizer) -> None:
        loss = m.diffusion_loss(batch)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model_flops = flops_of(lambda: m.diffusion_loss(batch)[0].backward())  # forward + backward, no recompute
    for prm in params:
        prm.grad = None
    rows = []
    for lever in LEVERS:
        apply_lever(m, lever)
        opt = torch.optim.AdamW(params, lr=1e-5)
        row: dict[str, Any] = {"substage": substage, "lever": lever, "batch": f"{b} x {n}"}
        try:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            reset_peak_rss()
            step(opt)  # warm-up; allocates the optimiser state
            sync(device)
            t0 = time.perf_counter()
            for _ in range(p["train_steps"]):
                step(opt)
            sync(device)
            dt = (time.perf_counter() - t0) / p["train_steps"]
            row.update(ms_per_step=dt * 1e3, achieved_tflops=model_flops / dt / 1e12, peak_host_gib=peak_rss() / 2**10,
                       peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None)
        except torch.OutOfMemoryError:
            row.update(ms_per_step=None, achieved_tflops=None, peak_gpu_gib="OOM")
        except RuntimeError as err:  # a lever this device cannot run (reported, the others still measured)
            row.update(ms_per_step=None, achieved_tflops=None, peak_gpu_gib=None, error=str(err).splitlines()[0])
        del opt
        rows.append(row)
    for r in rows:
        r["tflop_per_step"] = model_flops / 1e12
        r["trainable"] = sum(prm.numel() for prm in params)
    return rows


# ------------------------------------------------------------------------------------------------- host


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark of this process (Linux: ``/proc/self/clear_refs`` = 5); the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS") if Path("/proc/self/status").exists() else 0.0


def peak_rss() -> float:
    """Peak RSS (MiB) since the last :func:`reset_peak_rss` (the process's whole life where it cannot be reset)."""
    if Path("/proc/self/status").exists():
        return _status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(task: str, preset: str, ckpt: str, device: str) -> dict[str, Any]:
    """One host-memory measurement in a fresh process: peak RSS above the post-import baseline."""
    from mmgt import checkpoints
    from mmgt.lit import video  # noqa: F401 - imports counted in the baseline

    base = reset_peak_rss()
    out: dict[str, Any] = {"task": task, "baseline_mib": base}
    if task in ("save", "save_stock"):
        import lightning as L
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        from mmgt.lit.checkpoint_io import AtomicCheckpointIO

        m = build(preset, "b")
        out["weights_mib"] = n_bytes(m) / 2**20
        built = peak_rss() - base
        reset_peak_rss()  # the save's peak: the module held + whatever the save allocates
        ck = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "global_step": 0,
              "pytorch-lightning_version": L.__version__, "datamodule_hyper_parameters": {}}
        m.on_save_checkpoint(ck)
        io = AtomicCheckpointIO() if task == "save" else TorchCheckpointIO()
        t0 = time.perf_counter()
        io.save_checkpoint(ck, ckpt)
        out.update(seconds=time.perf_counter() - t0, file_mib=os.path.getsize(ckpt) / 2**20,
                   build_peak_mib=built)
    elif task in ("load", "generate"):
        t0 = time.perf_counter()
        m = checkpoints.build_module(checkpoints.read(ckpt), "video")
        out["seconds"] = time.perf_counter() - t0
        out["weights_mib"] = n_bytes(m) / 2**20
        if task == "generate":
            p = PRESETS[preset]
            m = m.to(device)
            m.generate(make_batch(preset, 1, p["context"], device), steps=2,
                       generator=torch.Generator(device=device).manual_seed(0))
    elif task == "load_copy":  # what loading did before: the file read into memory, a random-init module, a copy
        from mmgt.lit.video import VideoModule

        t0 = time.perf_counter()
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
        hp = {**raw["hyper_parameters"], "init_from": None, "load_weights": False}
        hp.pop("lr_scheduler", None)
        m = VideoModule(**hp)
        m.load_state_dict(raw["state_dict"], strict=True)
        out["seconds"] = time.perf_counter() - t0
        out["weights_mib"] = n_bytes(m) / 2**20
    out["peak_mib"] = peak_rss() - base
    out["ratio"] = out["peak_mib"] / out["weights_mib"]
    return out


def host(preset: str, device: str) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("MMGT_BENCH_TMP")) as tmp:
        ckpt = str(Path(tmp) / "b.ckpt")
        for task in ("save_stock", "save", "load", "load_copy", "generate"):
            cmd = [sys.executable, __file__, "--child", task, "--preset", preset, "--ckpt", ckpt, "--device",
                   device if task == "generate" else "cpu", "--threads", str(torch.get_num_threads())]
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode or not line:
                raise RuntimeError(f"host child {task} failed ({res.returncode}):\n{res.stderr[-3000:]}")
            rows.append(json.loads(line[-1]))
    return rows


# ------------------------------------------------------------------------------------------------- main


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None:
        return "-"
    return v if isinstance(v, str) else format(v, fmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="preset smoke on CPU (what the test runs)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: full (smoke with --smoke)")
    ap.add_argument("--device", default=None, help="default: cuda when available (cpu with --smoke)")
    ap.add_argument("--only", default="peak,generate,train,host", help="sections, comma separated")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 with --smoke, tiny nets on a busy CPU; else torch's)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    preset = args.preset or ("smoke" if args.smoke else "full")
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    threads = args.threads if args.threads is not None else (1 if preset == "smoke" else 0)
    if threads:
        torch.set_num_threads(threads)
    if args.child:
        print(json.dumps(child(args.child, preset, args.ckpt, device)))
        return 0
    autocast = "bf16" if device.startswith("cuda") else None
    only = set(args.only.split(","))
    res: dict[str, Any] = {"preset": preset, "device": device,
                           "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    print(f"preset {preset}, device {device}{' (' + res['gpu'] + ')' if res['gpu'] else ''}")
    peak = None
    if "peak" in only:
        res["peak"] = peak = matmul_peak(device, preset == "smoke")
        print(f"[peak] {peak['dtype']} matmul {peak['n']}³: {peak['tflops']:.3g} TFLOP/s")
    if "generate" in only:
        g = res["generate"] = generation(preset, device, autocast)
        pct = f" = {100 * g['achieved_tflops'] / peak['tflops']:.1f} % of the matmul peak" if peak else ""
        print(f"[generate] {g['frames']} frames {g['size']}², {g['steps']} DDIM steps, CFG {g['guidance']}, context "
              f"{g['context'][0]}/{g['context'][1]}, autocast {autocast}: {g['seconds']:.2f} s = "
              f"{g['s_per_frame']:.4f} s/frame; {g['unet_forwards']} UNet forwards of batch {g['forward_batch']}; "
              f"{g['tflop']:.3g} TFLOP -> {g['achieved_tflops']:.3g} TFLOP/s{pct}; "
              f"peak GPU {_f(g['peak_gpu_gib'])} GiB; {g['params'] / 1e9:.3f} B params")
    if "train" in only:
        rows = res["train"] = training(preset, "a", device) + training(preset, "b", device)
        print(f"[train] {'sub':>3} {'lever':<26} {'batch':>7} {'ms/step':>9} {'GPU GiB':>8} {'host GiB':>8} "
              f"{'TFLOP/s':>8} {'% peak':>7} {'x fp32':>7}")
        for r in rows:
            base = next(x for x in rows if x["substage"] == r["substage"] and x["lever"] == "fp32")
            speed = base["ms_per_step"] / r["ms_per_step"] if r["ms_per_step"] and base["ms_per_step"] else None
            pct = 100 * r["achieved_tflops"] / peak["tflops"] if peak and r["achieved_tflops"] else None
            r["speedup_vs_fp32"], r["pct_of_peak"] = speed, pct
            print(f"[train] {r['substage']:>3} {r['lever']:<26} {r['batch']:>7} {_f(r['ms_per_step'], '.1f'):>9} "
                  f"{_f(r['peak_gpu_gib']):>8} {_f(r.get('peak_host_gib')):>8} {_f(r['achieved_tflops'], '.3g'):>8} "
                  f"{_f(pct, '.1f'):>7} {_f(speed):>7}"
                  f"{'  ' + r['error'] if r.get('error') else ''}")
        for s in ("a", "b"):
            r = next(x for x in rows if x["substage"] == s)
            print(f"[train] sub-stage {s}: {r['trainable'] / 1e6:.1f} M trainable, {r['tflop_per_step']:.3g} TFLOP "
                  "per step (forward + backward)")
    if "host" in only:
        rows = res["host"] = host(preset, device)
        by = {r["task"]: r for r in rows}
        for r in rows:
            took = f", {r['seconds']:.1f} s" if "seconds" in r else ""
            print(f"[host] {r['task']:<10} peak RSS above baseline {r['peak_mib']:9.0f} MiB = {r['ratio']:.2f}x the "
                  f"weights ({r['weights_mib']:.0f} MiB){took}")
        print(f"[host] load: mmap + meta + assign {by['load']['ratio']:.2f}x vs copy {by['load_copy']['ratio']:.2f}x "
              f"(ratio {by['load_copy']['peak_mib'] / max(by['load']['peak_mib'], 1e-9):.2f}); save: streaming "
              f"{by['save']['ratio']:.2f}x vs stock {by['save_stock']['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=lambda v: None if isinstance(v, float) and
                                              not math.isfinite(v) else str(v)))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
