"""Released MMGT weights -> mmgt exports that ``mmgt.generate`` runs and ``model.init_from`` fine-tunes.

:func:`export_official` converts the stage-1 file (``audio2pose_best_model.pt``) and/or the stage-2 Net
(``net-32500.pth``) with the strict converters of :mod:`mmgt.official.smga` / :mod:`mmgt.official.stage2`, builds the
mmgt modules with every setting under which they compute the official function (legacy SMGA switches, float32
schedule tables, truncated DDIM grid; MMGT's audio block, per-frame motion GroupNorm, linear inference betas, branch
weights [1, 1, 2], ``1 + lips`` routing, official pose drawing and masks, WavLM + EDGE-35 stage-1 features,
25-fps wav2vec input), and writes them as safetensors exports (kind, format version and settings in the metadata).
Every output is written atomically after the whole conversion succeeded: a bad input leaves no partial output.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmgt import checkpoints
from mmgt.data.video_io import atomic_path
from mmgt.official import Conversion, ConversionError

# the official stage-1 wrapper (GestureDiffusion, LMDM) and sampler: float32 tables, truncated grid, 50 steps,
# eta 1, guidance 2, x0 clipping; the loss as plain means (fine-tuning)
OFFICIAL_SMGA = {
    "diffusion": {"timesteps": 1000, "cond_drop_prob": 0.25, "clip_x0": True, "schedule_dtype": "float32",
                  "time_grid": "trunc"},
    "sampling": {"steps": 50, "eta": 1.0, "guidance": 2.0, "overlap": 0, "val_steps": 20, "val_batches": 1,
                 "seed": 0},
    "loss": {"pos": 1.0, "vel": 1.0, "acc": 1.0, "face": 3.0, "reduction": "all"},
    "ema": {"enabled": False},
    "optim": {"_target_": "timm.optim.Adan", "_partial_": True, "lr": 2e-4, "weight_decay": 0.02},
}
OFFICIAL_CANVAS = 512  # the official pose normalisation (v + 200) / 500 - 1 is in pixels of a 512 canvas


def official_mask() -> dict[str, Any]:
    """The inference mask routing of the original (``conf/mask/official.yaml``: full = 1 + lips)."""
    from omegaconf import OmegaConf

    from mmgt.pose.masks import MaskConfig
    from mmgt.utils.paths import CONF_DIR

    cfg = OmegaConf.load(Path(CONF_DIR) / "mask" / "official.yaml")
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "defaults"}
    return MaskConfig.from_dict(plain).to_dict()


def _require_dir(path: str | Path | None, key: str, what: str) -> str:
    if not path:
        raise ConversionError(f"`{key}` is not set: the stage-2 export needs the {what} as a local folder "
                              f"(set `{key}=<folder>`; nothing is downloaded)")
    p = Path(str(path)).expanduser()
    if not (p / "config.json").is_file():
        raise ConversionError(f"{p}: not a {what} folder (no config.json; config key `{key}`)")
    return str(p)


def _folder_config(path: str, cls: str) -> dict[str, Any]:
    """The architecture of a local pretrained folder, recorded in the export so generation rebuilds it without the
    folder (the weights travel in the export)."""
    if cls == "AutoencoderKL":
        from diffusers import AutoencoderKL

        cfg = dict(AutoencoderKL.load_config(path))
        keep = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep}
    from transformers import CLIPVisionConfig

    full = CLIPVisionConfig.from_pretrained(path).to_dict()
    ref = CLIPVisionConfig().to_dict()
    return {k: v for k, v in full.items() if k in ref and not k.startswith("_") and k not in ("transformers_version",
                                                                                              "model_type")}


def smga_module(conv: Conversion, frame_size: int = OFFICIAL_CANVAS) -> Any:
    """An SMGAModule that computes the official stage 1 with the converted weights loaded."""
    from mmgt.lit.smga import SMGAModule

    cfg = dict(conv.config)
    info = {"audio_feature_dim": int(cfg["audio_dim"]), "window": int(cfg["max_len"]),
            "frame_size": [frame_size, frame_size], "fps": 25.0,
            "normalizer": {"width": OFFICIAL_CANVAS, "height": OFFICIAL_CANVAS, "margin": 0.5, "legacy": True}}
    module = SMGAModule(cfg, data_info=info, **OFFICIAL_SMGA)
    checkpoints.check_state(Path(conv.source), module.net, conv.state_dict, "smga")
    module.net.load_state_dict(conv.state_dict)
    return module.eval()


def video_module(conv: Conversion, vae: str | Path | None, image_encoder: str | Path | None,
                 frame_size: int = OFFICIAL_CANVAS) -> Any:
    """A sub-stage-B VideoModule that computes the official stage 2 with the converted weights loaded; the VAE and
    CLIP image encoder come from local diffusers / transformers folders."""
    from mmgt.lit.video import VideoModule
    from mmgt.official.stage2 import EXTERNAL, official_video_hparams

    hp = official_video_hparams(conv)
    net = {k: (dict(v) if isinstance(v, dict) else v) for k, v in hp["net"].items()}
    net["codec"]["path"] = _require_dir(vae, "vae", "Stable Diffusion VAE (e.g. sd-vae-ft-mse)")
    net["image_encoder"]["path"] = _require_dir(image_encoder, "image_encoder",
                                                "CLIP image encoder (sd-image-variations-diffusers/image_encoder)")
    net["codec"]["config"] = _folder_config(net["codec"]["path"], "AutoencoderKL")
    net["image_encoder"]["config"] = _folder_config(net["image_encoder"]["path"], "CLIPVisionModelWithProjection")
    factor = int(net["codec"].get("factor", 8))
    if frame_size % (factor * 2 ** (len(net["unet"]["block_out_channels"]) - 1)):
        raise ConversionError(f"frame_size={frame_size} must be divisible by the UNet's total downsampling")
    mask = official_mask()
    info = {**hp["data_info"], "frame_size": [frame_size, frame_size], "fps": 25.0, "audio_context": 2, "mask": mask,
            "mask_branches": list(mask["branches"]), "pose_render": {"style": "official"}}
    module = VideoModule(net, attention=hp["attention"], loss=hp["loss"], substage="b", scheduler=hp["scheduler"],
                         sampling=hp["sampling"], ema={"enabled": False}, data_info=info, load_weights=True)
    missing, unexpected = module.net.load_state_dict(conv.state_dict, strict=False)
    left = [k for k in missing if not k.startswith(EXTERNAL)]
    if left or unexpected:
        raise ConversionError(f"{conv.source}: converted weights do not fit the video network (unfilled {left[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return module.eval()


def export_official(out: str | Path, smga: str | Path | None = None, video: str | Path | None = None, *,
                    vae: str | Path | None = None, image_encoder: str | Path | None = None,
                    wavlm: str | Path | None = None, wav2vec: str | Path | None = None,
                    vocal_separator: str | Path | None = None, frame_size: int = OFFICIAL_CANVAS,
                    smga_heads: int = 8, video_heads: int = 8, norm_groups: int = 32, motion_heads: int = 8,
                    audio_shape: Sequence[int] = (5, 12, 768),
                    echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Convert the released files and write ``<out>/smga.safetensors``, ``<out>/video.safetensors`` and
    ``<out>/conversion.json`` (what was converted, what was dropped and why). Returns the written paths."""
    from mmgt.official.smga import convert_smga
    from mmgt.official.stage2 import convert_net

    if smga is None and video is None:
        raise ConversionError("nothing to convert: give `smga=<audio2pose_best_model.pt>` and/or "
                              "`video=<net-32500.pth>`")
    out = Path(out)
    modules: dict[str, tuple[Any, dict[str, Any]]] = {}
    report: dict[str, Any] = {"frame_size": frame_size}
    if smga is not None:
        conv = convert_smga(smga, num_heads=smga_heads)
        echo(conv.report())
        feats = {"kind": "official", "backend": "wavlm", "pretrained_path": str(wavlm) if wavlm else None}
        modules["smga"] = (smga_module(conv, frame_size), {"stage1_features": feats})
        report["smga"] = {"source": str(smga), "tensors": len(conv.state_dict), "unused": conv.unused,
                          "config": conv.config}
    if video is not None:
        conv = convert_net(video, heads=video_heads, norm_groups=norm_groups, motion_heads=motion_heads,
                           audio_shape=audio_shape)
        echo(conv.report())
        if vocal_separator is not None and not Path(str(vocal_separator)).is_file():
            raise ConversionError(f"{vocal_separator}: vocal separation model not found (config key "
                                  "`vocal_separator`; the original uses Kim_Vocal_2.onnx, or set it to null)")
        feats = {"pretrained_path": str(wav2vec) if wav2vec else None, "layers": "all", "resample": "before",
                 "legacy_align_corners": True, "vocal_separator": str(vocal_separator) if vocal_separator else None}
        modules["video"] = (video_module(conv, vae, image_encoder, frame_size), {"stage2_features": feats})
        report["video"] = {"source": str(video), "tensors": len(conv.state_dict), "unused": conv.unused,
                           "config": conv.config}
    written: dict[str, Path] = {}
    for kind, (module, dm) in modules.items():
        written[kind] = checkpoints.write_export(module.net, kind, module.hparams, dm, out / f"{kind}.safetensors")
        echo(f"wrote {written[kind]}")
    with atomic_path(out / "conversion.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    written["report"] = out / "conversion.json"
    return written


__all__ = ["OFFICIAL_SMGA", "export_official", "official_mask", "smga_module", "video_module"]
