"""`python -m mmgt.evaluate ckpt_path=...`: a stage-2 checkpoint scored on a split of its recorded DataModule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from mmgt.data.datamodule import PATSDataModule
from mmgt.lit.video import VideoModule
from mmgt.pose.masks import MaskConfig

REPO = Path(__file__).resolve().parents[1]
NET = dict(codec=dict(type="pixel", factor=2), image_encoder=dict(type="conv", channels=[8, 16]),
           unet=dict(block_out_channels=[16, 32], layers_per_block=1, down_blocks=["cross", "cross"], heads=2,
                     cross_attention_dim=16, norm_num_groups=8, motion_heads=2, motion_max_seq_length=32),
           pose_guider=dict(channels=[8, 16]), audio_proj=dict(hidden_dim=32, tokens=3, dim=16),
           audio_attention=dict(heads=2))


@pytest.mark.slow
def test_evaluate_checkpoint_on_test_split(synthetic_corpus: Path, tmp_path: Path) -> None:
    dm = PATSDataModule(synthetic_corpus, "video", n_frames=4, stride=16, batch_size=2, image_size=32,
                        mask=MaskConfig(cell=2).to_dict(), progress=False)
    model = VideoModule(NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                        data_info=dm.info(), sampling={"steps": 2, "guidance": 1.0, "context_frames": 2,
                                                       "context_overlap": 0})
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "video.ckpt"
    trainer.save_checkpoint(ckpt)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "mmgt.evaluate", f"ckpt_path={ckpt}", "split=test", "metrics=quick",
           "max_batches=1", "progress=false", f"hydra.run.dir={out}", f"paths.root_dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((out / "metrics.json").read_text())
    m = report["metrics"]
    assert report["split"] == "test" and report["windows"] == 2
    assert 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1 and m["lpips_randinit"] >= 0
    assert "fvd" not in m and any(k.startswith("fvd_") and k.endswith("_randinit") for k in m)  # never the bare name
    # a stage-1 checkpoint (or any non-video file) is refused with a clear message
    bad = subprocess.run([*cmd[:3], f"ckpt_path={tmp_path / 'missing.ckpt'}", *cmd[4:]], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "checkpoint not found" in bad.stdout + bad.stderr
