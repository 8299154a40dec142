"""Tiny network configs shared by several test files (one definition; imported, not collected)."""

VIDEO_NET = dict(
    codec=dict(type="pixel", factor=4), image_encoder=dict(type="conv", channels=[8, 16]),
    unet=dict(block_out_channels=[16, 32], layers_per_block=1, down_blocks=["cross", "cross"], heads=2,
              cross_attention_dim=16, norm_num_groups=8, motion_heads=2),
    pose_guider=dict(channels=[8, 8, 16]), audio_proj=dict(hidden_dim=32, tokens=3, dim=16),
    audio_attention=dict(heads=2),
)

# the stage modules the generation and checkpoint tests save and reload
SMGA_NET = dict(width=32, ff_size=64, num_layers=1, num_heads=2, audio_layers=1, dropout=0.0)
SMGA_INFO = dict(audio_feature_dim=66, window=16, frame_size=[64, 64], fps=25.0,
                 normalizer=dict(width=64, height=64, margin=0.5, legacy=False))
GEN_VIDEO_NET = {**VIDEO_NET, "unet": {**VIDEO_NET["unet"], "motion_max_seq_length": 32}}


def video_info() -> dict:
    """Data info of a 32-px, 2-level, 3-branch video model (a function: MaskConfig imports the pose package)."""
    from mmgt.pose.masks import MaskConfig

    return dict(audio_embed_shape=[5, 2, 32], num_branches=3, frame_size=[32, 32], fps=25.0,
                audio_context=2, mask=MaskConfig(cell=4).to_dict())


def save_checkpoint(module, path, hparams: dict | None = None, **extra):
    """What ModelCheckpoint writes (state, hparams, the module's own checkpoint hook), minus optimizer/loop state:
    the tiny checkpoints the generation, demo and checkpoint tests reload."""
    import lightning as L
    import torch

    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": hparams or dict(module.hparams),
            "pytorch-lightning_version": L.__version__, "global_step": extra.pop("global_step", 0),
            "datamodule_hyper_parameters": extra.pop("datamodule", {"stage1_features": {}, "stage2_features": {}}),
            **extra}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path
