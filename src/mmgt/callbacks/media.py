"""Log videos (with captions and their audio) to whichever TensorBoard logger a Lightning trainer has.

TensorBoard shows a video as an animated GIF in an image summary. ``SummaryWriter.add_video`` encodes it through
moviepy 1.0.3, which passes the frame time to imageio in seconds where current imageio expects milliseconds: every
frame gets a 0 ms delay and the clip does not play at its frame rate. :func:`gif_bytes` encodes the GIF with Pillow
(the frame delay in whole milliseconds, 40 ms at 25 fps) and :func:`log_video` writes it in the same image summary
``add_video`` writes, so no moviepy is needed. A panel's parts can be labelled in the frames
(:func:`side_by_side` ``labels``), its caption is a text summary beside it and its audio an audio summary.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch


def tensorboard_writers(loggers: Iterable[object]) -> list:
    """The ``SummaryWriter`` of every TensorBoard logger among ``loggers``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def to_video_tensor(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T,H,W,3) uint8 / (T,3,H,W) float in [0,1] -> (1,T,3,H,W) uint8 (the layout ``add_video`` takes)."""
    v = torch.as_tensor(np.asarray(video) if isinstance(video, np.ndarray) else video.detach().cpu())
    if v.ndim != 4:
        raise ValueError(f"video must be 4-D (T,H,W,3) or (T,3,H,W), got {tuple(v.shape)}")
    if v.shape[-1] == 3 and v.shape[1] != 3:
        v = v.permute(0, 3, 1, 2)
    if v.dtype != torch.uint8:
        v = (v.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return v.unsqueeze(0)


def gif_bytes(frames: np.ndarray, fps: float = 25.0) -> bytes:
    """(T, H, W, 3) uint8 -> an animated GIF that loops, each frame shown ``1000 / fps`` ms (rounded to the 10 ms
    GIF delays are stored in: 40 ms = 25 fps exactly)."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got {frames.shape}")
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000.0 / fps)),
                   loop=0)
    return buf.getvalue()


def video_summary(tag: str, video: np.ndarray | torch.Tensor, fps: float = 25.0):  # -> Summary
    """The TensorBoard image summary of a video as an animated GIF (what ``add_video`` writes, with the right frame
    delay)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = to_video_tensor(video)[0].permute(0, 2, 3, 1).numpy()
    t, h, w, c = frames.shape
    img = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
    return Summary(value=[Summary.Value(tag=tag, image=img)])


def log_video(loggers: Iterable[object], tag: str, video: np.ndarray | torch.Tensor, step: int, fps: float = 25.0,
              caption: str | None = None, audio: np.ndarray | torch.Tensor | None = None,
              sample_rate: int = 16000) -> int:
    """Log one video to every TensorBoard logger, with its ``caption`` (a text summary ``<tag>/caption``) and its
    ``audio`` (mono samples in [-1, 1], an audio summary ``<tag>/audio``); returns how many writers received it."""
    writers = tensorboard_writers(loggers)
    if not writers:
        return 0
    summary = video_summary(tag, video, fps)
    wave = None
    if audio is not None:
        wave = torch.as_tensor(np.asarray(audio) if isinstance(audio, np.ndarray) else audio.detach().cpu())
        wave = wave.float().reshape(-1).clamp(-1.0, 1.0)
    for w in writers:
        w._get_file_writer().add_summary(summary, step)  # what add_video does with its own (0 ms delay) GIF
        if caption:
            w.add_text(f"{tag}/caption", caption, global_step=step)
        if wave is not None and wave.numel():
            w.add_audio(f"{tag}/audio", wave, global_step=step, sample_rate=int(sample_rate))
    return len(writers)


def label_strip(label: str, width: int, height: int | None = None) -> np.ndarray:
    """(h, width, 3) uint8: ``label`` in black on white, the font as large as fits (the text cut when even the
    smallest is too wide); ``height`` defaults to a size that suits ``width``."""
    from PIL import Image, ImageDraw, ImageFont

    h = int(height or max(10, min(16, width // 6)))
    strip = Image.new("RGB", (width, h), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    text = label
    for size in range(h - 2, 5, -1):
        font = ImageFont.load_default(size=size)
        if draw.textlength(text, font=font) <= width - 2:
            break
    while text and draw.textlength(text, font=font) > width - 2:
        text = text[:-1]
    draw.text((1, h // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(strip)


def side_by_side(*videos: np.ndarray, gap: int = 2, labels: Sequence[str] | None = None) -> np.ndarray:
    """Concatenate equally long (T,H,W,3) uint8 videos horizontally (heights must match); ``labels``: one per video,
    drawn in a white strip above it, so a panel says what each part is."""
    t = min(v.shape[0] for v in videos)
    h = videos[0].shape[1]
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"{len(labels)} labels for {len(videos)} videos")
    strip_h = max(10, min(16, min(v.shape[2] for v in videos) // 6)) if labels is not None else 0
    parts = []
    for i, v in enumerate(videos):
        if v.shape[1] != h:
            raise ValueError(f"video {i} has height {v.shape[1]}, expected {h}")
        part = v[:t]
        if labels is not None:
            strip = np.broadcast_to(label_strip(labels[i], v.shape[2], strip_h), (t, strip_h, v.shape[2], 3))
            part = np.concatenate([strip, part], axis=1)
        parts.append(part)
        if gap and i < len(videos) - 1:
            parts.append(np.full((t, h + strip_h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=2)


def log_panel(loggers: Iterable[object], tag: str, parts: Mapping[str, np.ndarray], step: int, fps: float = 25.0,
              caption: str = "", audio: np.ndarray | torch.Tensor | None = None, sample_rate: int = 16000) -> int:
    """Log labelled (T,H,W,3) uint8 ``parts`` side by side, each name drawn above its part; the caption names the
    parts left to right (then ``caption``) and ``audio`` is cut to the panel's duration."""
    names = list(parts)
    panel = side_by_side(*parts.values(), labels=names)
    text = " | ".join(names) + (f" ({caption})" if caption else "")
    if audio is not None:
        audio = audio[: int(round(len(panel) / fps * sample_rate))]
    return log_video(loggers, tag, panel, step, fps, caption=text, audio=audio, sample_rate=sample_rate)
