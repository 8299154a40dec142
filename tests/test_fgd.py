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
    """A small synthetic corpus on disk (3 speakers x 8 clips of 4 s): the protocol test's windows, and the check
    that :func:`_generator_windows` draws the corpus' clips."""
    from mmgt.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("fgd_corpus")
    generate_corpus(root, n_speakers=3, clips_per_speaker=8, seconds=4.0, size=64, seed=0, progress=False)
    return root


def _clip_keypoints(speaker: int, clip: int, seed: int = 0, n_frames: int = 100, size: int = 64) -> np.ndarray:
    """Pixel keypoints of clip ``clip`` of speaker ``speaker`` of the synthetic corpus, drawn as ``generate_corpus``
    draws them (``synth_sequence`` without rendering the frames, which is most of a corpus' cost)."""
    from dataclasses import replace

    from mmgt.data.synthetic import frame_loudness, speaker_style, speech_audio, speech_envelope, synth_pose

    style = replace(speaker_style(speaker, seed), sway=0.02)
    rng = np.random.default_rng([seed, speaker, clip])
    env = speech_envelope(n_frames, style.rate, rng)
    speech_audio(env, style.pitch, rng)  # draws from the same generator before the pose
    return synth_pose(frame_loudness(env, n_frames), size, style, rng).astype(np.float32)


