"""Log videos and images to whichever TensorBoard logger a Lightning trainer has.

``SummaryWriter.add_video`` needs moviepy 1.0.3 and otherwise logs *nothing* without raising; we check
for it once and raise instead, so a run never silently loses its sample videos.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import torch


@functools.cache
def _check_moviepy() -> None:
    try:
        import moviepy.editor  # noqa: F401  (the import add_video performs)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError("TensorBoard video logging needs moviepy==1.0.3 (pip install 'moviepy==1.0.3')") from err


def tensorboard_writers(loggers: Iterable[object]) -> list:
    """The ``SummaryWriter`` of every TensorBoard logger among ``loggers``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def to_video_tensor(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T,H,W,3) uint8 / (T,3,H,W) float in [0,1] -> (1,T,3,H,W) uint8 as add_video expects."""
    v = torch.as_tensor(np.asarray(video) if isinstance(video, np.ndarray) else video.detach().cpu())
    if v.ndim != 4:
        raise ValueError(f"video must be 4-D (T,H,W,3) or (T,3,H,W), got {tuple(v.shape)}")
    if v.shape[-1] == 3 and v.shape[1] != 3:
        v = v.permute(0, 3, 1, 2)
    if v.dtype != torch.uint8:
        v = (v.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return v.unsqueeze(0)


def log_video(loggers: Iterable[object], tag: str, video: np.ndarray | torch.Tensor, step: int,
              fps: float = 25.0) -> int:
    """Log one video to every TensorBoard logger; returns how many writers received it."""
    writers = tensorboard_writers(loggers)
    if not writers:
        return 0
    _check_moviepy()
    v = to_video_tensor(video)
    for w in writers:
        w.add_video(tag, v, global_step=step, fps=int(round(fps)))
    return len(writers)


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenate equally long (T,H,W,3) uint8 videos horizontally (heights must match)."""
    t = min(v.shape[0] for v in videos)
    h = videos[0].shape[1]
    parts = []
    for i, v in enumerate(videos):
        if v.shape[1] != h:
            raise ValueError(f"video {i} has height {v.shape[1]}, expected {h}")
        parts.append(v[:t])
        if gap and i < len(videos) - 1:
            parts.append(np.full((t, h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=2)
