"""``PATSDataModule``: the one LightningDataModule of both stages, for PATS and synthetic corpora alike.

``stage="smga"`` serves stage-1 pose windows, ``stage="video"`` stage-2 video windows, cut from the same clips
by the same rules (:mod:`mmgt.data.datasets`). ``prepare_data`` (rank 0 of each node) generates the synthetic
corpus when asked to and it is missing, and computes/refreshes the feature cache the stage needs; ``setup`` only
reads, so every DDP rank sees the same files. Training windows are sharded over the ranks by a
:class:`~mmgt.data.sampling.ResumableSampler` (a ``DistributedSampler`` whose order depends on (seed, epoch) only
and whose position is saved in checkpoints: a resumed run serves the batches the uninterrupted one would have);
evaluation loaders are sequential and Lightning's ``DistributedSampler`` shards them.

Everything a model must know about the data (feature sizes, frame size, speakers, mask branches) comes from
:meth:`PATSDataModule.info` as a plain dict, so models never import this module.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from mmgt.data.audio_features import Stage1Features, Wav2VecFeatures, ensure_feature_cache, feature_cache_path
from mmgt.data.corpus import HOP, MANIFEST, SAMPLE_RATE, ClipRecord, Corpus, CorpusError
from mmgt.data.datasets import PoseWindowDataset, VideoWindowDataset, WindowDataset, collate_windows
from mmgt.data.sampling import ResumableDataLoader, ResumableSampler, SeededItems
from mmgt.pose.conditioning import ConditionProcessor
from mmgt.pose.layout import PoseNormalizer
from mmgt.pose.masks import MaskConfig, RegionMaskBuilder
from mmgt.utils.config import to_plain

log = logging.getLogger(__name__)

STAGES = ("smga", "video")
SPLITS_FOR = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
              None: ("train", "val", "test")}


def _plain_mask(mask: Any) -> dict[str, Any] | None:
    """A mask config (MaskConfig, DictConfig with ``_target_``, dict) -> plain dict without hydra keys."""
    if mask is None:
        return None
    if isinstance(mask, MaskConfig):
        return mask.to_dict()
    plain = to_plain(mask)
    if not isinstance(plain, Mapping):
        raise TypeError(f"data.mask must be a mapping or MaskConfig, got {type(mask).__name__}")
    return {str(k): v for k, v in plain.items() if not str(k).startswith("_")}


def _plain_dict(value: Any, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    plain = to_plain(value)
    if not isinstance(plain, Mapping):
        raise TypeError(f"data.{key} must be a mapping or null, got {type(value).__name__}")
    return {str(k): v for k, v in plain.items() if not str(k).startswith("_")}


def _size_pair(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = (int(v) for v in to_plain(image_size))
    return (h, w)


class PATSDataModule(L.LightningDataModule):
    """Windows of a processed corpus for stage 1 (``smga``) or stage 2 (``video``); see the module docstring.

    Args (the ``data`` config group): ``root`` corpus folder; ``stage``; ``window`` stage-1 window in frames (80 =
    3.2 s in the paper); ``stride`` training window spacing (starts are drawn at random within it);
    ``val_stride`` evaluation spacing (default: ``max(stride, window)``, non-overlapping); ``n_frames`` stage-2
    frames per sample; ``image_size`` stage-2 frame size (int or [H, W]; None = the corpus size);
    ``mask`` MaskConfig fields (masks are delivered at the one size it states; models resize them);
    ``stage1_features`` / ``stage2_features`` kwargs of
    :class:`~mmgt.data.audio_features.Stage1Features` / :class:`~mmgt.data.audio_features.Wav2VecFeatures`;
    ``synthetic`` ``{generate_if_missing, **ensure_corpus kwargs}`` or None; ``audio_context`` wav2vec window
    radius (2 -> 5 frames); ``pose_margin`` / ``legacy_pose_norm`` the :class:`PoseNormalizer` settings;
    ``manifest_wait_s`` how long a process that is not its node's rank 0 waits for rank 0 to write the synthetic
    corpus before it fails naming the manifest (a dead or hung writer must not block a job for hours);
    ``frame_cache_mb`` stage 2: decoded clips kept in memory per loader worker up to this size (0 = off;
    :class:`~mmgt.data.datasets.FrameCache`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        stage: str = "smga",
        window: int = 80,
        stride: int = 10,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        n_frames: int = 12,
        image_size: int | list[int] | tuple[int, int] | None = None,
        mask: Any = None,
        stage1_features: Mapping[str, Any] | None = None,
        stage2_features: Mapping[str, Any] | None = None,
        synthetic: Mapping[str, Any] | None = None,
        progress: bool = True,
        val_stride: int | None = None,
        audio_context: int = 2,
        pose_margin: float = 0.5,
        legacy_pose_norm: bool = False,
        pin_memory: bool = False,
        drop_last: bool = False,
        multiprocessing_context: str | None = None,
        manifest_wait_s: float = 600.0,
        pose_render: Mapping[str, Any] | None = None,
        frame_cache_mb: float = 256.0,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"data.stage must be one of {STAGES}, got {stage!r}")
        for name, value in (("window", window), ("stride", stride), ("batch_size", batch_size),
                            ("n_frames", n_frames)):
            if int(value) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        self.root = Path(root)
        self.stage = stage
        self.window, self.stride, self.n_frames = int(window), int(stride), int(n_frames)
        self.val_stride = int(val_stride) if val_stride else None
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size) if val_batch_size else self.batch_size
        self.num_workers = int(num_workers)
        if float(frame_cache_mb) < 0:
            raise ValueError(f"data.frame_cache_mb must be >= 0 (0: off), got {frame_cache_mb}")
        self.frame_cache_mb = float(frame_cache_mb)
        self.image_size = _size_pair(image_size)
        self.mask = _plain_mask(mask)
        self.stage1_kwargs = _plain_dict(stage1_features, "stage1_features") or {}
        self.stage2_kwargs = _plain_dict(stage2_features, "stage2_features") or {}
        self.synthetic = _plain_dict(synthetic, "synthetic")
        self.progress = bool(progress)
        self.audio_context = int(audio_context)
        self.pose_margin, self.legacy_pose_norm = float(pose_margin), bool(legacy_pose_norm)
        self.pin_memory, self.drop_last = bool(pin_memory), bool(drop_last)
        self.multiprocessing_context = multiprocessing_context
        self.manifest_wait_s = float(manifest_wait_s)
        self.pose_render = _plain_dict(pose_render, "pose_render") or {}
        # plain types only: checkpoints must load with torch.load(weights_only=True)
        self.save_hyperparameters({
            "root": str(self.root), "stage": stage, "window": self.window, "stride": self.stride,
            "batch_size": self.batch_size, "val_batch_size": self.val_batch_size, "num_workers": self.num_workers,
            "n_frames": self.n_frames, "image_size": list(self.image_size) if self.image_size else None,
            "mask": self.mask,
            "stage1_features": self.stage1_kwargs, "stage2_features": self.stage2_kwargs,
            "synthetic": self.synthetic, "progress": self.progress, "val_stride": self.val_stride,
            "audio_context": self.audio_context, "pose_margin": self.pose_margin,
            "legacy_pose_norm": self.legacy_pose_norm, "pin_memory": self.pin_memory, "drop_last": self.drop_last,
            "multiprocessing_context": multiprocessing_context, "manifest_wait_s": self.manifest_wait_s,
            "pose_render": self.pose_render,
        })
        self.datasets: dict[str, WindowDataset] = {}
        self._corpus: Corpus | None = None
        self._extractor: Stage1Features | Wav2VecFeatures | None = None
        self._mask_builder: RegionMaskBuilder | None = None

    # ------------------------------------------------------------------------------------------ corpus

    @property
    def window_length(self) -> int:
        """Frames per sample of the active stage."""
        return self.window if self.stage == "smga" else self.n_frames

    def ensure_corpus(self) -> None:
        """Generate the synthetic corpus if configured and missing (only the node's rank 0 writes it)."""
        if (self.root / MANIFEST).exists() or not (self.synthetic and self.synthetic.get("generate_if_missing")):
            return
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank != 0:  # another process of this node is writing it
            manifest, deadline = self.root / MANIFEST, time.monotonic() + self.manifest_wait_s
            while not manifest.exists():
                if time.monotonic() >= deadline:
                    raise CorpusError(f"{manifest}: rank {os.environ.get('RANK', local_rank)} (local rank "
                                      f"{local_rank}) waited {self.manifest_wait_s:g} s for its node's rank 0 to "
                                      "write the synthetic corpus; it failed or is still writing (raise "
                                      "data.manifest_wait_s, or build it first: python -m mmgt.prepare "
                                      f"task=synthetic data.root={self.root})")
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            return
        from mmgt.data.synthetic import ensure_corpus

        kwargs = {k: v for k, v in self.synthetic.items() if k != "generate_if_missing"}
        kwargs.setdefault("progress", self.progress)
        log.info("no corpus at %s: generating the synthetic corpus (%s)", self.root, kwargs)
        ensure_corpus(self.root, **kwargs)

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self.ensure_corpus()
            self._corpus = Corpus(self.root)  # CorpusError naming the missing manifest
        return self._corpus

    @property
    def extractor(self) -> Stage1Features | Wav2VecFeatures:
        """The feature extractor of the active stage (its cache is what the datasets read)."""
        if self._extractor is None:
            if self.stage == "smga":
                self._extractor = Stage1Features(**self.stage1_kwargs)
            else:
                self._extractor = Wav2VecFeatures(**self.stage2_kwargs)
        return self._extractor

    @property
    def mask_builder(self) -> RegionMaskBuilder:
        if self._mask_builder is None:
            self._mask_builder = RegionMaskBuilder(MaskConfig.from_dict(self.mask))
        return self._mask_builder

    @property
    def speakers(self) -> list[str]:
        """All speakers of the corpus (every split), sorted: ``batch['speaker']`` indexes this list."""
        return self.corpus.speakers

    @property
    def native_size(self) -> tuple[int, int]:
        """(H, W) of the corpus videos (the most common one; stage 2 needs them all equal or ``image_size``)."""
        sizes = Counter((r.height, r.width) for r in self.corpus.records)
        if not sizes:
            raise CorpusError(f"{self.root / MANIFEST}: the manifest lists no clips")
        return sizes.most_common(1)[0][0]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the served frames: ``image_size`` in stage 2 when set, else the corpus size."""
        if self.stage == "video" and self.image_size is not None:
            return self.image_size
        return self.native_size

    @property
    def normalizer(self) -> PoseNormalizer:
        """Pixel <-> [-1, 1] pose map of the corpus frame size (stage-1 poses are normalised with it)."""
        h, w = self.native_size
        return PoseNormalizer(w, h, margin=self.pose_margin, legacy=self.legacy_pose_norm)

    @property
    def fps(self) -> float:
        return float(Counter(r.fps for r in self.corpus.records).most_common(1)[0][0])

    @property
    def audio_feature_dim(self) -> int:
        """Width F of stage-1 ``audio_feat`` rows."""
        ext = self.extractor if self.stage == "smga" else Stage1Features(**self.stage1_kwargs)
        return int(ext.dim)

    @property
    def audio_embed_shape(self) -> tuple[int, int, int]:
        """(2r+1, L, D) of one frame of stage-2 ``audio_emb``: window, wav2vec layers, hidden size."""
        ext = self.extractor if self.stage == "video" else Wav2VecFeatures(**self.stage2_kwargs)
        layers, dim = ext.feature_shape
        return (2 * self.audio_context + 1, int(layers), int(dim))

    def info(self) -> dict[str, Any]:
        """Plain dict of what models need to size themselves (no tensors, no objects)."""
        h, w = self.frame_size
        out: dict[str, Any] = {
            "stage": self.stage,
            "window": self.window,
            "n_frames": self.n_frames,
            "frames_per_sample": self.window_length,
            "fps": self.fps,
            "sample_rate": SAMPLE_RATE,
            "hop": HOP,
            "frame_size": (h, w),
            "speakers": list(self.speakers),
            "n_speakers": len(self.speakers),
            "normalizer": {"width": self.normalizer.width, "height": self.normalizer.height,
                           "margin": self.pose_margin, "legacy": self.legacy_pose_norm},
            "audio_context": self.audio_context,
            # the other stage's extractor may need pretrained weights that are not installed: only the active one
            "audio_feature_dim": self.audio_feature_dim if self.stage == "smga" else None,
            "audio_embed_shape": self.audio_embed_shape if self.stage == "video" else None,
        }
        if self.stage == "video" or self.mask is not None:
            out["mask_branches"] = list(self.mask_builder.branch_names)
            out["num_branches"] = self.mask_builder.num_branches
            out["mask"] = self.mask_builder.cfg.to_dict()
            out["pose_render"] = dict(self.pose_render)
        return out

    # ------------------------------------------------------------------------------------------ lightning

    def prepare_data(self) -> None:
        """Rank 0 of each node: make sure the corpus exists and the active stage's feature cache is fresh."""
        corpus = self.corpus
        failed = ensure_feature_cache(corpus, corpus.records, self.extractor, progress=self.progress)
        for clip_id, why in failed.items():
            log.warning("feature cache of clip %s not computed, the clip will be skipped: %s", clip_id, why)

    def setup(self, stage: str | None = None) -> None:
        """Build the window datasets of the splits the Lightning ``stage`` needs (``dm.datasets[split]``)."""
        if self.stage == "video" and self.image_size is None:
            sizes = {(r.height, r.width) for r in self.corpus.records}
            if len(sizes) > 1:
                raise CorpusError(f"{self.root}: clips have different frame sizes {sorted(sizes)}; set data.image_size")
        for split in SPLITS_FOR.get(stage, SPLITS_FOR[None]):
            if split not in self.datasets:
                self.datasets[split] = self._make_dataset(split)

    def _cached_records(self, split: str) -> tuple[list[ClipRecord], dict[str, Path]]:
        records, paths, missing = [], {}, []
        for rec in self.corpus.split(split):
            path = feature_cache_path(self.corpus, rec, self.extractor)
            if path.exists():
                records.append(rec)
                paths[rec.clip_id] = path
            else:
                missing.append(rec.clip_id)
        if missing:
            log.warning("%s split: skipping %d clip(s) without a %s feature cache (unreadable audio? run "
                        "prepare_data first): %s", split, len(missing), self.extractor.name, ", ".join(missing))
        return records, paths

    def _make_dataset(self, split: str) -> WindowDataset:
        records, paths = self._cached_records(split)
        common = {"train": split == "train", "speakers": self.speakers, "feature_paths": paths,
                  "eval_stride": self.val_stride, "split": split}
        if self.stage == "smga":
            ds: WindowDataset = PoseWindowDataset(self.corpus, records, self.window, self.stride,
                                                  pose_margin=self.pose_margin,
                                                  legacy_pose_norm=self.legacy_pose_norm, **common)
        else:
            conditions = ConditionProcessor(self.mask_builder, self.pose_render)
            ds = VideoWindowDataset(self.corpus, records, self.n_frames, self.stride, image_size=self.image_size,
                                    conditions=conditions, audio_context=self.audio_context,
                                    frame_cache_mb=self.frame_cache_mb, **common)
        if len(ds) == 0:
            log.warning("%s split of %s has no %d-frame windows", split, self.root, ds.length)
        return ds

    def _loader(self, split: str, train: bool) -> DataLoader | list:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, "test"))
        ds = self.datasets[split]
        if len(ds) == 0:
            if train:
                raise CorpusError(f"{self.root}: the train split has no usable {ds.length}-frame windows")
            return []
        workers = self.num_workers
        common = dict(num_workers=workers, collate_fn=collate_windows, pin_memory=self.pin_memory,
                      persistent_workers=workers > 0,
                      multiprocessing_context=self.multiprocessing_context if workers > 0 else None)
        if not train:
            return DataLoader(ds, batch_size=self.val_batch_size, shuffle=False, **common)
        # a resumed run serves exactly the batches the uninterrupted one would have (mmgt.data.sampling)
        world, rank = self._shard()
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                   seed=int(os.environ.get("PL_GLOBAL_SEED", "0")))
        return ResumableDataLoader(SeededItems(ds), sampler=sampler, batch_size=self.batch_size,
                                   drop_last=self.drop_last, **common)

    def _shard(self) -> tuple[int, int]:
        """(world size, rank) the training sampler shards over: the trainer's, unless it runs without a
        distributed sampler (``use_distributed_sampler=False``: every rank sees every window)."""
        trainer = self.trainer
        if trainer is None or not getattr(trainer._accelerator_connector, "use_distributed_sampler", True):
            return 1, 0
        kwargs = trainer.distributed_sampler_kwargs or {}
        return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("test", False)
