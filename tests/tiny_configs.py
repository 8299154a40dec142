"""Tiny network configs shared by several test files (one definition; imported, not collected)."""

VIDEO_NET = dict(
    codec=dict(type="pixel", factor=4), image_encoder=dict(type="conv", channels=[8, 16]),
    unet=dict(block_out_channels=[16, 32], layers_per_block=1, down_blocks=["cross", "cross"], heads=2,
              cross_attention_dim=16, norm_num_groups=8, motion_heads=2),
    pose_guider=dict(channels=[8, 8, 16]), audio_proj=dict(hidden_dim=32, tokens=3, dim=16),
    audio_attention=dict(heads=2),
)
