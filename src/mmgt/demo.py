"""``python -m mmgt.demo``: a browser app over the generation pipeline (Gradio, the ``demo`` extra).

The networks load once (:meth:`~mmgt.generation.pipeline.GesturePipeline.from_checkpoints`, as ``generate`` loads
them); each press of Generate is one ``generate`` job: the page's values become a ``conf/generate.yaml``-shaped
config that :func:`mmgt.generation.task.plan` checks and turns into sampling options (so the page accepts and
refuses exactly what the command line does), then :meth:`GesturePipeline.generate` writes the video into the run
folder. A bad input is a :class:`gradio.Error` on the page carrying the
:class:`~mmgt.errors.GenerationError` message of :mod:`mmgt.generation.inputs`, before any network runs.

The page: image + speech upload (or microphone), a keypoints ``.npy`` (optional when the configured estimator can
run: by default DWPose when its files are at the configured paths, as for ``generate``),
a pose preview (the initial pose drawn on the image, the part outside the model's centre crop dimmed), both stages'
DDIM steps and guidance, one slider per MM-HAA branch, a seed, and the video (plus, on request, the
pose | masks | result panel). Gradio is imported only when the app starts, so ``--help`` and the library do not
need it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mmgt.utils.cli import app

if TYPE_CHECKING:
    import gradio as gr

    from mmgt.generation.pipeline import GesturePipeline

log = logging.getLogger(__name__)


def no_pose_message(estimator: Any) -> str:
    """The page's "no initial pose" error: upload keypoints, or put the DWPose files where the config points (then
    the pose is estimated from the image, as ``generate`` does)."""
    from mmgt.generation.inputs import NO_POSE
    from mmgt.pose.estimators import DWPOSE_FILES, dwpose_download_hint, missing_dwpose_files

    cfg = dict(estimator) if isinstance(estimator, Mapping) else {}
    missing = missing_dwpose_files(cfg) if cfg else dict.fromkeys(DWPOSE_FILES)
    return (f"{NO_POSE}: upload the image's keypoints (.npy, pixel x, y, score: (134, 3) or COCO-WholeBody (133, 3); "
            "`python -m mmgt.prepare task=keypoints image=<photo>` writes one), or let the demo estimate the pose "
            f"with DWPose: {dwpose_download_hint(missing)} and restart it")


@dataclass(frozen=True)
class Controls:
    """The starting values and ranges of the page's sampling controls: the config's values where it states them,
    else the checkpoints' recorded settings (what ``generate`` would use)."""

    pose_steps: int
    pose_guidance: float
    video_steps: int
    video_guidance: float
    branch_names: tuple[str, ...] = ()
    branch_weights: tuple[float, ...] = ()
    seed: int = 0

    @classmethod
    def for_pipeline(cls, pipe: GesturePipeline, cfg: Mapping[str, Any]) -> Controls:
        from mmgt.generation.options import Sampling

        s = Sampling.from_config(cfg)
        pose, video = s.pose.over(pipe.pose_sampling), s.video.over(pipe.video_sampling)
        n = int(pipe.video_net.n_branches) if pipe.video_features is not None else 0
        names = tuple(pipe.conditions_processor.mask_builder.branch_names)
        names = names if len(names) == n else tuple(f"branch {i}" for i in range(n))
        weights = video.branch_weights
        if weights is None:  # the weights the network trained with (None there too: all ones)
            weights = getattr(pipe.video_net.audio_modules, "branch_weights", None) or [1.0] * n
        return cls(int(pose.steps), float(pose.guidance), int(video.steps), float(video.guidance), names,
                   tuple(float(w) for w in weights)[:n], int(cfg.get("seed") or 0))


