"""FID on frames: the Fréchet distance between Inception-v3 pool features of generated and reference frames.

The network is the FID standard — the TensorFlow Inception graph of 2015-12-05 as ported to PyTorch — taken from
torchmetrics/torch-fidelity (``NoTrainInceptionV3``, 2048-d pool3 features) rather than re-implemented. Its weights
come from the local file of :mod:`mmgt.metrics.weights` (``pt_inception-2015-12-05-6726825d.pth``), loaded here
with ``weights_only=True``: torch-fidelity's own loader unpickles the file and downloads when no path is given, so
it only ever receives an empty state dict serialised here, and the real one is loaded safely afterwards.

Protocol (stated in the README): every ``frame_stride``-th frame of each video, converted to uint8 [0, 255],
resized to 299² with TensorFlow-1 bilinear resizing (torch-fidelity's, no antialiasing; ``antialias=True`` is
torchmetrics' default and renames to ``fid_aa``), features in float64, unbiased covariances. Frames of one video
are correlated, so FID over video frames needs many videos to be meaningful; ``fid_num_frames`` is logged beside it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchmetrics.image.fid import NoTrainInceptionV3

import mmgt.metrics.weights as W
from mmgt.metrics.frechet import FrechetMetric
from mmgt.metrics.i3d import he_init
from mmgt.metrics.video import ensure_device, to_unit

_UNSET = object()


class FIDInceptionV3(NoTrainInceptionV3):
    """torchmetrics' FID Inception (2048-d pool features of uint8 ``(N,3,H,W)`` images) built from a state dict in
    memory (or left random) instead of from a file that torch-fidelity would unpickle or download."""

    num_features = 2048

    def __init__(self, state_dict: dict[str, Tensor] | None, *, antialias: bool = False, size: int = 299):
        object.__setattr__(self, "_given_state", state_dict)  # consumed by load_state_dict during __init__
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        super().__init__(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=empty,
                         antialias=antialias)
        self.INPUT_IMAGE_SIZE = int(size)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """During construction: load the state dict given to ``__init__`` (strict), or He-init when it was None."""
        given = self.__dict__.pop("_given_state", _UNSET)
        if given is _UNSET:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        if given is None:
            he_init(self)
            return super().load_state_dict(self.state_dict())
        return super().load_state_dict(given, strict=True)


def _fast(net: FIDInceptionV3) -> FIDInceptionV3:
    """BatchNorm folded into each ``BasicConv2d``'s conv and channels-last weights: 1.6x faster on CPU, the same
    function up to float32 round-off (tested against torchmetrics' unfolded network)."""
    for m in net.modules():
        if isinstance(getattr(m, "bn", None), nn.BatchNorm2d) and isinstance(getattr(m, "conv", None), nn.Conv2d):
            m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), nn.Identity()
    return net.to(memory_format=torch.channels_last)


def build_fid_inception(path: str | Path | None, *, allow_random_weights: bool = False,
                        verify_checksums: bool = True, antialias: bool = False,
                        size: int = 299, checksum: str | None = None) -> tuple[nn.Module, bool]:
    """The FID feature net in eval mode (BatchNorm folded) from ``metrics.weights.inception``; ``(net, randinit)``.
    A file must hold the published key layout (loaded strictly; a torchvision file's ``AuxLogits`` are ignored)."""
    randinit = allow_random_weights and not W.available("inception", path)
    if randinit:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random net in every process/rank, global RNG untouched
            return _fast(FIDInceptionV3(None, antialias=antialias, size=size)), True
    p = W.resolve("inception", path, verify_checksum=verify_checksums, expected_sha256=checksum)
    sd = torch.load(p, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in sd.get("state_dict", sd).items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}  # a torchvision-style file's aux head
    try:
        net = FIDInceptionV3(sd, antialias=antialias, size=size)
    except RuntimeError as err:
        raise KeyError(f"{p} is not an FID Inception-v3 state dict ({W.REGISTRY['inception'].layout}): "
                       f"{str(err)[:300]}") from err
    return _fast(net), False


