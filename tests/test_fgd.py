"""FGD with a trained motion encoder, the published diversity and beat-alignment variants (mmgt.metrics.gesture,
mmgt.models.fgd, mmgt.lit.fgd)."""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.metrics.beats import BeatAlignment, beat_align_score
from mmgt.metrics.gesture import (
    FrechetGestureDistance,
    GestureDiversity,
    GestureSuite,
    diversity_bailando,
    diversity_diffgesture,
    sequence_features,
)
from mmgt.models.fgd import USED_POINTS, MotionAutoencoder, MotionAutoencoderConfig, part_inputs
from mmgt.pose.layout import FEET, LEG_POINTS, NUM_KEYPOINTS

WINDOW = 32


def _windows(corpus: Path, splits: tuple[str, ...], stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (W, 32, 134, 3) pose windows and their visibility from the corpus clips of ``splits``."""
    from mmgt.data.corpus import Corpus
    from mmgt.pose.layout import PoseNormalizer, visibility

    c = Corpus(corpus)
    poses, vis = [], []
    for r in c.records:
        if r.split not in splits:
            continue
        kp = c.load_keypoints(r).astype(np.float32)
        norm = PoseNormalizer(r.width, r.height).normalize(kp)
        for s in range(0, len(kp) - WINDOW + 1, stride):
            poses.append(norm[s:s + WINDOW])
            vis.append(visibility(kp[s:s + WINDOW]))
    return torch.from_numpy(np.stack(poses)), torch.from_numpy(np.stack(vis))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic corpus (3 speakers x 8 clips of 4 s): FGD needs a few hundred windows per side."""
    from mmgt.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("fgd_corpus")
    generate_corpus(root, n_speakers=3, clips_per_speaker=8, seconds=4.0, size=64, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def encoder_ckpt(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FGD encoder trained briefly (300 steps; Lightning, the module's own loss) on the corpus' training windows."""
    import lightning as L

    from mmgt.lit.fgd import FGDEncoderModule

    torch.manual_seed(0)
    poses, vis = _windows(corpus, ("train",))
    items = [{"poses": p, "vis": v} for p, v in zip(poses, vis, strict=True)]
    loader = torch.utils.data.DataLoader(items, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    module = FGDEncoderModule(net={"length": None, "latent_dim": 32}, data_info={"window": WINDOW, "fps": 25.0})
    trainer = L.Trainer(max_steps=300, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    out = tmp_path_factory.mktemp("fgd_encoder") / "encoder.ckpt"
    trainer.save_checkpoint(str(out))
    return out


def _fgd(encoder: Path | None, generated: torch.Tensor, reference: torch.Tensor, vis: torch.Tensor | None = None
         ) -> dict[str, float]:
    m = FrechetGestureDistance(encoder=None if encoder is None else str(encoder))
    m.update(generated, reference, vis)
    return m.results()


@pytest.mark.slow  # trains the encoder: ~20 s on 2 free cores
def test_trained_encoder_fgd_separates_frozen_from_held_out_motion(corpus: Path, encoder_ckpt: Path) -> None:
    ref, _ = _windows(corpus, ("train",))
    held, _ = _windows(corpus, ("val", "test"))
    real = _fgd(encoder_ckpt, held, ref)
    assert set(real) == {"fgd", "fgd_body", "fgd_hands", "fgd_face", "fgd_num_windows"}
    assert real["fgd_num_windows"] == len(held)
    # the same poses without their motion: every held-out window frozen at its first frame
    frozen = _fgd(encoder_ckpt, held[:, :1].expand_as(held).clone(), ref)
    assert frozen["fgd"] > 5 * real["fgd"], (real, frozen)
    # Not asserted: frame-shuffled windows scored 0.9-4.6x the held-out FGD across training seeds after 300 steps
    # (this corpus' gestures are small); time reversal is no distortion here (its gesture strokes are symmetric in time)
    # the random projection is blind to the order of frames of a sequence played backwards: exactly the same score
    assert _fgd(None, held.flip(1), ref) == _fgd(None, held, ref)


@pytest.mark.slow  # shares the trained encoder
def test_fgd_names_protocol_and_refusals(corpus: Path, encoder_ckpt: Path, tmp_path: Path) -> None:
    from mmgt.errors import CheckpointError
    from mmgt.metrics.weights import ChecksumMismatchError

    held, vis = _windows(corpus, ("val", "test"), stride=8)
    sha = hashlib.sha256(encoder_ckpt.read_bytes()).hexdigest()
    suite = GestureSuite(encoder=str(encoder_ckpt), encoder_sha256=sha, beat_align=False, beat_align_diffgesture=False)
    assert suite.names == ["l2_face", "l2_lips", "l2_hands", "l2_body", "fgd", "fgd_body", "fgd_hands", "fgd_face",
                           "fgd_num_windows", "diversity_bailando", "diversity_bailando_real",
                           "diversity_diffgesture", "diversity_diffgesture_real"]
    suite.update(held + 0.01 * torch.randn_like(held), held, vis=vis)
    out = suite.compute()
    assert math.isfinite(out["fgd"]) and out["fgd"] > 0 and out["fgd_num_windows"] == len(held)
    card = suite.protocol()["fgd"]
    assert card["metric"] == "fgd" and card["encoder"] == str(encoder_ckpt) and card["encoder_sha256"] == sha
    assert card["window"] == WINDOW and card["num_generated"] == len(held)
    # 64-frame sequences: two non-overlapping encoder windows each; 20 frames: too short, skipped (nan, warned)
    long = FrechetGestureDistance(encoder=str(encoder_ckpt))
    long.update(held[:6].reshape(3, 2 * WINDOW, NUM_KEYPOINTS, 3), held[:6].reshape(3, 2 * WINDOW, NUM_KEYPOINTS, 3))
    assert long.results()["fgd_num_windows"] == 6
    short = FrechetGestureDistance(encoder=str(encoder_ckpt))
    with pytest.warns(UserWarning, match="shorter than the FGD encoder"):
        short.update(held[:, :20], held[:, :20])
    assert math.isnan(short.results()["fgd"]) and short.protocol()["skipped_sequences"] == 2 * len(held)
    # without an encoder: the random projection under its own name
    assert GestureSuite(beat_align=False, beat_align_diffgesture=False).names[4:7] == [
        "fgd_randproj", "diversity_bailando_randproj", "diversity_bailando_real_randproj"]
    with pytest.raises(ChecksumMismatchError, match="encoder_sha256"):
        FrechetGestureDistance(encoder=str(encoder_ckpt), encoder_sha256="0" * 64)
    other = tmp_path / "smga.ckpt"
    torch.save({"state_dict": {}, "mmgt": {"kind": "smga", "format_version": 1}}, other)
    with pytest.raises(CheckpointError, match="not an FGD encoder checkpoint"):
        FrechetGestureDistance(encoder=str(other))


def test_unsupervised_and_invisible_points_do_not_change_the_features() -> None:
    g = torch.Generator().manual_seed(0)
    poses = torch.rand(4, WINDOW, NUM_KEYPOINTS, 3, generator=g) * 2 - 1
    vis = torch.rand(4, WINDOW, NUM_KEYPOINTS, generator=g) > 0.2
    moved = poses.clone()
    unused = [i for i in range(NUM_KEYPOINTS) if i not in USED_POINTS]
    assert set(unused) == set(LEG_POINTS) | set(FEET)
    moved[:, :, unused, :2] += torch.randn(4, WINDOW, len(unused), 2, generator=g)
    hidden = ~vis
    moved[..., :2] = torch.where(hidden[..., None], torch.randn(moved[..., :2].shape, generator=g), moved[..., :2])
    net = MotionAutoencoder(MotionAutoencoderConfig(length=WINDOW, latent_dim=8)).eval()
    with torch.no_grad():
        assert torch.equal(net.encode(poses, vis), net.encode(moved, vis))
    assert torch.equal(sequence_features(poses, 8, vis), sequence_features(moved, 8, vis))
    for part, x in part_inputs(poses, vis).items():
        assert torch.equal(x, part_inputs(moved, vis)[part])
    # a visible face point does move them
    face = poses.clone()
    face[:, :, 60, 0] += 0.2
    with torch.no_grad():
        assert not torch.equal(net.encode(poses), net.encode(face))


def test_diversity_variants_equal_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(0)
    fake = rng.standard_normal((7, 5)) * [1, 2, 3, 4, 5] + 1.0
    real = rng.standard_normal((9, 5)) * [5, 4, 3, 2, 1] - 1.0
    mean, std = real.mean(0), real.std(0)
    z = (fake - mean) / (std + 1e-10)
    pairs = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    assert math.isclose(diversity_bailando(torch.from_numpy(fake), torch.from_numpy(real)), float(np.mean(pairs)),
                        rel_tol=1e-12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3)).numpy()[:4]
    ordered = fake[np.lexsort(fake.T[::-1])]  # rows in lexicographic order: independent of the arrival order
    l1 = np.mean([np.abs(ordered[i] - ordered[perm[i]]).sum() for i in range(4)])
    assert math.isclose(diversity_diffgesture(torch.from_numpy(fake), n_pairs=4, seed=3), float(l1), rel_tol=1e-12)
    shuffled = torch.from_numpy(fake[rng.permutation(7)])  # e.g. gathered from two DDP ranks
    assert diversity_diffgesture(shuffled, n_pairs=4, seed=3) == diversity_diffgesture(torch.from_numpy(fake), 4, 3)
    # the metrics: the same formulas on their features, ground truth beside
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(6, 20, NUM_KEYPOINTS, 3, generator=g), torch.randn(8, 20, NUM_KEYPOINTS, 3, generator=g)
    fp, ft = sequence_features(pred, 4), sequence_features(target, 4)
    bail, dg = GestureDiversity(4), GestureDiversity(4, variant="diffgesture", n_pairs=500, seed=0)
    for m in (bail, dg):
        m.update(pred, target)
    assert bail.results() == {"diversity_bailando_randproj": diversity_bailando(fp, ft),
                              "diversity_bailando_real_randproj": diversity_bailando(ft, ft)}
    assert dg.results() == {"diversity_diffgesture_randproj": diversity_diffgesture(fp, 500, 0),
                            "diversity_diffgesture_real_randproj": diversity_diffgesture(ft, 500, 0)}


def _stroke_poses(n: int, pauses: list[int]) -> torch.Tensor:
    """Hands and body move at unit speed, pausing (speed 0) at the given frames."""
    speed = np.ones(n)
    for m in pauses:
        lo, hi = max(0, m - 3), min(n, m + 4)
        speed[lo:hi] = np.abs(np.arange(lo - m, hi - m)) / 3
    p = torch.zeros(1, n, NUM_KEYPOINTS, 3)
    p[..., 0] = torch.from_numpy(np.cumsum(speed) * 0.01).float()[None, :, None]
    return p


def test_beat_alignment_frozen_jitter_scores_below_onset_locked_motion() -> None:
    n, hop = 100, 640
    rng = np.random.default_rng(0)
    starts = list(range(8, n - 8, 12))
    audio = rng.standard_normal(n * hop).astype(np.float32) * 0.01
    for f in starts:
        audio[f * hop:(f + 3) * hop] *= 50  # loud syllables starting at these frames
    audio_t = torch.from_numpy(audio)[None]
    g = torch.Generator().manual_seed(0)
    frozen = 0.3 + 0.01 * torch.randn(1, n, NUM_KEYPOINTS, 3, generator=g)  # a still pose, 1 % detector jitter

    def score(poses: torch.Tensor, **kw: object) -> float:
        m = BeatAlignment(**kw)
        m.update(poses, audio_t)
        return float(m.compute())

    locked, off = score(_stroke_poses(n, starts)), score(_stroke_poses(n, [f + 6 for f in starts]))
    still = score(frozen)
    assert locked > 2 * still and locked - still > 0.15, (locked, still)
    assert locked > 5 * off, (locked, off)
    assert score(_stroke_poses(n, starts), events="onset") > 2 * score(_stroke_poses(n, [f + 6 for f in starts]),
                                                                       events="onset")


def test_beat_alignment_pooling_and_ground_truth_beside() -> None:
    n, hop = 60, 640
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((2, n * hop)).astype(np.float32) * 0.01
    audio[0, 10 * hop:13 * hop] *= 50
    audio[1, 20 * hop:23 * hop] *= 50
    audio[1, 40 * hop:43 * hop] *= 50
    pred = torch.cat([_stroke_poses(n, [10, 30]), _stroke_poses(n, [25, 45])])
    target = torch.cat([_stroke_poses(n, [10]), _stroke_poses(n, [20, 40])])
    from mmgt.metrics.beats import audio_events, motion_beats

    clip, event = BeatAlignment(variant="diffgesture", pool="clip"), BeatAlignment(variant="diffgesture")
    for m in (clip, event):
        m.update(pred, torch.from_numpy(audio), reference=target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = [audio_events(a, 16000, "onset") for a in audio]
    assert all(len(e) > 0 for e in ev)
    s = [beat_align_score(ev[b], motion_beats(pred[b].numpy(), 25.0), 0.1) for b in range(2)]
    r = [beat_align_score(ev[b], motion_beats(target[b].numpy(), 25.0), 0.1) for b in range(2)]
    e = [len(x) for x in ev]
    out = clip.results()
    assert math.isclose(out["beat_align_diffgesture"], np.mean(s), rel_tol=1e-6)
    assert math.isclose(out["beat_align_diffgesture_real"], np.mean(r), rel_tol=1e-6)
    assert math.isclose(event.results()["beat_align_diffgesture"], np.dot(s, e) / sum(e), rel_tol=1e-6)
    assert event.protocol()["scored_clips"] == 2 and event.protocol()["sigma_s"] == 0.1


@pytest.mark.slow
def test_fgd_encoder_experiment_trains_from_the_cli_config(synthetic_corpus: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from mmgt.runner import train
    from mmgt.utils.paths import CONF_DIR

    out = tmp_path / "run"
    overrides = ["experiment=fgd_encoder", f"data.root={synthetic_corpus}", "data.progress=false",
                 "trainer.max_steps=6", "trainer.val_check_interval=3", "data.batch_size=8",
                 "~callbacks.progress_bar", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 f"paths.root_dir={tmp_path}", f"paths.output_dir={out}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg)
    assert "val/loss" in metrics and math.isfinite(metrics["val/loss"])
    suite = GestureSuite(encoder=str(out), beat_align=False, beat_align_diffgesture=False)  # the run folder
    assert "fgd" in suite.names and suite.protocol()["fgd"]["encoder"].endswith(".ckpt")
    assert suite.protocol()["fgd"]["encoder_step"] == 6 and suite.protocol()["fgd"]["window"] == cfg.data.window
