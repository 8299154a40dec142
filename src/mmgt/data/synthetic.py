"""The embedded synthetic corpus: a procedural talking, gesturing figure whose motion is driven by the
speech-like audio it carries, written in exactly the processed-corpus format (mmgt.data.corpus).

Why: it lets every part of the framework run with no download, and its *known* audio→motion link lets
tests check that the models really learn it:

* mouth opening (inner-lip gap, :func:`mmgt.pose.layout.mouth_opening`) is proportional to the per-frame
  loudness envelope of the audio, with no lag;
* the head nods and the hands beat with the envelope's rises (onsets), with a speaker-specific style
  (amplitude, dominant hand, resting pose, colours, voice pitch).

Speakers differ in appearance and gesture style, so speaker conditioning and held-out evaluation mean
something. Everything is seeded: the same arguments give byte-identical keypoints and audio.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mmgt.data.corpus import (
    HOP,
    MANIFEST,
    ClipRecord,
    build_folder,
    clip_record,
    naming_write_errors,
    read_manifest,
    swap_in,
    sweep_leftovers,
    write_clip,
    write_manifest,
    writer_lock,
)
from mmgt.data.video_io import FPS, SAMPLE_RATE, atomic_path, check_encoding

log = logging.getLogger(__name__)

META = "synthetic.json"


@dataclass(frozen=True)
class SpeakerStyle:
    """Appearance and gesture style of one synthetic speaker (drawn from a seeded generator)."""

    background: tuple[int, int, int]
    shirt: tuple[int, int, int]
    skin: tuple[int, int, int]
    scale: float  # body size relative to the frame
    x_offset: float  # horizontal placement (fraction of the frame)
    gesture_amp: float  # how far the hands move on an onset (fraction of the frame)
    dominant: int  # 0: right hand leads, 1: left hand leads
    pitch: float  # voice f0 in Hz
    rate: float  # syllables per second
    mouth_gain: float  # lip gap at full loudness (fraction of head height)
    sway: float = 0.02  # slow whole-body sway: a smoothed random walk scaled by this fraction of the frame


def speaker_style(index: int, seed: int = 0) -> SpeakerStyle:
    """The style of speaker ``index``; stable for a given seed."""
    rng = np.random.default_rng([seed, 7919, index])
    bg = tuple(int(v) for v in rng.integers(20, 90, 3))
    shirt = tuple(int(v) for v in rng.integers(60, 230, 3))
    skin = tuple(int(v) for v in np.clip(np.array([225, 180, 150]) * rng.uniform(0.55, 1.05), 0, 255))
    return SpeakerStyle(background=bg, shirt=shirt, skin=skin, scale=float(rng.uniform(0.9, 1.05)),
                        x_offset=float(rng.uniform(-0.06, 0.06)), gesture_amp=float(rng.uniform(0.06, 0.14)),
                        dominant=int(index % 2), pitch=float(rng.uniform(100, 230)), rate=float(rng.uniform(3, 5)),
                        mouth_gain=float(rng.uniform(0.22, 0.3)))


# --------------------------------------------------------------------------------------------------- audio


def speech_envelope(n_frames: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample loudness envelope in [0, 1]: syllable bursts (raised-cosine) separated by short pauses."""
    n = n_frames * HOP
    env = np.zeros(n, np.float32)
    t = float(rng.uniform(0.0, 0.3))
    total = n / SAMPLE_RATE
    while t < total:
        dur = float(rng.uniform(0.09, 0.26))
        amp = float(rng.uniform(0.35, 1.0))
        a, b = int(t * SAMPLE_RATE), min(n, int((t + dur) * SAMPLE_RATE))
        if b > a:
            env[a:b] = np.maximum(env[a:b], amp * np.sin(np.linspace(0, np.pi, b - a)) ** 2)
        gap = float(rng.exponential(1.0 / rate)) + 0.03
        if rng.random() < 0.12:  # an occasional phrase pause
            gap += float(rng.uniform(0.3, 0.7))
        t += dur + gap
    return env


