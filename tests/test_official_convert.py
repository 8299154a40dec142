"""``python -m mmgt.convert`` on the official fixture checkpoints, then ``python -m mmgt.generate preset=official``
end to end (CPU): the exports rebuild the official function, run, and write an mp4 with audio; bad inputs give one
clear line and no output. Sizes come from the fixture files (another fixture set of the same layout must pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIX = Path(os.environ.get("MMGT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "mmgt_official"))
pytestmark = pytest.mark.skipif(not (FIX / "README.md").is_file(), reason=f"official fixtures not found at {FIX} "
                                "(set MMGT_OFFICIAL_FIXTURES)")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


def _cfgs() -> tuple[dict, dict]:
    return (json.loads((FIX / "smga" / "config.json").read_text()),
            json.loads((FIX / "stage2" / "config.json").read_text()))


def _sizes() -> dict:
    s1, s2 = _cfgs()
    mk = s2["unet_additional_kwargs"]["motion_module_kwargs"]
    a = s2["audioproj_kwargs"]
    return {"smga_heads": int(s1["hyper_parameters"]["num_heads"]),
            "video_heads": int(s2["reference_unet_config"]["attention_head_dim"]),
            "norm_groups": int(s2["denoising_unet_config"]["norm_num_groups"]),
            "motion_heads": int(mk["num_attention_heads"]),
            "audio_shape": [int(a["seq_len"]), int(a["blocks"]), int(a["channels"])],
            "frame_size": int(s2["pixels"]), "cross_dim": int(s2["reference_unet_config"]["cross_attention_dim"]),
            "latent": int(s2["reference_unet_config"]["in_channels"]),
            "factor": int(s2["pixels"]) // int(s2["latent_size"]),
            "wavlm_dim": int(s1["hyper_parameters"]["cond_feature_dim"]) - 35}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small random-init stand-ins of the local pretrained folders the official model needs (published layouts)."""
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Wav2Vec2Config,
        Wav2Vec2Model,
        WavLMConfig,
        WavLMModel,
    )

    d = tmp_path_factory.mktemp("weights")
    sz = _sizes()
    torch.manual_seed(0)
    n_down = int(np.log2(sz["factor"])) + 1
    AutoencoderKL(latent_channels=sz["latent"], block_out_channels=[8] * n_down, layers_per_block=1,
                  down_block_types=["DownEncoderBlock2D"] * n_down, up_block_types=["UpDecoderBlock2D"] * n_down,
                  norm_num_groups=4, sample_size=sz["frame_size"]).save_pretrained(d / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=16,
        projection_dim=sz["cross_dim"])).save_pretrained(d / "image_encoder")
    conv = dict(conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_attention_heads=2,
                intermediate_size=32)
    WavLMModel(WavLMConfig(hidden_size=sz["wavlm_dim"], num_hidden_layers=1, feat_extract_norm="layer",
                           do_stable_layer_norm=True, **conv)).save_pretrained(d / "wavlm")
    _, layers, width = sz["audio_shape"]
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=width, num_hidden_layers=layers, **conv)).save_pretrained(d / "wav2vec")
    return {"dir": d, "vae": d / "vae", "image_encoder": d / "image_encoder", "wavlm": d / "wavlm",
            "wav2vec": d / "wav2vec"}