class FrechetInceptionDistance(FrechetMetric):
    """FID over the frames of generated vs reference videos ``(B,T,C,H,W)`` (uint8, or float in ``input_range``).

    States, DDP, the ≥ 2-frame rule and the optional reference cache come from
    :class:`~mmgt.metrics.frechet.FrechetMetric`; ``num_frames`` after compute says how many generated frames it
    used. Names: ``fid``; ``_r<size>`` for a resize other than 299, ``_aa`` with antialiasing, ``_randinit``.
    """

    name = "fid"
    sample_name = "frames"
    weights_key = "inception"
    settings = ("input_range", "allow_random_weights", "verify_checksums", "checksums")

    def __init__(self, inception_path: str | Path | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, checksums: Mapping[str, str] | None = None,
                 input_range: tuple[float, float] = (-1.0, 1.0),
                 frame_stride: int = 1, resize: int = 299, antialias: bool = False, frames_per_batch: int = 32,
                 reference_cache_mb: float = 0.0, **kwargs):
        if int(frame_stride) < 1:  # before the 24M-parameter network is built
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        super().__init__(reference_cache_mb=reference_cache_mb, **kwargs)
        checksum = (checksums or {}).get("inception")
        net, randinit = build_fid_inception(inception_path, allow_random_weights=allow_random_weights,
                                            verify_checksums=verify_checksums, antialias=antialias, size=resize,
                                            checksum=checksum)
        path = None if randinit else W.resolve("inception", inception_path, verify_checksum=False)
        self.weights_record = W.file_record("inception", path, verified=verify_checksums, expected_sha256=checksum)
        self.input_size: tuple[int, int] | None = None
        self.__dict__["_net"] = net  # out of the module tree: not in checkpoints, not seen by DDP
        self.randinit = randinit
        self.input_range = tuple(input_range)
        self.frame_stride, self.resize, self.antialias = int(frame_stride), int(resize), bool(antialias)
        self.frames_per_batch = int(frames_per_batch)
        self.name_suffix = ((f"_r{self.resize}" if self.resize != 299 else "") + ("_aa" if self.antialias else "")
                            + ("_randinit" if randinit else ""))

    @property
    def num_frames(self) -> int:
        return self.num_samples

    def update(self, generated: Tensor, reference: Tensor | None = None) -> None:
        self.input_size = (int(generated.shape[-2]), int(generated.shape[-1]))
        super().update(generated, reference)

    def protocol(self) -> dict[str, Any]:
        variant = "TF1 bilinear resize" if not self.antialias else "antialiased resize (torchmetrics default)"
        return {**super().protocol(), "variant": variant, "frame_stride": self.frame_stride,
                "resolution": [self.resize, self.resize],
                "input_resolution": list(self.input_size) if self.input_size else None,
                "features": "FID Inception-v3 (TF 2015-12-05) 2048-d pool features of uint8 frames, float64",
                **self.weights_record, "num_frames": self.num_samples}

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """``(N, 2048)`` float64 pool features of every ``frame_stride``-th frame of ``video`` (B,T,C,H,W)."""
        net = ensure_device(self.__dict__["_net"], video.device)
        frames = video[:, :: self.frame_stride].flatten(0, 1)
        out = []
        for i in range(0, frames.shape[0], self.frames_per_batch):
            chunk = frames[i:i + self.frames_per_batch]
            if chunk.dtype != torch.uint8:  # the network's input convention: uint8 [0, 255]
                chunk = (to_unit(chunk, self.input_range) * 255).round().to(torch.uint8)
            out.append(net(chunk).double())
        return torch.cat(out)

    def cache_key(self) -> tuple:
        return ("inception", self.frame_stride, self.resize, self.antialias, self.input_range)
