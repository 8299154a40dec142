"""Audio feature extractors at the video frame rate (25 fps, 640 samples per frame at 16 kHz) and their on-disk cache.

* :class:`Stage1Features` — stage-1 (SMGA) per-frame features. ``kind="mmgt"``: 64 log-mel bins, RMS and an onset
  strength, each row computed from *its own frame's samples only* (the onset compares with the previous row), so a
  sound at frame k can never leak into the pose of frame k-1. ``kind="official"``: the original's 35 EDGE librosa
  features (:mod:`mmgt.data.edge_features`). Optionally a speech encoder (WavLM / wav2vec2, the original used
  WavLM-Large's last layer) is prepended; official = ``[WavLM-Large 1024 ‖ EDGE 35]`` = 1059-d.
* :class:`Wav2VecFeatures` — stage-2 audio embedding: the hidden states of every transformer layer of wav2vec2,
  resampled from 50 Hz to the video frames (the original's ``(T, 12, 768)`` tensor), optionally of the separated
  vocals (:mod:`mmgt.data.vocal_separation`).
* :func:`layer_norm_waveform` / :func:`official_25fps` — the original WavLM input normalisation and 50 Hz -> 25 fps
  post-processing.
* :func:`window_features` / :func:`window_indices` — the ±r frame windows stage 2 feeds to its audio projection.
* :func:`ensure_feature_cache` — computes missing or stale ``.npy`` caches beside each clip.

Every extractor has a ``signature`` string that changes with any setting, so caches of different settings never mix.
Speech encoders build at tiny size with a seeded random init (tests, CPU runs) or load a local Hugging Face folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mmgt.data.edge_features import EDGE_COLUMNS, EDGE_DIM, edge35_features, edge_settings
from mmgt.data.video_io import HOP, SAMPLE_RATE, atomic_path
from mmgt.data.vocal_separation import MDXVocalSeparator, file_identity
from mmgt.models.pretrained import PUBLISHED, MissingWeightsError, as_dtype, load_pretrained

if TYPE_CHECKING:
    from mmgt.data.corpus import ClipRecord, Corpus

# wav2vec2 / WavLM conv feature encoder: 400-sample receptive field, stride 320 (50 Hz); frame j is centred at 320j+200.
CNN_HOP = 320
CNN_FIELD = 400
CNN_OFFSET = CNN_FIELD / 2

_BACKENDS = ("wavlm", "wav2vec2")
# Where the speech encoder's transformer runs and how its output reaches 25 fps (see _SpeechEncoder).
_RESAMPLE_MODES = ("after", "before", "official")
_KINDS = ("mmgt", "official")


def _signature(name: str, settings: dict[str, Any]) -> str:
    """Readable prefix + short hash of every setting: a file-name-safe cache key."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def _as_waveform(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got {audio.shape}")
    return audio