def _generator_windows(clips: range, n_speakers: int = 3, stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (W, 32, 134, 3) windows and visibility of clips ``clips`` of every speaker of a synthetic corpus
    with that many clips per speaker (what ``_windows`` reads from one written to disk)."""
    from mmgt.pose.layout import PoseNormalizer, visibility

    poses, vis = [], []
    for s in range(n_speakers):
        for c in clips:
            kp = _clip_keypoints(s, c)
            norm = PoseNormalizer(64, 64).normalize(kp)
            for t in range(0, len(kp) - WINDOW + 1, stride):
                poses.append(norm[t:t + WINDOW])
                vis.append(visibility(kp[t:t + WINDOW]))
    return torch.from_numpy(np.stack(poses)), torch.from_numpy(np.stack(vis))


#: clips per speaker the encoder trains on and the held-out ones after them. FGD needs many clips on both sides:
#: with the 18 training clips of a small corpus the encoder fits those clips (held-out real clips then score an FGD
#: of 3-10 against them, as large as frame-shuffled ones) and a few hundred overlapping windows leave the Fréchet
#: distance of real vs real dominated by sampling noise in 96 dimensions.
TRAIN_CLIPS, HELD_CLIPS = range(60), range(60, 100)


def test_generator_windows_are_the_corpus_clips(corpus: Path) -> None:
    from mmgt.data.corpus import Corpus

    c = Corpus(corpus)
    for r in c.records[:: 7]:
        s, clip = (int(x) for x in r.clip_id.removeprefix("spk").split("_"))
        np.testing.assert_array_equal(c.load_keypoints(r), _clip_keypoints(s, clip))
    poses, _ = _windows(corpus, ("train",))
    assert torch.equal(_generator_windows(range(6))[0], poses)  # 6 training clips per speaker, in the same order


@pytest.fixture(scope="module")
def train_windows() -> tuple[torch.Tensor, torch.Tensor]:
    return _generator_windows(TRAIN_CLIPS)


@pytest.fixture(scope="module")
def encoder_ckpt(train_windows: tuple[torch.Tensor, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FGD encoder trained as ``experiment=fgd_encoder`` does (the default net and optimiser, 300 steps of 32
    windows; Lightning, the module's own loss) on the training clips of a 3-speaker synthetic corpus."""
    import lightning as L

    from mmgt.lit.fgd import FGDEncoderModule

    torch.manual_seed(0)
    poses, vis = train_windows
    items = [{"poses": p, "vis": v} for p, v in zip(poses, vis, strict=True)]
    loader = torch.utils.data.DataLoader(items, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    module = FGDEncoderModule(net={"length": None}, data_info={"window": WINDOW, "fps": 25.0})
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


@pytest.mark.slow  # trains the encoder: 40-55 s on one busy core (windows 4 s, training 30-38 s, FGD 5-10 s)
def test_trained_encoder_fgd_separates_shuffled_and_frozen_from_held_out_motion(
        encoder_ckpt: Path, train_windows: tuple[torch.Tensor, torch.Tensor]) -> None:
    from mmgt.metrics.frechet import frechet_distance_from_features

    ref = train_windows[0]
    held, _ = _generator_windows(HELD_CLIPS)
    metric = FrechetGestureDistance(encoder=str(encoder_ckpt))
    metric.update(held, ref)
    real = metric.results()
    assert set(real) == {"fgd", "fgd_body", "fgd_hands", "fgd_face", "fgd_num_windows"}
    assert real["fgd_num_windows"] == len(held)
    f_ref = torch.cat(metric.real)  # the metric's reference codes, encoded once for all probes

    def fgd(poses: torch.Tensor) -> float:
        return frechet_distance_from_features(f_ref, metric.features(poses))

    assert math.isclose(fgd(held), real["fgd"], rel_tol=1e-6)  # the metric's value (logged in float32)
    g = torch.Generator().manual_seed(1)
    shuffled = torch.stack([w[torch.randperm(WINDOW, generator=g)] for w in held])  # frames shuffled per window
    frozen = held[:, :1].expand_as(held).clone()  # every window frozen at its first frame
    ratios = {"shuffled": fgd(shuffled) / real["fgd"], "frozen": fgd(frozen) / real["fgd"]}
    # measured over training seeds 0-5: shuffled 5.7-27x, frozen 24-245x the held-out real FGD. Not asserted: time
    # reversal (0.5-4.7x): the synthetic gesture strokes are nearly symmetric in time
    assert ratios["shuffled"] > 3 and ratios["frozen"] > 5, (real["fgd"], ratios)
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
    assert short.results() == {} and short.protocol()["skipped_sequences"] == 2 * len(held)
    # without an encoder: the random projection under its own name
    assert GestureSuite(beat_align=False, beat_align_diffgesture=False).names[4:7] == [
        "fgd_randproj", "diversity_bailando_randproj", "diversity_bailando_real_randproj"]
    with pytest.raises(ChecksumMismatchError, match="encoder_sha256"):
        FrechetGestureDistance(encoder=str(encoder_ckpt), encoder_sha256="0" * 64)
    other = tmp_path / "smga.ckpt"
    torch.save({"state_dict": {}, "mmgt": {"kind": "smga", "format_version": 1}}, other)
    with pytest.raises(CheckpointError, match="not an FGD encoder checkpoint"):
        FrechetGestureDistance(encoder=str(other))


@pytest.fixture(scope="module")
def one_step_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FGD encoder checkpoint after one training step (its values do not matter here, only that it is one)."""
    import lightning as L

    from mmgt.lit.fgd import FGDEncoderModule

    torch.manual_seed(0)
    items = [{"poses": torch.rand(WINDOW, NUM_KEYPOINTS, 3) * 2 - 1} for _ in range(8)]
    module = FGDEncoderModule(net={"length": None, "latent_dim": 4}, data_info={"window": WINDOW, "fps": 25.0})
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(items, batch_size=8))
    out = tmp_path_factory.mktemp("fgd_one_step") / "encoder.ckpt"
    trainer.save_checkpoint(str(out))
    return out


@pytest.mark.parametrize("t", [1, 12])
def test_no_standard_gesture_name_when_clips_are_shorter_than_the_protocol(one_step_encoder: Path, t: int) -> None:
    """1- and 12-frame clips (sub-stage A, short validation windows) hold no 32-frame encoder window: ``fgd`` and
    the encoder-based diversities log nothing rather than ``nan``; beat alignment logs nothing for clips without a
    motion beat (1 frame: no speed at all). A 32-frame clip logs them all."""
    g = torch.Generator().manual_seed(t)
    n = 4
    audio = torch.randn(n, 40 * 640, generator=g) * 0.01
    audio[:, 3 * 640:6 * 640] *= 50  # a loud syllable from frame 3 on: an onset the short clips contain too
    suite = GestureSuite(encoder=str(one_step_encoder))
    fgd_names = {"fgd", "fgd_body", "fgd_hands", "fgd_face", "fgd_num_windows", "diversity_bailando",
                 "diversity_bailando_real", "diversity_diffgesture", "diversity_diffgesture_real"}
    assert fgd_names <= set(suite.names)
    pred = torch.rand(n, t, NUM_KEYPOINTS, 3, generator=g) * 2 - 1
    with pytest.warns(UserWarning, match="shorter than the FGD encoder"):
        suite.update(pred, pred + 0.01, audio=audio[:, :t * 640])
    out = suite.compute()
    assert {"l2_face", "l2_lips", "l2_hands", "l2_body"} <= set(out)
    assert not set(out) & fgd_names, out
    assert all(math.isfinite(v) for v in out.values()), out
    assert suite.last_card["fgd"]["skipped_sequences"] == 2 * n and suite.last_card["fgd"]["num_generated"] == 0
    if t == 1:
        assert not any(k.startswith("beat_align") for k in out), out
        assert suite.last_card["beat_align"]["scored_clips"] == 0
    long = GestureSuite(encoder=str(one_step_encoder))
    pred = torch.rand(n, WINDOW, NUM_KEYPOINTS, 3, generator=g) * 2 - 1
    long.update(pred, pred + 0.01, audio=audio[:, :WINDOW * 640])
    assert fgd_names <= set(long.compute())


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