def pose_preview(image: np.ndarray, pose: np.ndarray, frame_size: tuple[int, int],
                 min_side: int = 256) -> tuple[np.ndarray, str]:
    """The source image with its initial pose drawn over it (as ``prepare task=keypoints`` draws it) and the part the
    model's centre crop drops dimmed, plus one line saying what the model will see: the pose is what stage 1 starts
    from, so a wrong one (a shifted or normalised file, another person) shows here before a video is made. Images
    smaller than ``min_side`` are enlarged by a whole factor (pixels repeated) so the drawing stays legible."""
    from mmgt.data.photo_pose import draw_overlay
    from mmgt.pose.conditioning import CropResize
    from mmgt.pose.layout import VISIBILITY_THRESHOLD

    h0, w0 = image.shape[:2]
    up = max(1, -(-min_side // max(h0, w0)))  # small images are shown enlarged, the pose drawn at that size
    big = np.array(pose, np.float32, copy=True)
    big[:, :2] = (big[:, :2] + 0.5) * up - 0.5  # pixel centres stay on the same spot of the picture
    out = draw_overlay(image.repeat(up, 0).repeat(up, 1), big).astype(np.float32)
    tf = CropResize.centre((h0, w0), frame_size)
    inside = np.zeros((h0, w0), bool)
    inside[tf.y0:tf.y0 + tf.height, tf.x0:tf.x0 + tf.width] = True
    out[~inside.repeat(up, 0).repeat(up, 1)] *= 0.35
    visible = int((np.isfinite(pose[:, :2]).all(-1) & (pose[:, 2] >= VISIBILITY_THRESHOLD)).sum())
    h, w = frame_size
    crop = "the whole image" if (tf.width, tf.height) == (w0, h0) else \
        f"a centre crop {tf.width}x{tf.height} at x={tf.x0}, y={tf.y0} (dimmed: dropped)"
    note = (f"{visible} visible keypoints; the model sees {crop}, resized from {w0}x{h0} to its {w}x{h} frame"
            + (f" (upscaled x{w / tf.width:.1f})" if w > tf.width else ""))
    return out.clip(0, 255).astype(np.uint8), note


@dataclass
class Demo:
    """The page's two actions over one loaded pipeline: preview the initial pose, generate a video."""

    pipe: GesturePipeline
    cfg: dict[str, Any]  # the resolved demo config (conf/demo.yaml): the generate keys the page does not set
    out_dir: Path
    controls: Controls = field(init=False)
    _count: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.controls = Controls.for_pipeline(self.pipe, self.cfg)

    @property
    def can_estimate(self) -> bool:
        """Whether a pose estimator runs when no keypoints are uploaded (``name: auto``: the DWPose files exist)."""
        from mmgt.generation.inputs import resolve_estimator

        return resolve_estimator(self.cfg.get("estimator")) is not None

    # ------------------------------------------------------------------------------------------ the config
    def job_config(self, image: str | None, audio: str | None, keypoints: str | None, *, pose_steps: float,
                   pose_guidance: float, video_steps: float, video_guidance: float,
                   branch_weights: Sequence[float] = (), seed: float = 0, panel: bool = False,
                   out: str | Path | None = None) -> dict[str, Any]:
        """The ``generate`` config of one press of Generate (the page's values over the demo config)."""
        c = self.cfg
        smga = {**dict(c.get("smga") or {}), "steps": int(pose_steps), "guidance": float(pose_guidance)}
        video = {**dict(c.get("video") or {}), "steps": int(video_steps), "guidance": float(video_guidance)}
        if branch_weights:
            video["branch_weights"] = [float(w) for w in branch_weights]
        return {"image": image, "audio": audio, "keypoints": keypoints or None,
                "estimator": None if keypoints else c.get("estimator"), "out": str(out) if out else None,
                "smga": smga, "video": video, "seed": int(seed or 0), "min_peak": c.get("min_peak", 1e-4),
                "side_by_side": bool(panel), "pose_video": False, "save_keypoints": False, "progress": True,
                "output_dir": str(self.out_dir)}

    def _check_uploads(self, image: str | None, audio: str | None, keypoints: str | None) -> None:
        from mmgt.errors import GenerationError

        if not image:
            raise GenerationError("upload a still image of the speaker (png, jpg, webp, ... or a video: its first "
                                  "frame)")
        if not audio:
            raise GenerationError("upload (or record) the speech to animate the image with (wav, flac, mp3, m4a, ...)")
        if not keypoints and not self.can_estimate:
            raise GenerationError(no_pose_message(self.cfg.get("estimator")))

    # ------------------------------------------------------------------------------------------ the actions
    def preview(self, image: str | None, keypoints: str | None) -> tuple[np.ndarray | None, str]:
        """The pose preview for the uploaded image and keypoints (or the estimator); nothing until an image is
        there, the plain image and a hint while no pose is available."""
        import mmgt.generation.inputs as io
        from mmgt.errors import GenerationError

        if not image:
            return None, "Upload an image to see its initial pose."
        try:
            src = io.read_image(image)
            if not keypoints and not self.can_estimate:
                return src, no_pose_message(self.cfg.get("estimator"))
            pose = io.initial_pose(src, keypoints or None, None if keypoints else self.cfg.get("estimator"),
                                   Path(image).name)
        except GenerationError as err:
            raise _ui_error(err) from None
        return pose_preview(src, pose, self.pipe.frame_size)

    def generate(self, image: str | None, audio: str | None, keypoints: str | None, pose_steps: float,
                 pose_guidance: float, video_steps: float, video_guidance: float, seed: float, panel: bool,
                 *branch_weights: float) -> tuple[str, str | None, str]:
        """One video: the page's inputs checked by ``generate``'s own checks (:func:`mmgt.generation.task.plan`,
        before any network runs), generated by the loaded pipeline; returns the video, the panel (or None) and a
        one-line report."""
        from mmgt.errors import GenerationError
        from mmgt.generation.task import append_report, plan

        try:
            self._check_uploads(image, audio, keypoints)
            with self._lock:
                self._count += 1
                n = self._count
            seconds = self.cfg.get("max_seconds")
            c = self.job_config(image, audio, keypoints, pose_steps=pose_steps, pose_guidance=pose_guidance,
                                video_steps=video_steps, video_guidance=video_guidance,
                                branch_weights=branch_weights, seed=seed, panel=panel,
                                out=self.out_dir / f"{n:03d}_{Path(str(audio)).stem}.mp4")
            p = plan(c)
            if seconds and p.audio is not None and len(p.audio) > float(seconds) * 16000:
                raise GenerationError(f"{Path(str(audio)).name}: {len(p.audio) / 16000:.1f} s of speech; this page "
                                      f"generates at most {float(seconds):g} s (max_seconds)")
            job = p.jobs[0]
            t = time.perf_counter()
            res = self.pipe.generate(p.image, p.audio, job.out, sampling=p.sampling, **p.options,
                                     side_by_side=bool(panel), pose_video=False)
            append_report(p.out_dir / "generation.json", res)
        except GenerationError as err:
            raise _ui_error(err) from None
        except OSError as err:  # disk full, permission denied: no partial file is left (atomic writes)
            raise _ui_error(f"cannot write {err.filename or 'the output'}: {err.strerror or err}") from None
        took = time.perf_counter() - t
        report = (f"{res.video.name}: {res.n_frames} frames ({res.audio_seconds:.2f} s of audio) in {took:.1f} s "
                  f"({res.frames_per_second:.1f} frames/s); written to {res.video}")
        return str(res.video), str(res.side_by_side) if res.side_by_side else None, report

    # ------------------------------------------------------------------------------------------ the page
    def blocks(self) -> gr.Blocks:
        """The Gradio page (components have ``elem_id``s: ``image``, ``audio``, ``keypoints``, ``preview``,
        ``generate``, ``video``, ... so tests and users' scripts can find them)."""
        import gradio as gr

        k = self.controls
        h, w = self.pipe.frame_size
        with gr.Blocks(title="mmgt demo", analytics_enabled=False) as page:
            gr.Markdown(f"## mmgt: still image + speech → gesture video\nTwo stages: SMGA turns the speech into a "
                        f"pose sequence starting from the image's pose, the video diffusion model (MM-HAA audio "
                        f"attention) renders it at {w}x{h}. Networks: `{self.cfg['smga']['ckpt']}`, "
                        f"`{self.cfg['video']['ckpt']}`.")
            with gr.Row(equal_height=False):
                with gr.Column():
                    image = gr.Image(label="Still image", type="filepath", sources=["upload"], height=260,
                                     elem_id="image")
                    audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"],
                                     elem_id="audio")
                    kp_label = ("optional: else DWPose estimates it" if self.can_estimate else
                                "required: no pose estimator (see conf/demo.yaml: estimator)")
                    keypoints = gr.File(label=f"Keypoints of the image (.npy; {kp_label})",
                                        file_types=[".npy"], type="filepath", height=90, elem_id="keypoints")
                with gr.Column():
                    preview = gr.Image(label="Initial pose (what stage 1 starts from)", type="numpy",
                                       interactive=False, height=260, elem_id="preview")
                    note = gr.Markdown("Upload an image to see its initial pose.", elem_id="pose-note")
                with gr.Column():
                    video = gr.Video(label="Generated video", interactive=False, height=260, elem_id="video")
                    status = gr.Markdown("", elem_id="status")
                    panel_video = gr.Video(label="pose | masks | result", interactive=False, height=160,
                                           visible=False, elem_id="panel-video")
            with gr.Row():
                pose_steps = gr.Slider(1, 100, value=k.pose_steps, step=1, label="Stage 1 (poses): DDIM steps",
                                       elem_id="pose-steps")
                pose_guidance = gr.Slider(0.0, 10.0, value=k.pose_guidance, step=0.1,
                                          label="Stage 1: audio guidance (CFG)", elem_id="pose-guidance")
                video_steps = gr.Slider(1, 100, value=k.video_steps, step=1, label="Stage 2 (video): DDIM steps",
                                        elem_id="video-steps")
                video_guidance = gr.Slider(0.0, 10.0, value=k.video_guidance, step=0.1,
                                           label="Stage 2: guidance (CFG)", elem_id="video-guidance")
            weights = []
            with gr.Row():
                for name, value in zip(k.branch_names, k.branch_weights, strict=True):
                    weights.append(gr.Slider(0.0, 4.0, value=value, step=0.1, label=f"MM-HAA weight: {name}",
                                             elem_id=f"weight-{name}"))
                seed = gr.Number(value=k.seed, precision=0, label="Seed", min_width=80, elem_id="seed")
                with gr.Column(min_width=200):
                    panel = gr.Checkbox(value=False, label="Also make the pose | masks | result panel",
                                        elem_id="panel")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")

            for trigger in (image.change, keypoints.change):
                trigger(self.preview, [image, keypoints], [preview, note])

            def run(*values: Any, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008
                video_path, panel_path, report = self.generate(*values)
                return video_path, gr.update(value=panel_path, visible=panel_path is not None), report

            button.click(run, [image, audio, keypoints, pose_steps, pose_guidance, video_steps, video_guidance,
                               seed, panel, *weights], [video, panel_video, status], concurrency_limit=1)
        return page


def _ui_error(err: Exception | str) -> Exception:
    """A message for the page (a :class:`gradio.Error`: shown to the user until closed), one line in the console
    (not Gradio's traceback: a bad upload is not a bug)."""
    import gradio as gr

    log.warning("refused: %s", err)
    return gr.Error(str(err), duration=None, print_exception=False)


def build(cfg: Mapping[str, Any], out_dir: str | Path) -> Demo:
    """Load both checkpoints (as ``generate`` does) and prepare the page's actions; ``cfg``: the resolved demo
    config."""
    from mmgt.generation.pipeline import GesturePipeline
    from mmgt.generation.task import resolve_device
    from mmgt.utils.config import to_plain

    c = to_plain(cfg)
    s, v = c["smga"], c["video"]
    pipe = GesturePipeline.from_checkpoints(
        s["ckpt"], v["ckpt"], smga_net=s.get("net"), video_net=v.get("net"), stage1_features=s.get("features"),
        stage2_features=v.get("features"), device=resolve_device(c.get("device")), progress=bool(c.get("progress")))
    return Demo(pipe, c, Path(out_dir))


@app("demo")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page talks to nothing but its own server
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit('mmgt.demo needs Gradio: pip install -e ".[demo]"')
    import torch

    from mmgt.errors import GenerationError

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out_dir = Path(cfg.paths.output_dir)
    try:
        demo = build(OmegaConf.to_container(cfg, resolve=True), out_dir)
    except GenerationError as err:
        sys.exit(f"mmgt.demo: {err} (train both stages with `make quickstart`, or set smga.ckpt= and video.ckpt=)")
    print(f"mmgt.demo: open http://{cfg.host}:{cfg.port} (videos go to {out_dir})", flush=True)
    demo.blocks().queue().launch(server_name=str(cfg.host), server_port=int(cfg.port), share=False,
                                 ssr_mode=False, show_error=True, allowed_paths=[str(out_dir)],
                                 footer_links=["gradio"])


if __name__ == "__main__":
    main()