def _fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad or trim to exactly ``n_samples``."""
    if len(audio) >= n_samples:
        return audio[:n_samples]
    return np.pad(audio, (0, n_samples - len(audio)))


def _default_frames(audio: np.ndarray) -> int:
    return max(1, math.ceil(len(audio) / HOP))


# ---------------------------------------------------------------------------------------------- frame resampling


def resample_frames(x: torch.Tensor, n_out: int, in_hop: float, in_offset: float, out_hop: float,
                    legacy_align_corners: bool = False, out_offset: float | None = None) -> torch.Tensor:
    """Linearly resample a feature sequence ``(..., C, T_in)`` to ``(..., C, n_out)`` by time, not by index.

    Input frame j sits at sample ``in_hop * j + in_offset``, output frame i at ``out_hop * i + out_offset`` (default:
    the frame centre ``out_hop / 2``); outside the input's span the edge frames are held. This keeps a 50 Hz encoder
    frame and the video frame it describes at the same instant. ``legacy_align_corners=True`` instead stretches the
    whole sequence onto ``n_out`` frames (``F.interpolate(..., align_corners=True)``), as the original code did; that
    maps first onto first and last onto last and so drifts by up to half a frame.
    """
    if x.shape[-1] < 1 or n_out < 1:
        raise ValueError(f"cannot resample {x.shape[-1]} frames to {n_out}")
    lead, t_in = x.shape[:-1], x.shape[-1]
    if legacy_align_corners:
        flat = x.reshape(1, -1, t_in)
        if t_in == 1:
            return flat.expand(1, flat.shape[1], n_out).reshape(*lead, n_out).clone()
        return F.interpolate(flat, size=n_out, mode="linear", align_corners=True).reshape(*lead, n_out)
    if out_offset is None:
        out_offset = out_hop / 2
    pos = (torch.arange(n_out, dtype=torch.float64) * out_hop + out_offset - in_offset) / in_hop
    pos = pos.clamp(0, t_in - 1)
    i0 = pos.floor().long().clamp(max=max(t_in - 2, 0))
    i1 = (i0 + 1).clamp(max=t_in - 1)
    frac = (pos - i0).to(device=x.device, dtype=x.dtype)
    i0, i1 = i0.to(x.device), i1.to(x.device)
    return x[..., i0] * (1 - frac) + x[..., i1] * frac


def layer_norm_waveform(audio: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """The original WavLM input: one mean and variance over the whole waveform, no affine (cfg.normalize of
    WavLM-Large), in float32 as torch computes it."""
    w = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return F.layer_norm(w, w.shape, eps=eps).numpy()


def official_25fps(h: torch.Tensor) -> torch.Tensor:
    """The original 50 Hz -> 25 fps step on ``(..., T50, D)``: append a copy of the last frame, then stretch the
    T50 + 1 frames onto ceil((T50 + 1) / 2) with ``align_corners=True`` linear interpolation."""
    lead, t50, d = h.shape[:-2], h.shape[-2], h.shape[-1]
    h = torch.cat([h, h[..., -1:, :]], dim=-2)
    flat = h.reshape(-1, t50 + 1, d).transpose(1, 2)
    out = F.interpolate(flat, size=math.ceil((t50 + 1) / 2), mode="linear", align_corners=True)
    return out.transpose(1, 2).reshape(*lead, -1, d)


def _fit_rows(x: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
    """Trim to ``n`` entries along ``dim``, or hold the last one."""
    if x.shape[dim] >= n:
        return x.narrow(dim, 0, n)
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    reps = [1] * x.ndim
    reps[dim] = n - x.shape[dim]
    return torch.cat([x, last.repeat(*reps)], dim=dim)


# ---------------------------------------------------------------------------------------------- speech encoders


def _tiny_config(kind: str, hidden_size: int, num_layers: int) -> Any:
    """A small WavLM/wav2vec2 config with the real conv stack timing (stride 320, field 400) and no dropout."""
    from transformers import Wav2Vec2Config, WavLMConfig

    cls = WavLMConfig if kind == "wavlm" else Wav2Vec2Config
    return cls(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
               intermediate_size=2 * hidden_size, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4, apply_spec_augment=False, hidden_dropout=0.0, activation_dropout=0.0,
               attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)


class _SpeechEncoder:
    """A frozen wav2vec2/WavLM model whose per-layer hidden states come out at the video frame rate.

    ``resample``: ``"after"`` (default) runs the transformer at its native 50 Hz, the rate it was trained at, and
    resamples its outputs to the video frame centres; ``"before"`` (the old default, and the original's stage-2
    wav2vec trick from Hallo) brings the CNN features to 25 fps and runs the transformer on video frames;
    ``"official"`` is the original stage-1 WavLM recipe: :func:`layer_norm_waveform`, 50 Hz, :func:`official_25fps`.
    A local folder is loaded strictly (:func:`~mmgt.models.pretrained.load_pretrained`) from its ``variant`` weight
    files and built in ``dtype`` (null: float32, whatever the file's dtype).
    """

    def __init__(self, kind: str, *, pretrained_path: str | None, config_key: str, seed: int, hidden_size: int,
                 num_layers: int, layers: str, legacy_align_corners: bool, device: str | torch.device,
                 resample: str = "after", variant: str | None = None, dtype: str | None = None) -> None:
        from transformers import Wav2Vec2Model, WavLMModel

        if resample not in _RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {_RESAMPLE_MODES}, got {resample!r}")
        self.resample = resample

        if kind not in _BACKENDS:
            raise ValueError(f"unknown speech encoder {kind!r}; expected one of {_BACKENDS}")
        if layers not in ("all", "last"):
            raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
        cls = WavLMModel if kind == "wavlm" else Wav2Vec2Model
        if pretrained_path is not None:
            path = Path(pretrained_path).expanduser()
            if not path.exists():
                raise MissingWeightsError(
                    f"{kind} weights not found at {path} (config key {config_key}). Download {PUBLISHED[kind]} into "
                    f"that folder, or set {config_key}=null for a random-init tiny encoder.")
            # strict (a missing tensor is an error; the CTC head of wav2vec2-base-960h is a known extra) and built in
            # `dtype` whatever the file's (an fp16 file no longer meets float32 waveforms)
            self.model = load_pretrained(cls, path, key=config_key, what=kind, variant=variant, dtype=dtype)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = cls(_tiny_config(kind, hidden_size, num_layers)).to(as_dtype(dtype, f"{config_key} dtype"))
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.layers = layers
        self.legacy_align_corners = legacy_align_corners
        self.hidden_size = int(self.model.config.hidden_size)
        self.n_layers = int(self.model.config.num_hidden_layers) if layers == "all" else 1
        # Cache key: the weights' folder and its files' sizes/mtimes (replaced weights never reuse stale features),
        # or the tiny architecture + seed that fully determine the random init.
        model_id: dict[str, Any] = (dict(pretrained_path=str(Path(pretrained_path).resolve()),
                                         weights=file_identity(pretrained_path)["files"]) if pretrained_path
                                    else dict(seed=seed, hidden_size=hidden_size, num_layers=num_layers))
        self.settings = dict(kind=kind, layers=layers, legacy_align_corners=legacy_align_corners, **model_id)
        if resample != "after":  # "after" caches keep the key they had before the modes existed
            self.settings["resample"] = resample
        if variant is not None or self.model.dtype != torch.float32:  # likewise for the float32 default files
            self.settings.update(variant=variant, dtype=str(self.model.dtype).removeprefix("torch."))

    def _states(self, out: Any) -> tuple[torch.Tensor, ...]:
        # The last layer is the model's output, ``last_hidden_state``: for pre-norm ("stable layer norm") models such
        # as WavLM-Large it includes the encoder's final LayerNorm, which transformers >= 5 leaves out of
        # ``hidden_states[-1]`` (4.x put it in); the original features are taken after that norm.
        inner = out.hidden_states[1:-1] if self.layers == "all" else ()
        return (*inner, out.last_hidden_state)

    @torch.inference_mode()
    def native_states(self, x: np.ndarray) -> torch.Tensor:
        """(n_layers, T50, hidden_size) float32: the transformer's outputs at 50 Hz for an already normalised
        waveform (at least one 400-sample receptive field)."""
        wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device, self.model.dtype)
        out = self.model(wav, output_hidden_states=True)
        return torch.stack(self._states(out), dim=1)[0].float().cpu()

    @torch.inference_mode()
    def __call__(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        """(n_frames, n_layers, hidden_size) float32 on the CPU."""
        if self.resample == "official":
            # The whole given waveform (not fitted to n_frames), as the original; rows are fitted afterwards.
            x = layer_norm_waveform(audio)
            h = official_25fps(self.native_states(np.pad(x, (0, max(0, CNN_FIELD - len(x))))))
            return _fit_rows(h, n_frames, dim=1).permute(1, 0, 2).contiguous()  # (n_frames, L, D)
        x = _fit_length(audio, n_frames * HOP).astype(np.float64)
        # Zero-mean unit-variance waveform (what Wav2Vec2FeatureExtractor does): loudness must not change the features.
        x = ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
        # Pad half a video frame so the last 50 Hz frame reaches the last video frame's centre (no edge hold), and at
        # least one receptive field so a single frame works. The legacy path only ensures one field, as the original.
        extra = 0 if self.legacy_align_corners else HOP // 2
        x = np.pad(x, (0, max(extra, CNN_FIELD - len(x))))
        if self.resample == "before":
            # As the original stage 2 (Hallo's trick): the CNN features (1, C, T50) are brought to 25 fps, then the
            # transformer runs on video frames. A forward hook swaps the CNN output; the model's forward does the rest.
            wav = torch.from_numpy(x)[None].to(self.device, self.model.dtype)
            def to_video_rate(_mod: Any, _inp: Any, feats: torch.Tensor) -> torch.Tensor:
                return resample_frames(feats.float(), n_frames, CNN_HOP, CNN_OFFSET, HOP,
                                       self.legacy_align_corners).to(feats.dtype)

            handle = self.model.feature_extractor.register_forward_hook(to_video_rate)
            try:
                out = self.model(wav, output_hidden_states=True)
            finally:
                handle.remove()
            return torch.stack(self._states(out), dim=1)[0].float().transpose(0, 1).contiguous().cpu()
        h = self.native_states(x)  # (L, T50, D): outputs of the transformer layers, not the CNN
        h = resample_frames(h.transpose(1, 2), n_frames, CNN_HOP, CNN_OFFSET, HOP, self.legacy_align_corners)
        return h.permute(2, 0, 1).contiguous().cpu()  # (n_frames, L, D)


# ---------------------------------------------------------------------------------------------- stage 1


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular filters on the Slaney mel scale with area normalisation (librosa's default)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (fft_freqs[None] - hz[:-2, None]) / np.diff(hz)[:-1, None]
    upper = (hz[2:, None] - fft_freqs[None]) / np.diff(hz)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.astype(np.float32)


class Stage1Features:
    """Per-frame stage-1 audio features at 25 fps: ``[backend?] ‖ handcrafted block``.

    ``kind="mmgt"`` (default): the block is ``log-mel(64) ‖ rms(1) ‖ onset(1)``; row k uses only samples
    ``[640k, 640k+640)`` (Hann-tapered for the spectrum), so features and poses of the same index describe the same
    40 ms; the onset is the rectified log-mel increase over row k-1 (0 for the first row).
    ``kind="official"``: the original's 35 EDGE librosa columns (centred 2048-sample windows, beat tracking over the
    clip; :mod:`mmgt.data.edge_features`) and the backend's ``resample`` defaults to ``"official"``; with
    ``backend="wavlm"`` and WavLM-Large weights this is the released SMGA's 1059-d input, with ``backend=None`` the
    original's 35-d ``feature_type="baseline"``.
    ``backend="wavlm"|"wav2vec2"`` prepends a speech encoder's last hidden layer at 25 fps (tiny seeded random-init
    unless ``pretrained_path`` names a local Hugging Face folder); its context is the whole clip. ``backend_resample``:
    see :class:`_SpeechEncoder` (``"before"`` = the old default, transformer on 25-fps CNN features);
    ``backend_variant`` / ``backend_dtype``: the folder's weight-file variant and the dtype the encoder runs in.
    """

    name = "stage1"

    def __init__(self, backend: str | None = None, pretrained_path: str | None = None, n_mels: int = 64,
                 fmin: float = 0.0, fmax: float | None = None, log_floor: float = 1e-10, seed: int = 0,
                 backend_hidden_size: int = 32, backend_layers: int = 2, legacy_align_corners: bool = False,
                 device: str | torch.device = "cpu", kind: str = "mmgt", backend_resample: str | None = None,
                 backend_variant: str | None = None, backend_dtype: str | None = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"stage-1 feature kind must be one of {_KINDS}, got {kind!r}")
        self.kind = kind
        self.n_mels, self.log_floor = n_mels, log_floor
        self.window = torch.hann_window(HOP, periodic=True, dtype=torch.float64)
        self.mel = torch.from_numpy(mel_filterbank(SAMPLE_RATE, HOP, n_mels, fmin, fmax)).double()
        self.encoder: _SpeechEncoder | None = None
        if backend is not None:
            resample = backend_resample or ("official" if kind == "official" else "after")
            self.encoder = _SpeechEncoder(backend, pretrained_path=pretrained_path,
                                          config_key="data.stage1_features.pretrained_path", seed=seed,
                                          hidden_size=backend_hidden_size, num_layers=backend_layers, layers="last",
                                          legacy_align_corners=legacy_align_corners, device=device,
                                          resample=resample, variant=backend_variant, dtype=backend_dtype)
        elif pretrained_path is not None:
            raise ValueError("pretrained_path needs a backend ('wavlm' or 'wav2vec2')")
        blocks = ([("logmel", n_mels), ("rms", 1), ("onset", 1)] if kind == "mmgt"
                  else [(name, s.stop - s.start) for name, s in EDGE_COLUMNS.items()])
        offset = 0
        self.slices: dict[str, slice] = {}
        for key, width in [("backend", self.encoder.hidden_size if self.encoder else 0), *blocks]:
            if width:
                self.slices[key] = slice(offset, offset + width)
                offset += width
        if kind == "official":
            self.slices["edge35"] = slice(offset - EDGE_DIM, offset)
        self.dim = offset
        self.feature_shape: tuple[int, ...] = (self.dim,)
        block: dict[str, Any] = (dict(n_mels=n_mels, fmin=fmin, fmax=fmax, log_floor=log_floor, window="hann_periodic")
                                 if kind == "mmgt" else dict(kind=kind, edge=edge_settings()))
        backend_settings = self.encoder.settings if self.encoder else None
        self.signature = _signature(self.name, dict(version=1, sample_rate=SAMPLE_RATE, hop=HOP, **block,
                                                    backend=backend_settings))

    def _frame_features(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        frames = torch.from_numpy(_fit_length(audio, n_frames * HOP)).double().reshape(n_frames, HOP)
        power = torch.fft.rfft(frames * self.window).abs().square()  # (N, 321)
        logmel = torch.log10(power @ self.mel.T + self.log_floor)
        rms = frames.square().mean(-1, keepdim=True).sqrt()
        prev = torch.cat([logmel[:1], logmel[:-1]])
        onset = (logmel - prev).clamp(min=0).mean(-1, keepdim=True)
        return torch.cat([logmel, rms, onset], dim=-1).float()

    def __call__(self, audio: np.ndarray | torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        """(n_frames, dim) float32; ``n_frames`` defaults to ceil(samples / 640), audio is zero-padded or trimmed."""
        audio = _as_waveform(audio)
        n_frames = _default_frames(audio) if n_frames is None else int(n_frames)
        feats = (self._frame_features(audio, n_frames) if self.kind == "mmgt"
                 else torch.from_numpy(edge35_features(audio, SAMPLE_RATE, n_frames)))
        if self.encoder is not None:
            feats = torch.cat([self.encoder(audio, n_frames)[:, 0], feats], dim=-1)
        return feats


# ---------------------------------------------------------------------------------------------- stage 2


class Wav2VecFeatures:
    """Stage-2 audio embedding: every transformer layer's hidden state of wav2vec2, at 25 fps -> (T, L, D).

    Tiny seeded random init by default (hidden 32, 2 layers); ``pretrained_path`` loads a local Hugging Face folder
    (wav2vec2-base-960h in the original: 12 layers x 768). ``resample="after"`` (default) runs the transformer at its
    native 50 Hz and resamples its outputs to the frame centres; ``"before"`` (the original's Hallo trick, and the old
    default) brings the CNN features to 25 fps (``legacy_align_corners=True``: the original's align-corners stretch)
    and runs the transformer on video frames. ``vocal_separator`` names a local MDX-Net ONNX file (Kim_Vocal_2 in the
    original) whose vocals replace the mix before wav2vec; ``separator_options`` are
    :class:`~mmgt.data.vocal_separation.MDXVocalSeparator` settings. ``variant`` / ``dtype``: the folder's weight-file
    variant and the dtype wav2vec runs in (null: float32).
    """

    name = "wav2vec"

    def __init__(self, seed: int = 0, layers: str = "all", pretrained_path: str | None = None, hidden_size: int = 32,
                 num_layers: int = 2, legacy_align_corners: bool = False,
                 device: str | torch.device = "cpu", resample: str = "after", vocal_separator: str | None = None,
                 separator_options: dict[str, Any] | None = None, variant: str | None = None,
                 dtype: str | None = None) -> None:
        self.encoder = _SpeechEncoder("wav2vec2", pretrained_path=pretrained_path,
                                      config_key="data.stage2_features.pretrained_path", seed=seed,
                                      hidden_size=hidden_size, num_layers=num_layers, layers=layers,
                                      legacy_align_corners=legacy_align_corners, device=device, resample=resample,
                                      variant=variant, dtype=dtype)
        self.separator: MDXVocalSeparator | None = None
        if vocal_separator is not None:
            self.separator = MDXVocalSeparator(vocal_separator, config_key="data.stage2_features.vocal_separator",
                                               **dict(separator_options or {}))
        elif separator_options:
            raise ValueError("separator_options need data.stage2_features.vocal_separator (the ONNX file)")
        self.n_layers, self.hidden_size = self.encoder.n_layers, self.encoder.hidden_size
        self.feature_shape: tuple[int, ...] = (self.n_layers, self.hidden_size)
        settings = dict(version=1, **self.encoder.settings)
        if self.separator is not None:
            settings["vocal_separator"] = self.separator.settings
        self.signature = _signature(self.name, settings)

    def __call__(self, audio: np.ndarray | torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        """(n_frames, n_layers, hidden_size) float32; ``n_frames`` defaults to ceil(samples / 640)."""
        audio = _as_waveform(audio)
        n_frames = _default_frames(audio) if n_frames is None else int(n_frames)
        if self.separator is not None:
            audio = self.separator(audio, SAMPLE_RATE)
        return self.encoder(audio, n_frames)


# ---------------------------------------------------------------------------------------------- windows


def window_indices(start: int, count: int, n_total: int, radius: int) -> np.ndarray:
    """(count, 2r+1) int64 indices of frames ``i-r..i+r`` for ``i`` in ``[start, start+count)``, clamped to the clip."""
    centre = np.arange(start, start + count)[:, None]
    return np.clip(centre + np.arange(-radius, radius + 1)[None], 0, n_total - 1).astype(np.int64)


def window_features(emb: torch.Tensor | np.ndarray, radius: int) -> torch.Tensor | np.ndarray:
    """(T, ...) -> (T, 2r+1, ...): each frame with its ±r neighbours, edges repeated (the original's clamping)."""
    idx = window_indices(0, len(emb), len(emb), radius)
    return emb[torch.from_numpy(idx).to(emb.device)] if isinstance(emb, torch.Tensor) else emb[idx]


# ---------------------------------------------------------------------------------------------- cache


def feature_cache_path(corpus: Corpus, rec: ClipRecord, extractor: Any) -> Path:
    """Cache file of ``extractor``'s features for one clip (keyed by its signature)."""
    return corpus.cache_path(rec, extractor.signature)


def cache_is_fresh(path: str | Path, audio_path: str | Path, n_frames: int, feature_shape: tuple[int, ...]) -> bool:
    """True if the cache exists, is not older than the audio and holds ``(n_frames, *feature_shape)``."""
    path, audio_path = Path(path), Path(audio_path)
    try:
        if path.stat().st_mtime < audio_path.stat().st_mtime:
            return False
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError):
        return False
    return tuple(shape) == (n_frames, *tuple(feature_shape))


def ensure_feature_cache(corpus: Corpus, records: Iterable[ClipRecord], extractor: Any,
                         progress: bool = True) -> dict[str, str]:
    """Compute every missing or stale cache; return ``{clip_id: error}`` for clips whose audio could not be read."""
    from tqdm.auto import tqdm

    records = list(records)
    failed: dict[str, str] = {}
    for rec in tqdm(records, desc=f"{extractor.name} features", disable=not progress, unit="clip"):
        path, audio_path = feature_cache_path(corpus, rec, extractor), corpus.path(rec, "audio")
        if cache_is_fresh(path, audio_path, rec.n_frames, extractor.feature_shape):
            continue
        try:
            audio = corpus.load_audio(rec)
        except Exception as err:  # any decoder error is reported per clip, never raised
            failed[rec.clip_id] = f"cannot read audio {audio_path}: {type(err).__name__}: {err}"
            continue
        feats = extractor(audio, rec.n_frames)
        feats = feats.numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
        with atomic_path(path) as tmp:
            np.save(tmp, feats.astype(np.float32, copy=False))
    return failed