def _convert(folders: dict[str, Path], out: Path, *extra: str) -> subprocess.CompletedProcess:
    sz = _sizes()
    args = [f"{k}={v}" for k, v in sz.items() if k in ("smga_heads", "video_heads", "norm_groups", "motion_heads",
                                                         "frame_size")]
    args.append("audio_shape=[" + ",".join(str(v) for v in sz["audio_shape"]) + "]")
    cmd = [sys.executable, "-m", "mmgt.convert", "source=official", f"smga={FIX / 'smga' / 'audio2pose_tiny_n002.pt'}",
           f"video={FIX / 'stage2' / 'net.pth'}", f"out={out}", f"vae={folders['vae']}",
           f"image_encoder={folders['image_encoder']}", f"wavlm={folders['wavlm']}", f"wav2vec={folders['wav2vec']}",
           f"hydra.run.dir={out.parent / 'convert_run'}", *args, *extra]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exports(folders: dict[str, Path]) -> Path:
    out = folders["dir"] / "converted"
    res = _convert(folders, out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_exports_compute_the_official_function(exports: Path) -> None:
    """The exported stage-1 network gives the fixture's official outputs; the stage-2 export carries the official
    settings and the converted weights."""
    from safetensors.torch import load_file

    from mmgt import checkpoints
    from mmgt.official.stage2 import convert_net

    smga = checkpoints.build_module(checkpoints.read(exports / "smga.safetensors"), "smga")
    i = load_file(str(FIX / "smga" / "inputs.safetensors"))
    o = load_file(str(FIX / "smga" / "outputs_n002.safetensors"))
    def poses(v: torch.Tensor) -> torch.Tensor:  # official flat 402-d vectors -> (..., 134, 3)
        return v.reshape(*v.shape[:-1], 134, 3)

    with torch.no_grad():
        out = smga.net(poses(i["x_t"]), i["timesteps"], i["cond_embed"], poses(i["cond_frame"]),
                       drop_audio=torch.zeros(len(i["x_t"]), dtype=torch.bool)).flatten(-2)
    err = float((out - o["out_keep_all"]).abs().max() / o["out_keep_all"].abs().max())
    assert err <= 1e-5, err
    video = checkpoints.read(exports / "video.safetensors")
    hp = video.hparams
    assert hp["attention"]["module"].endswith("OfficialAudioModule")
    assert hp["sampling"]["beta_schedule"] == "linear" and hp["sampling"]["branch_weights"] == [1.0, 1.0, 2.0]
    assert hp["data_info"]["pose_render"]["style"] == "official" and hp["data_info"]["mask"]["mode"] == "official"
    assert hp["net"]["unet"]["motion_norm"] == "per_frame"
    sz = _sizes()
    conv = convert_net(FIX / "stage2" / "net.pth", heads=sz["video_heads"], norm_groups=sz["norm_groups"],
                       motion_heads=sz["motion_heads"], audio_shape=sz["audio_shape"])
    assert all(torch.equal(video.state_dict[k], v) for k, v in conv.state_dict.items())
    report = json.loads((exports / "conversion.json").read_text())
    s1, _ = _cfgs()
    assert sorted(report["smga"]["unused"]) == sorted(s1["unused_parameters_in_forward"])


@pytest.mark.slow
def test_generate_preset_official_end_to_end(exports: Path, tmp_path: Path) -> None:
    import soundfile as sf
    from PIL import Image

    from mmgt.data.video_io import probe_video

    size = _sizes()["frame_size"]
    kp = np.load(FIX / "render" / "keypoints_px.npy")[0]  # (134, 2) pixels of the 512 canvas
    scores = np.load(FIX / "render" / "scores.npy")[0]
    np.save(tmp_path / "pose.npy", np.concatenate([kp * size / 512.0, scores[:, None]], axis=1).astype(np.float32))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(tmp_path / "me.png")
    wav, sr = sf.read(FIX / "features" / "speech_public.wav", dtype="float32")
    sf.write(tmp_path / "speech.wav", wav[: int(1.2 * sr)], sr)
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "mmgt.generate", "preset=official", f"smga.ckpt={exports / 'smga.safetensors'}",
           f"video.ckpt={exports / 'video.safetensors'}", f"image={tmp_path / 'me.png'}",
           f"audio={tmp_path / 'speech.wav'}", f"keypoints={tmp_path / 'pose.npy'}", f"out={out}", "smga.steps=2",
           "video.steps=2", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = probe_video(out)
    assert info.has_audio and (info.width, info.height) == (size, size) and info.n_frames == 30  # 1.2 s at 25 fps


@pytest.mark.slow
def test_bad_inputs_give_one_line_and_no_output(folders: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "net.pth"
    truncated.write_bytes((FIX / "stage2" / "net.pth").read_bytes()[:4096])
    cases = {
        "truncated": ([f"video={truncated}"], str(truncated)),
        "wrong kind": ([f"video={FIX / 'smga' / 'audio2pose_tiny_n002.pt'}"], "audio2pose_tiny_n002.pt"),
        "missing vae": ([f"vae={tmp_path / 'no_vae'}"], "no_vae"),
        "missing separator": ([f"vocal_separator={tmp_path / 'Kim_Vocal_2.onnx'}"], "Kim_Vocal_2.onnx"),
    }
    for name, (extra, named) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        res = _convert(folders, out, *extra)
        assert res.returncode == 1, (name, res.stdout[-2000:], res.stderr[-2000:])
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("mmgt.convert:") and named in last and "Traceback" not in res.stderr, (name, last)
        assert not out.exists() or not any(out.iterdir()), name
