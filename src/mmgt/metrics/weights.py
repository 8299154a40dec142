"""The one registry of metric weight files: what each file is, where it is published, how to check it.

Nothing is ever downloaded. A metric that needs a network asks :func:`resolve` for its file; a missing file
raises :class:`MissingMetricWeightsError` naming the file, the config key, where to get it and its checksum, so
a user can fetch it by hand. With ``allow_random_weights=True`` (tests, quickstart) the caller builds the
network with random init instead, and the metric's logged name gets a ``_randinit`` suffix — never the bare name.

Checksums: the full sha256 (and byte size) of every published file whose digest could be stated: SyncNet's
``syncnet_v2.model`` and S3FD's ``sfd_face.pth`` (syncnet_python's download), stylegan-v's TorchScript I3D, the
torchvision AlexNet, the FID Inception. For TATS' ``i3d_pretrained_400.pt`` the git blob sha1 of the in-repo file
is what its publisher shows. A file with the right keys but other bytes is refused (:class:`ChecksumMismatchError`
naming the file, the expected and the actual digest). Your own file (a re-conversion, a fine-tuned net): state its
sha256 with ``metrics.checksums.<key>=<sha256>``; it is then checked against that instead and the protocol card
records it as ``user-declared``. ``metrics.verify_checksums=false`` skips the check (recorded as ``unverified``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class MissingMetricWeightsError(FileNotFoundError):
    """A weight file a metric needs is not on disk (and random weights are not allowed)."""


class ChecksumMismatchError(ValueError):
    """A weight file exists but is not the published one (nor the one the user declared)."""


@dataclass(frozen=True)
class WeightSpec:
    """One weight file. Checksums: full sha256, a torchvision/torch.hub-style sha256 *prefix*, or a git blob
    sha1 (what GitHub shows for an in-repo file) — whichever the publisher made available; ``size`` in bytes when
    known. ``alternatives``: other published files accepted for the same key (stylegan-v's TorchScript I3D beside
    TATS' state dict)."""

    key: str
    filename: str
    config_key: str
    published: str
    layout: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    git_blob_sha1: str | None = None
    size: int | None = None
    alternatives: tuple[WeightSpec, ...] = ()

    def checks(self) -> str:
        """The expected digests as text."""
        checks = [f"sha256={self.sha256}" if self.sha256 else "",
                  f"sha256 prefix={self.sha256_prefix}" if self.sha256_prefix and not self.sha256 else "",
                  f"git blob sha1={self.git_blob_sha1}" if self.git_blob_sha1 else "",
                  f"{self.size} bytes" if self.size else ""]
        return ", ".join(c for c in checks if c) or "no published checksum"

    def describe(self) -> str:
        alt = "".join(f"; or `{a.filename}` ({a.layout}; {a.checks()})" for a in self.alternatives)
        return (f"`{self.filename}` ({self.layout}); published at {self.published}; {self.checks()}{alt}; "
                f"config key `{self.config_key}`")

    def matches(self, sha256: str, git_sha1: str, size: int) -> bool:
        """Whether a file with these digests is this published file (False when nothing is known to check)."""
        if not (self.sha256 or self.sha256_prefix or self.git_blob_sha1):
            return False
        return ((self.sha256 is None or sha256 == self.sha256)
                and (self.sha256_prefix is None or sha256.startswith(self.sha256_prefix))
                and (self.git_blob_sha1 is None or git_sha1 == self.git_blob_sha1)
                and (self.size is None or size == self.size))

    def known_files(self) -> tuple[WeightSpec, ...]:
        return (self, *self.alternatives)


REGISTRY: dict[str, WeightSpec] = {
    "i3d": WeightSpec(
        key="i3d",
        filename="i3d_pretrained_400.pt",
        config_key="metrics.weights.i3d",
        published="https://github.com/songweige/TATS/blob/main/tats/fvd/i3d_pretrained_400.pt (also used by "
                  "VideoGPT, DisCo and cd-fvd; converted from the TF-Hub i3d-kinetics-400 network)",
        layout="InceptionI3d(400) state dict, piergiaj/pytorch-i3d key names",
        git_blob_sha1="a867b87ac3a9097d200598b1d48a1b890d8ec744",
        alternatives=(WeightSpec(
            key="i3d",
            filename="i3d_torchscript.pt",
            config_key="metrics.weights.i3d",
            published="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (universome/stylegan-v's FVD: "
                      "the TF-Hub i3d-kinetics-400 network as TorchScript)",
            layout="TorchScript module taking (N,3,T,H,W), rescale/resize/return_features keywords",
            sha256="bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2",
            size=51_235_320,
        ),),
    ),
    "syncnet": WeightSpec(
        key="syncnet",
        filename="syncnet_v2.model",
        config_key="metrics.weights.syncnet",
        published="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model "
                  "(joonson/syncnet_python download_model.sh)",
        layout="SyncNet `S` state dict (netcnnaud/netfcaud/netcnnlip/netfclip)",
        sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
        size=54_573_114,
    ),
    "s3fd": WeightSpec(
        key="s3fd",
        filename="sfd_face.pth",
        config_key="metrics.weights.s3fd",
        published="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/sfd_face.pth "
                  "(joonson/syncnet_python download_model.sh, detectors/s3fd/weights/)",
        layout="S3FD (VGG16 single-shot face detector) state dict, syncnet_python's detectors/s3fd key names",
        sha256="d54a87c2b7543b64729c9a25eafd188da15fd3f6e02f0ecec76ae1b30d86c491",
        size=89_844_381,
    ),
    "alexnet": WeightSpec(
        key="alexnet",
        filename="alexnet-owt-7be5be79.pth",
        config_key="metrics.weights.alexnet",
        published="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision AlexNet_Weights."
                  "IMAGENET1K_V1; the LPIPS backbone — the lpips package ships only its linear heads)",
        layout="torchvision AlexNet state dict (features.*, classifier.*)",
        sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        sha256_prefix="7be5be79",
        size=244_408_911,
    ),
    "inception": WeightSpec(
        key="inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        config_key="metrics.weights.inception",
        published="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  "pt_inception-2015-12-05-6726825d.pth (pytorch-fid; the TF FID Inception of 2015-12-05 — "
                  "torch-fidelity publishes the same file as weights-inception-2015-12-05-6726825d.pth)",
        layout="FID Inception-v3 state dict, torchvision Inception3 key names without AuxLogits (Conv2d_1a_3x3.conv, "
               "... Mixed_7c, fc 2048->1008)",
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        sha256_prefix="6726825d",
        size=95_628_359,
    ),
}

_DIGESTS: dict[tuple[str, int, int], tuple[str, str]] = {}  # (path, size, mtime) -> digests: hash a file once


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, streamed (remembered per path, size and modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        git = hashlib.sha1(f"blob {st.st_size}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
                git.update(chunk)
        _DIGESTS[key] = (sha.hexdigest(), git.hexdigest())
    return _DIGESTS[key]


def check_file(path: Path, spec: WeightSpec, expected_sha256: str | None = None) -> str:
    """How ``path`` stands against the registry: ``published`` (it is one of the published files),
    ``user-declared`` (it matches ``expected_sha256``, the user's own checksum) or ``unverified`` (no checksum is
    known for this key). Raises :class:`ChecksumMismatchError` naming the file, the expected and the actual digests
    when it is neither."""
    sha, git = file_digests(path)
    size = path.stat().st_size
    if expected_sha256:
        want = str(expected_sha256).strip().lower()
        if sha == want:
            return "user-declared"
        raise ChecksumMismatchError(
            f"{path} is not the file you declared: expected sha256 {want} (`metrics.checksums.{spec.key}`), "
            f"actual sha256 {sha}.")
    known = [s for s in spec.known_files() if s.sha256 or s.sha256_prefix or s.git_blob_sha1]
    if not known:
        return "unverified"
    if any(s.matches(sha, git, size) for s in known):
        return "published"
    expected = "; or ".join(f"{s.filename}: {s.checks()}" for s in known)
    raise ChecksumMismatchError(
        f"{path} is not the published {spec.filename}: expected {expected}; actual sha256={sha}, git blob "
        f"sha1={git}, {size} bytes. The file's keys may fit, but its bytes are not the published network's. "
        f"For your own file set `metrics.checksums.{spec.key}=<its sha256>` (recorded as user-declared), or "
        "`metrics.verify_checksums=false` to skip the check (recorded as unverified).")


def verify(path: Path, spec: WeightSpec, expected_sha256: str | None = None) -> None:
    """Raise :class:`ChecksumMismatchError` if ``path`` is not a published file of ``spec`` (or, with
    ``expected_sha256``, not the user's declared file); no-op when no checksum is known."""
    check_file(path, spec, expected_sha256)


def resolve(key: str, path: str | Path | None, *, verify_checksum: bool = True,
            expected_sha256: str | None = None) -> Path:
    """The local file for registry entry ``key`` at ``path`` (a file, or a folder holding a published name).

    Raises :class:`MissingMetricWeightsError` naming file, config key, publisher and checksum when it is absent,
    :class:`ChecksumMismatchError` when ``verify_checksum`` and the bytes are not the published (or declared) ones.
    """
    spec = REGISTRY[key]
    if path in (None, ""):
        raise MissingMetricWeightsError(f"no path configured for the {key} metric weights: set "
                                        f"`{spec.config_key}=<path>` to {spec.describe()}. Nothing is downloaded; "
                                        f"`metrics.allow_random_weights=true` uses random init (names get "
                                        f"`_randinit`).")
    p = _locate(spec, Path(str(path)).expanduser())
    if not p.is_file():
        raise MissingMetricWeightsError(f"{key} metric weights not found at {p}: expected {spec.describe()}. "
                                        f"Nothing is downloaded; fetch the file and point `{spec.config_key}` at it, "
                                        f"or set `metrics.allow_random_weights=true` (names get `_randinit`).")
    if verify_checksum:
        verify(p, spec, expected_sha256)
    return p


def _locate(spec: WeightSpec, p: Path) -> Path:
    """A folder -> the first published file name found in it (else the main name, for the error message)."""
    if not p.is_dir():
        return p
    for s in spec.known_files():
        if (p / s.filename).is_file():
            return p / s.filename
    return p / spec.filename


def available(key: str, path: str | Path | None) -> bool:
    """Whether :func:`resolve` would find a file (without checking it)."""
    if path in (None, ""):
        return False
    return _locate(REGISTRY[key], Path(str(path)).expanduser()).is_file()


def file_record(key: str, path: Path | None, *, verified: bool, expected_sha256: str | None = None
                ) -> dict[str, Any]:
    """What a protocol card says about a metric's weight file: path, sha256, and ``published`` /
    ``user-declared`` / ``unverified`` (checks off, or nothing known) / ``random-init`` (no file)."""
    if path is None:
        return {"weights": None, "weights_sha256": None, "weights_status": "random-init"}
    sha, _ = file_digests(path)
    status = "unverified"
    if verified:
        status = check_file(path, REGISTRY[key], expected_sha256)
    return {"weights": str(path), "weights_sha256": sha, "weights_status": status}
