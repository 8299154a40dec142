"""Media I/O for the corpus format: H.264 mp4 (+AAC) with PyAV, 16 kHz mono wav with soundfile.

Every writer is atomic (temp file in the same folder, then ``os.replace``) so an interrupted job never
leaves a half-written clip that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FPS = 25
HOP = SAMPLE_RATE // FPS  # 640 audio samples per video frame: the one audio/video alignment constant


def umask_mode(base: int = 0o666) -> int:
    """The permission bits a plain ``open()`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same filesystem, so the rename is atomic); if the block succeeds the file
    is fsync'd, given the umask's permissions (``mkstemp`` makes it 0600) and renamed onto ``path``. A kill or a
    full disk leaves the old file (or none) under the final name, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # persist the rename (not possible on every filesystem)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learns from a container without decoding it all."""

    fps: float
    n_frames: int
    width: int
    height: int
    has_audio: bool
    duration: float


def _to_mono_float(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype.kind in "iu":
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
    audio = audio.astype(np.float32)
    if audio.ndim == 2:  # (samples, channels) or (channels, samples)
        audio = audio.mean(axis=1 if audio.shape[0] > audio.shape[1] else 0)
    return audio


def resample_audio(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) between integer rates; identity when the rates match."""
    audio = _to_mono_float(audio)
    if int(sr_in) == int(sr_out):
        return audio
    from scipy.signal import resample_poly

    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(audio, int(sr_out) // g, int(sr_in) // g).astype(np.float32)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono 16-bit PCM wav atomically."""
    import soundfile as sf

    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(_to_mono_float(audio), -1.0, 1.0), int(sample_rate), subtype="PCM_16",
                 format="WAV")
    return path


def read_audio(path: str | Path, sample_rate: int | None = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 audio from a wav/flac/ogg (soundfile) or any container PyAV decodes, resampled to
    ``sample_rate`` (None keeps the file's rate). Raises ValueError naming the file when it can't be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        import soundfile as sf

        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        audio = data.mean(axis=1)
    except Exception:  # not a soundfile format: try a media container (mp3, m4a, mp4, ...)
        try:
            audio, sr = read_video_audio(path)
        except Exception as err:
            raise ValueError(f"{path}: cannot decode audio ({err})") from err
    return audio if sample_rate is None else resample_audio(audio, sr, sample_rate)


def read_video_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio stream of a container as mono float32 and its sample rate."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        chunks, sr = [], stream.codec_context.sample_rate or stream.rate
        for frame in container.decode(stream):
            arr = frame.to_ndarray()
            if arr.dtype.kind in "iu":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
            if frame.format.is_planar:
                arr = arr.mean(axis=0)
            else:
                arr = arr.reshape(-1, len(frame.layout.channels)).mean(axis=1)
            chunks.append(arr.astype(np.float32))
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        if stream.duration:  # drop the codec's end padding (AAC encodes whole 1024-sample frames)
            audio = audio[: round(stream.duration * stream.time_base * sr)]
    return audio, int(sr)


#: H.264 pixel formats :func:`write_video` writes: 4:2:0 (plays everywhere) or 4:4:4 (full-resolution colour)
PIX_FMTS = ("yuv420p", "yuv444p")


def check_encoding(crf: int, pix_fmt: str, what: str = "video encoding") -> None:
    """Refuse an H.264 setting :func:`write_video` cannot honour, naming it (before any work is done)."""
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"{what}: pix_fmt must be one of {', '.join(PIX_FMTS)}, got {pix_fmt!r}")
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ValueError(f"{what}: crf must be an integer in 0..51 (lower = better quality), got {crf!r}")


def write_video(path: str | Path, frames: np.ndarray, fps: int = FPS, audio: np.ndarray | None = None,
                sample_rate: int = SAMPLE_RATE, crf: int = 18, pix_fmt: str = "yuv420p") -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 (constant ``fps``), with an AAC track if ``audio``.

    ``pix_fmt``: yuv420p (the default: every player and browser decodes it) stores colour at half resolution,
    which on tiny frames (32 px: a 16x16 colour plane) costs more PSNR than any model error; yuv444p keeps it."""
    import av

    check_encoding(crf, pix_fmt, str(path))
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: H.264 ({pix_fmt}) needs even sizes, got {w}x{h}")
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=Fraction(int(fps)))
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.options = {"crf": str(crf), "preset": "veryfast"}
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=int(sample_rate))
            aus.layout = "mono"
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            samples = np.clip(_to_mono_float(audio), -1, 1)[None, :].astype(np.float32)
            af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            af.sample_rate = int(sample_rate)
            af.pts, af.time_base = 0, Fraction(1, int(sample_rate))  # else the track starts one AAC frame late
            for packet in aus.encode(af):
                out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
    return path


def probe_video(path: str | Path) -> VideoInfo:
    """fps, frame count, size and audio presence. The frame count is decoded when the header lacks it."""
    import av

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: video file not found")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        vs = container.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        n = int(vs.frames or 0)
        if n <= 0:
            n = sum(1 for _ in container.decode(vs))
        duration = float(vs.duration * vs.time_base) if vs.duration else (n / fps if fps else 0.0)
        return VideoInfo(fps=fps, n_frames=n, width=vs.codec_context.width, height=vs.codec_context.height,
                         has_audio=bool(container.streams.audio), duration=duration)


def read_video(path: str | Path, start: int = 0, count: int | None = None) -> np.ndarray:
    """Frames ``[start, start + count)`` as (T, H, W, 3) uint8, decoding only up to the last needed frame."""
    import av

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: video file not found")
    out = []
    stop = None if count is None else start + count
    try:
        with av.open(str(path)) as container:
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            fps = float(vs.average_rate or FPS)
            seeked = False
            if start > 0 and vs.time_base:
                # jump to the keyframe before `start` instead of decoding the clip from its beginning
                container.seek(int((start / fps) / vs.time_base), stream=vs, backward=True, any_frame=False)
                seeked = True
            for i, frame in enumerate(container.decode(vs)):
                idx = round(float(frame.time) * fps) if seeked and frame.time is not None else i
                if stop is not None and idx >= stop:
                    break
                if idx >= start:
                    out.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode video ({err})") from err
    if count is not None and len(out) < count:
        raise ValueError(f"{path}: wanted frames [{start}, {stop}) but the video has only {start + len(out)}")
    if not out:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(out)