def speech_audio(envelope: np.ndarray, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced, speech-like signal (harmonics with drifting pitch + breath noise) shaped by ``envelope``."""
    n = len(envelope)
    t = np.arange(n) / SAMPLE_RATE
    drift = np.cumsum(rng.normal(0, 0.02, n // 800 + 2))
    f0 = pitch * (1 + 0.08 * np.interp(t, np.linspace(0, t[-1] if n > 1 else 1, len(drift)), drift))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum((0.6**k) * np.sin((k + 1) * phase) for k in range(5))
    voice = voice / np.abs(voice).max()
    noise = rng.normal(0, 0.15, n)
    return (0.5 * envelope * (voice + noise)).astype(np.float32)


def frame_loudness(envelope: np.ndarray, n_frames: int) -> np.ndarray:
    """Mean envelope per video frame (the quantity the mouth follows)."""
    return envelope[: n_frames * HOP].reshape(n_frames, HOP).mean(1)


# --------------------------------------------------------------------------------------------------- pose


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    ker = np.hanning(2 * k + 1)
    ker /= ker.sum()
    pad = np.pad(x, (k, k), mode="edge")
    return np.convolve(pad, ker, mode="valid")


def _face_template() -> np.ndarray:
    """iBUG-68 face points in head units (head centre at 0, head half-height 1), mouth closed."""
    pts = np.zeros((68, 2), np.float32)
    ang = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)  # jaw from right ear to left ear, through the chin
    pts[0:17] = np.stack([0.8 * np.cos(ang), 0.1 + 0.85 * np.sin(ang)], 1)
    pts[17:22] = np.stack([np.linspace(-0.6, -0.15, 5), np.full(5, -0.45)], 1)  # right brow
    pts[22:27] = np.stack([np.linspace(0.15, 0.6, 5), np.full(5, -0.45)], 1)  # left brow
    pts[27:31] = np.stack([np.zeros(4), np.linspace(-0.3, 0.15, 4)], 1)  # nose bridge
    pts[31:36] = np.stack([np.linspace(-0.18, 0.18, 5), np.full(5, 0.22)], 1)  # nostrils
    eye = np.stack([np.cos(np.linspace(0, 2 * np.pi, 7)[:-1]) * 0.15, np.sin(np.linspace(0, 2 * np.pi, 7)[:-1]) * 0.06],
                   1)
    pts[36:42] = eye + [-0.35, -0.25]
    pts[42:48] = eye + [0.35, -0.25]
    outer = np.linspace(np.pi, -np.pi, 13)[:-1]  # 48-59, starting at the right corner, over the top lip
    pts[48:60] = np.stack([0.32 * np.cos(outer), 0.5 - 0.07 * np.sin(outer)], 1)
    pts[60:68] = [[-0.25, 0.5], [-0.12, 0.49], [0, 0.49], [0.12, 0.49], [0.25, 0.5], [0.12, 0.51], [0, 0.51],
                  [-0.12, 0.51]]
    return pts


def _hand(wrist: np.ndarray, direction: np.ndarray, size: float, spread: np.ndarray) -> np.ndarray:
    """21 hand points (wrist, 5 fingers x 4 joints) fanned around ``direction``; ``spread`` opens the hand."""
    pts = [wrist]
    base = np.arctan2(direction[..., 1], direction[..., 0])
    for f in range(5):
        ang = base + (f - 2) * (0.25 + 0.25 * spread)
        d = np.stack([np.cos(ang), np.sin(ang)], -1)
        for j in range(1, 5):
            pts.append(wrist + d * size * (0.35 + 0.17 * j))
    return np.stack(pts, 1)


def synth_pose(loudness: np.ndarray, size: int, style: SpeakerStyle, rng: np.random.Generator) -> np.ndarray:
    """(T, 134, 3) pixel keypoints driven by the per-frame ``loudness`` (see module docstring)."""
    t = len(loudness)
    s = size * style.scale
    cx = size * (0.5 + style.x_offset)
    onset = np.clip(np.diff(loudness, prepend=loudness[:1]), 0, None)
    beat = _smooth(onset, 3) * 8.0  # gestures rise on syllable onsets
    sway = _smooth(rng.normal(0, 1, t), 12) * style.sway * size
    nod = _smooth(onset, 2) * 0.5 * s
    kp = np.zeros((t, 134, 3), np.float32)
    head_c = np.stack([cx + sway, np.full(t, 0.27 * s) + nod], 1)
    head_r = 0.11 * s
    neck = np.stack([cx + 0.5 * sway, np.full(t, 0.43 * s)], 1)
    sh_w = 0.19 * s
    body = np.zeros((t, 18, 2), np.float32)
    body[:, 0] = head_c + [0, 0.15 * head_r]
    body[:, 1] = neck
    body[:, 2] = neck + [-sh_w, 0.03 * s]
    body[:, 5] = neck + [sh_w, 0.03 * s]
    body[:, 8] = neck + [-0.11 * s, 0.5 * s]
    body[:, 11] = neck + [0.11 * s, 0.5 * s]
    body[:, 9], body[:, 12] = body[:, 8] + [0, 0.3 * s], body[:, 11] + [0, 0.3 * s]
    body[:, 10], body[:, 13] = body[:, 9] + [0, 0.3 * s], body[:, 12] + [0, 0.3 * s]
    body[:, 14] = head_c + [-0.35 * head_r, -0.25 * head_r]
    body[:, 15] = head_c + [0.35 * head_r, -0.25 * head_r]
    body[:, 16] = head_c + [-0.8 * head_r, 0]
    body[:, 17] = head_c + [0.8 * head_r, 0]
    amp = style.gesture_amp * size
    lead = np.array([1.0, 0.45]) if style.dominant == 0 else np.array([0.45, 1.0])
    for side, (sh, el, wr) in enumerate(((2, 3, 4), (5, 6, 7))):
        sign = -1 if side == 0 else 1
        lift = beat * amp * lead[side]
        body[:, el] = body[:, sh] + np.stack([sign * 0.06 * s + 0 * lift, 0.2 * s - 0.6 * lift], 1)
        body[:, wr] = body[:, el] + np.stack([-sign * 0.05 * s + sign * 0.4 * lift, 0.17 * s - 1.4 * lift], 1)
    kp[:, :18, :2] = body
    kp[:, :18, 2] = 0.95
    kp[:, list((9, 10, 12, 13)), 2] = 0.1  # knees/ankles out of frame: low score, coordinates kept
    kp[:, 18:24, :2] = np.repeat(body[:, [10, 13]], 3, axis=1)
    kp[:, 18:24, 2] = 0.05
    face = _face_template()[None].repeat(t, 0) * head_r + head_c[:, None]
    gap = style.mouth_gain * head_r * np.clip(loudness, 0, 1)
    lower_inner = [65, 66, 67]
    lower_outer = [54, 55, 56, 57, 58]
    face[:, lower_inner, 1] += gap[:, None]
    face[:, lower_outer, 1] += gap[:, None] * 0.9
    face[:, 5:12, 1] += gap[:, None] * 0.5  # the jaw drops a little with the mouth
    kp[:, 24:92, :2] = face
    kp[:, 24:92, 2] = 0.9
    for side, (el, wr, first) in enumerate(((3, 4, 113), (6, 7, 92))):
        direction = body[:, wr] - body[:, el]
        spread = np.clip(beat * 2.5 * (1.0 if side == style.dominant else 0.5), 0, 1)
        kp[:, first:first + 21, :2] = _hand(body[:, wr], direction, 0.07 * s, spread)
        kp[:, first:first + 21, 2] = 0.85
    kp[..., :2] += rng.normal(0, 0.05, kp[..., :2].shape)  # detector-like jitter, far below a pixel
    return kp


# --------------------------------------------------------------------------------------------------- frames


def render_figure(kp: np.ndarray, size: int, style: SpeakerStyle) -> np.ndarray:
    """Draw the figure described by pixel keypoints ``kp`` (T, 134, 3) as (T, size, size, 3) uint8 frames."""
    from skimage.draw import disk, ellipse, polygon

    t = len(kp)
    frames = np.empty((t, size, size, 3), np.uint8)
    frames[:] = np.array(style.background, np.uint8)
    shape = (size, size)
    lw = max(1.0, size / 40)

    def limb(img: np.ndarray, a: np.ndarray, b: np.ndarray, w: float, colour: tuple[int, int, int]) -> None:
        d = b - a
        n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-6) * w
        quad = np.stack([a + n, b + n, b - n, a - n])
        rr, cc = polygon(quad[:, 1], quad[:, 0], shape)
        img[rr, cc] = colour
        for p in (a, b):
            rr, cc = disk((p[1], p[0]), w, shape=shape)
            img[rr, cc] = colour

    dark = tuple(int(c * 0.45) for c in style.skin)
    sleeve = tuple(int(c * 0.85) for c in style.shirt)
    for i in range(t):
        img, p = frames[i], kp[i, :, :2]
        torso = p[[2, 5, 11, 8]] + [[-lw, 0], [lw, 0], [2 * lw, size], [-2 * lw, size]]
        rr, cc = polygon(torso[:, 1], torso[:, 0], shape)
        img[rr, cc] = style.shirt
        limb(img, p[1], p[0], 2 * lw, style.skin)  # neck
        for a, b, c in ((2, 3, 4), (5, 6, 7)):
            limb(img, p[a], p[b], 1.6 * lw, sleeve)
            limb(img, p[b], p[c], 1.3 * lw, style.skin)
        for first in (92, 113):
            hand = p[first:first + 21]
            centre = hand.mean(0)
            rad = max(1.5, float(np.linalg.norm(hand[[4, 8, 12, 16, 20]] - hand[0], axis=1).mean()) * 0.55)
            rr, cc = disk((centre[1], centre[0]), rad, shape=shape)
            img[rr, cc] = style.skin
        face = p[24:92]
        jaw = face[0:17]
        hc = np.array([jaw[:, 0].mean(), face[19:25, 1].mean() + 0.0])
        hr = (jaw[:, 0].max() - jaw[:, 0].min()) / 2 / 0.8
        rr, cc = ellipse(hc[1] + 0.05 * hr, hc[0], 1.05 * hr, 0.88 * hr, shape=shape)
        img[rr, cc] = style.skin
        for eye in (face[36:42], face[42:48]):
            c = eye.mean(0)
            rr, cc = disk((c[1], c[0]), max(1.0, 0.09 * hr), shape=shape)
            img[rr, cc] = (20, 20, 30)
        inner = face[60:68]
        top, bottom = inner[[1, 2, 3], 1].mean(), inner[[5, 6, 7], 1].mean()
        mc = inner.mean(0)
        half_w = (inner[4, 0] - inner[0, 0]) / 2
        rr, cc = ellipse(mc[1], mc[0], max(0.6, (bottom - top) / 2 + 0.04 * hr), max(1.0, half_w), shape=shape)
        img[rr, cc] = dark
    return frames


# --------------------------------------------------------------------------------------------------- clips


def synth_sequence(n_frames: int, size: int = 64, seed: int | list[int] = 0, style: int | SpeakerStyle = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic recording: frames (T, size, size, 3) uint8, 16 kHz audio (T*640,), keypoints (T, 134, 3)."""
    if n_frames < 1 or size < 16:
        raise ValueError(f"synth_sequence: need n_frames >= 1 and size >= 16, got {n_frames}, {size}")
    st = speaker_style(style, 0) if isinstance(style, int) else style
    rng = np.random.default_rng(seed)
    env = speech_envelope(n_frames, st.rate, rng)
    audio = speech_audio(env, st.pitch, rng)
    kp = synth_pose(frame_loudness(env, n_frames), size, st, rng)
    return render_figure(kp, size, st), audio, kp


@dataclass(frozen=True)
class SyntheticSpec:
    """Arguments that define a synthetic corpus (stored in ``synthetic.json`` beside the manifest)."""

    n_speakers: int = 4
    clips_per_speaker: int = 10
    seconds: float = 4.0
    size: int = 64
    seed: int = 0
    val_per_speaker: int = 1
    test_per_speaker: int = 1
    sway: float = 0.02
    crf: int = 18  # H.264 quality of the clips' videos (lower = closer to the rendered frames)
    pix_fmt: str = "yuv420p"  # yuv444p keeps full-resolution colour (see mmgt.data.video_io.write_video)


def generate_corpus(root: str | Path, n_speakers: int = 4, clips_per_speaker: int = 10, seconds: float = 4.0,
                    size: int = 64, seed: int = 0, val_per_speaker: int = 1, test_per_speaker: int = 1,
                    sway: float = 0.02, crf: int = 18, pix_fmt: str = "yuv420p", progress: bool = True,
                    overwrite: bool = False, only_if_missing: bool = False) -> list[ClipRecord]:
    """Write a synthetic corpus at ``root``; the last clips of each speaker go to val/test.

    ``sway`` scales the slow whole-body sway (0.02: the figure stays almost in place; ~0.3: it drifts by a few
    percent of the frame, so later frames differ from frame 0 and "copy the reference frame" stops being a
    near-perfect video model). ``crf`` / ``pix_fmt``: how the clips' videos are encoded
    (:func:`mmgt.data.video_io.write_video`); the ground truth every metric compares with is the decoded video,
    so at tiny frame sizes 4:2:0 colour (the default) limits every method's PSNR to ~27-31 dB.

    Nothing is lost to a kill or a full disk: every file is written atomically, ``synthetic.json`` first (which
    spec the clips belong to), the manifest last. A rerun with the same spec keeps every complete clip and writes
    only the missing or partial ones. A corpus that is already there (``overwrite=True``, or another spec) is
    rebuilt beside it (``<root>.new-<pid>``) and swapped in once complete, so readers never see a manifest that
    lists missing clips. Leftovers of killed runs are swept first (:func:`mmgt.data.corpus.sweep_leftovers`, under
    the corpus' writer lock). A failed write raises :class:`~mmgt.data.corpus.CorpusWriteError` naming the file.
    ``only_if_missing``: return the corpus another writer finished while this one waited for the lock."""
    spec = SyntheticSpec(n_speakers, clips_per_speaker, seconds, size, seed, val_per_speaker, test_per_speaker, sway,
                         crf, pix_fmt)
    check_encoding(crf, pix_fmt, "synthetic corpus")
    if clips_per_speaker <= val_per_speaker + test_per_speaker:
        raise ValueError(f"clips_per_speaker={clips_per_speaker} leaves no training clips "
                         f"(val {val_per_speaker} + test {test_per_speaker} per speaker)")
    if size % 2:
        raise ValueError(f"size={size}: H.264 needs an even frame size")
    root = Path(root)
    with writer_lock(root):
        if only_if_missing and (root / MANIFEST).exists():
            return read_manifest(root)
        sweep_leftovers(root)
        if not overwrite and stored_spec(root) == asdict(spec):
            return _write_clips(root, spec, progress)  # resume (or repair) in place
        if not (root / MANIFEST).exists():  # nothing usable there yet: clips of another/unknown spec go
            with naming_write_errors(root / "clips"):
                shutil.rmtree(root / "clips", ignore_errors=True)
                (root / META).unlink(missing_ok=True)
            return _write_clips(root, spec, progress)
        build = build_folder(root, "new")
        try:
            records = _write_clips(build, spec, progress)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)  # a full disk gets its space back
            raise
        swap_in(build, root)
        return records


