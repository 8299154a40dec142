"""Optional vocal separation before wav2vec: an MDX-Net ONNX model (the original used Kim_Vocal_2) run with
onnxruntime on a local file.

MDX-Net models map a stereo complex spectrogram to the target stem's spectrogram. The runner, as published by the
MDX-Net/UVR inference code: resample to the model's rate, duplicate mono to stereo, cut the signal into windows of
``hop * (dim_t - 1)`` samples that overlap by ``n_fft`` (``n_fft // 2`` trimmed from each side of every output
window), STFT (Hann, centred) each window, keep the lowest ``dim_f`` bins in the layout ``(L re, L im, R re, R im)``,
run the model, zero the cut-off bins, inverse STFT, trim, concatenate, multiply by ``compensate``. ``denoise`` also
runs the negated spectrogram and averages ``(f(X) - f(-X)) / 2``. The model-specific numbers are settings (the
original code's documentation does not state them); the defaults are the values UVR's public model table lists for
Kim_Vocal_2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def file_identity(path: str | Path) -> dict[str, Any]:
    """Resolved path, size and mtime of a weights file or of every file in a weights folder: cache keys change when
    the weights are replaced in place."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return dict(path=str(path), files={p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files})


class MDXVocalSeparator:
    """Vocals of a mono waveform, through an MDX-Net ONNX model (input and output ``(B, 4, dim_f, dim_t)``).

    Defaults: the Kim_Vocal_2 entry of UVR's public model table (MMGT's code only names the model).
    """

    def __init__(self, model_path: str | Path, config_key: str = "data.stage2_features.vocal_separator",
                 sample_rate: int = 44100, n_fft: int = 7680, hop: int = 1024, dim_f: int = 3072, dim_t: int = 256,
                 compensate: float = 1.009, denoise: bool = False, batch_size: int = 4) -> None:
        import onnxruntime as ort

        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"vocal separation model not found: {path} (config key {config_key}). Put the MDX-Net ONNX file "
                f"(Kim_Vocal_2.onnx in the original) there, or set {config_key}=null to feed wav2vec the raw mix.")
        if not 0 < dim_f <= n_fft // 2 + 1 or hop * (dim_t - 1) <= n_fft:
            raise ValueError(f"inconsistent MDX settings: n_fft={n_fft}, hop={hop}, dim_f={dim_f}, dim_t={dim_t}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.sample_rate, self.n_fft, self.hop, self.dim_f, self.dim_t = sample_rate, n_fft, hop, dim_f, dim_t
        self.compensate, self.denoise, self.batch_size = compensate, denoise, batch_size
        self.window = torch.hann_window(n_fft, periodic=True)
        self.chunk = hop * (dim_t - 1)
        self.settings = dict(model=file_identity(path), sample_rate=sample_rate, n_fft=n_fft, hop=hop, dim_f=dim_f,
                             dim_t=dim_t, compensate=compensate, denoise=denoise)

    def _spec(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, 2, chunk) -> (B, 4, dim_f, dim_t): per channel real and imaginary planes."""
        b = waves.shape[0]
        z = torch.stft(waves.reshape(-1, self.chunk), self.n_fft, self.hop, window=self.window, center=True,
                       return_complex=True)  # (2B, n_bins, dim_t)
        z = torch.view_as_real(z).permute(0, 3, 1, 2)  # (2B, 2, n_bins, dim_t)
        return z.reshape(b, 4, -1, self.dim_t)[:, :, : self.dim_f]

    def _wave(self, spec: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_spec` with the bins above ``dim_f`` set to zero."""
        b, n_bins = spec.shape[0], self.n_fft // 2 + 1
        spec = torch.cat([spec, spec.new_zeros(b, 4, n_bins - self.dim_f, self.dim_t)], dim=2)
        z = torch.view_as_complex(spec.reshape(b * 2, 2, n_bins, self.dim_t).permute(0, 2, 3, 1).contiguous())
        return torch.istft(z, self.n_fft, self.hop, window=self.window, center=True,
                           length=self.chunk).reshape(b, 2, self.chunk)

    def _model(self, spec: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: spec})[0]
        if self.denoise:
            out = 0.5 * out - 0.5 * self.session.run(None, {self.input_name: -spec})[0]
        return out

    @torch.inference_mode()
    def separate_stereo(self, mix: np.ndarray) -> np.ndarray:
        """(2, n) stereo mix at the model's rate -> (2, n) vocals."""
        n, trim = mix.shape[1], self.n_fft // 2
        gen = self.chunk - 2 * trim
        pad = (-n) % gen
        padded = np.pad(mix.astype(np.float32), ((0, 0), (trim, trim + pad)))
        starts = range(0, n + pad, gen)
        waves = torch.from_numpy(np.stack([padded[:, s: s + self.chunk] for s in starts]))
        outs = []
        for i in range(0, len(waves), self.batch_size):
            spec = self._spec(waves[i: i + self.batch_size]).numpy()
            outs.append(self._wave(torch.from_numpy(self._model(spec).astype(np.float32))))
        tar = torch.cat(outs)[:, :, trim: self.chunk - trim]  # (W, 2, gen)
        return (tar.permute(1, 0, 2).reshape(2, -1)[:, :n] * self.compensate).numpy()

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono vocals of mono ``audio``, same rate and length (soxr_hq resampling to and from the model's rate)."""
        import librosa

        audio = np.asarray(audio, dtype=np.float32)
        x = librosa.resample(audio, orig_sr=sample_rate, target_sr=self.sample_rate, res_type="soxr_hq")
        vocals = self.separate_stereo(np.stack([x, x])).mean(0)
        out = librosa.resample(vocals, orig_sr=self.sample_rate, target_sr=sample_rate, res_type="soxr_hq")
        return np.pad(out, (0, max(0, len(audio) - len(out))))[: len(audio)].astype(np.float32)