def stored_spec(root: Path) -> dict[str, object] | None:
    """The spec recorded in ``synthetic.json`` (None when absent or unreadable: the clips can't be trusted); keys a
    corpus written before they existed lacks read as their defaults (it was written with them)."""
    try:
        stored = json.loads((root / META).read_text())
    except (OSError, ValueError):
        return None
    return {**asdict(SyntheticSpec()), **stored} if isinstance(stored, dict) else None


def _write_clips(root: Path, spec: SyntheticSpec, progress: bool) -> list[ClipRecord]:
    """Write ``spec``'s clips at ``root``, keeping the complete ones already there; the manifest last."""
    from tqdm.auto import tqdm

    from mmgt.data.validate import check_clip

    meta = json.dumps(asdict(spec), indent=2)
    if stored_spec(root) != asdict(spec):
        with naming_write_errors(root / META), atomic_path(root / META) as tmp:
            tmp.write_text(meta)
    n_frames = max(1, round(spec.seconds * FPS))
    c_val = spec.clips_per_speaker - spec.test_per_speaker - spec.val_per_speaker
    records, written = [], 0
    jobs = [(s, c) for s in range(spec.n_speakers) for c in range(spec.clips_per_speaker)]
    for s, c in tqdm(jobs, desc=f"synthetic corpus -> {root}", disable=not progress, unit="clip"):
        split = "test" if c >= spec.clips_per_speaker - spec.test_per_speaker else "val" if c >= c_val else "train"
        rec = clip_record(f"spk{s}_{c:03d}", f"spk{s}", split, n_frames, spec.size, spec.size)
        if (root / rec.keypoints).parent.is_dir() and not check_clip(root, rec):
            records.append(rec)  # complete and valid: kept as is (mtimes, feature caches)
            continue
        style = replace(speaker_style(s, spec.seed), sway=spec.sway)
        frames, audio, kp = synth_sequence(n_frames, spec.size, seed=[spec.seed, s, c], style=style)
        records.append(write_clip(root, rec.clip_id, rec.speaker, split, frames, audio, kp, crf=spec.crf,
                                  pix_fmt=spec.pix_fmt))
        written += 1
    write_manifest(root, records)
    log.info("%s: %d clip(s) written, %d complete one(s) kept", root, written, len(records) - written)
    return records


def ensure_corpus(root: str | Path, progress: bool = True, **spec: object) -> Path:
    """Generate the synthetic corpus at ``root`` unless one is already there (first use of ``data=synthetic``)."""
    root = Path(root)
    if (root / MANIFEST).exists():
        meta = root / META
        if meta.exists() and spec:
            stored = stored_spec(root) or {}
            wanted = {**stored, **{k: v for k, v in spec.items() if k in stored}}
            if wanted != stored:
                log.warning("%s was generated with %s, config asks for %s: using the existing corpus (delete it "
                            "to regenerate)", root, stored, wanted)
        return root
    log.info("no corpus at %s: generating the synthetic corpus", root)
    generate_corpus(root, progress=progress, only_if_missing=True, **spec)  # type: ignore[arg-type]
    return root
