"""``python -m mmgt.prepare task=keypoints image=<photo | folder of images | video>``: DWPose on your own pictures.

For each input it writes, beside it (or in ``out``), ``<stem>_pose.npy``: pixel keypoints in mmgt's 134-point layout,
(134, 3) for an image and (T, 134, 3) for a video (frames without a person all zeros), the ``keypoints=`` of
``python -m mmgt.generate``; and ``<stem>_pose.png``: the pose drawn on the picture (a video's first frame with a
person), to check it before generating. Pictures are read as generate reads them (EXIF rotation applied), so the
keypoints are pixels of the same picture. Missing DWPose files are one line saying which release files to download,
from where, to which path; an unreadable picture or one with nobody in it is one line, and the others still run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.errors import GenerationError

PREFIX = "estimator"  # where conf/task/keypoints.yaml keeps the estimator block
SUFFIX = "_pose"  # me.jpg -> me_pose.npy + me_pose.png


def inputs_of(path: str | Path) -> list[Path]:
    """The pictures of ``image=``: that file (an image or a video), or the images and videos of that folder, sorted."""
    from mmgt.generation.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
                       and not f.stem.endswith(SUFFIX))  # not our own previews of an earlier run
        if not files:
            raise GenerationError(f"image={path}: no images or videos in that folder ({', '.join(IMAGE_SUFFIXES)}, "
                                  f"{', '.join(VIDEO_SUFFIXES)})")
        return files
    if not p.is_file():
        raise GenerationError(f"image={path}: no such file or folder (config key `image`)")
    return [p]


def draw_overlay(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """The pose (134, 3 pixel keypoints) drawn on ``image`` (H, W, 3) uint8 in the pose-guider style
    (:func:`mmgt.pose.render.render_pose`); pixels off the drawing keep the picture's."""
    from mmgt.pose.render import render_pose

    h, w = image.shape[:2]
    pose = render_pose(keypoints, h, w)
    out = np.array(image, np.uint8, copy=True)
    drawn = pose.any(-1)
    out[drawn] = pose[drawn]
    return out


def _read(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8: an image as one frame (as generate reads it), every frame of a video."""
    from mmgt.generation.inputs import VIDEO_SUFFIXES, read_image

    if path.suffix.lower() in VIDEO_SUFFIXES:
        from mmgt.data.video_io import read_video

        try:
            frames = read_video(path)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad input
            raise GenerationError(f"{path}: cannot read the video ({err})") from err
        if not len(frames):
            raise GenerationError(f"{path}: the video has no frames")
        return frames
    return read_image(path)[None]


def estimate_file(path: Path, estimator: Any, out_dir: Path | None = None,
                  threshold: float = 0.3) -> tuple[Path, Path, np.ndarray]:
    """Run ``estimator`` on one picture or video; write ``<stem>_pose.npy`` and ``<stem>_pose.png`` (in ``out_dir``,
    default beside ``path``). Returns both paths and the keypoints; nobody found is a :class:`GenerationError`."""
    from PIL import Image

    from mmgt.data.video_io import atomic_path
    from mmgt.generation.inputs import VIDEO_SUFFIXES

    frames = _read(path)
    kp = np.asarray(estimator(frames), np.float32)
    seen = (kp[..., 2] >= threshold).sum(-1)  # visible points per frame
    if not seen.any():
        raise GenerationError(f"{path}: no person found (no keypoint with score >= {threshold} in "
                              f"{'any frame' if len(frames) > 1 else 'the picture'})")
    first = int(np.argmax(seen > 0))
    folder = Path(out_dir).expanduser() if out_dir else path.parent
    npy, png = folder / f"{path.stem}{SUFFIX}.npy", folder / f"{path.stem}{SUFFIX}.png"
    preview = draw_overlay(frames[first], kp[first])
    kp = kp[0] if len(frames) == 1 and path.suffix.lower() not in VIDEO_SUFFIXES else kp  # a photo: (134, 3)
    with atomic_path(npy) as tmp:
        np.save(tmp, kp)
    with atomic_path(png) as tmp:
        Image.fromarray(preview).save(tmp, format="PNG")
    return npy, png, kp


def run(cfg: Mapping[str, Any], echo: Callable[[str], None] = print,
        error: Callable[[str], None] | None = None) -> int:
    """``task=keypoints``: the estimator built once (missing DWPose files: one line, exit 1), then every input;
    one line per written file; exit 1 if any input failed."""
    import sys

    from mmgt.pose.estimators import EstimatorError, build_estimator
    from mmgt.utils.config import to_plain

    def fail(msg: str) -> None:
        (error or (lambda m: print(m, file=sys.stderr, flush=True)))(f"ERROR {msg}")

    c = {k: to_plain(cfg.get(k)) for k in ("image", "out", "estimator")}  # not the rest: it may need Hydra's state
    if not c.get("image"):
        fail("task=keypoints needs image=<photo, folder of images or video>")
        return 1
    try:
        files = inputs_of(c["image"])
    except GenerationError as err:
        fail(str(err))
        return 1
    est_cfg = dict(c.get("estimator") or {})
    try:
        estimator = build_estimator(est_cfg, prefix=PREFIX)
    except (EstimatorError, ValueError, ImportError) as err:  # missing files, unknown name, no onnxruntime
        fail(str(err))
        return 1
    except Exception as err:  # noqa: BLE001 - e.g. onnxruntime refusing a corrupt or truncated .onnx file
        fail(f"cannot load the pose estimator ({est_cfg.get('det_model')}, {est_cfg.get('pose_model')}): {err}")
        return 1
    code = 0
    for path in files:
        try:
            npy, png, kp = estimate_file(path, estimator, c.get("out"))
        except (GenerationError, EstimatorError) as err:
            fail(str(err))
            code = 1
            continue
        visible = int((kp[..., 2] >= 0.3).sum(-1).max())
        what = f"{visible} of 134 points visible" if kp.ndim == 2 else \
            f"{len(kp)} frames, up to {visible} of 134 points visible"
        echo(f"{npy}: {tuple(kp.shape)} pixel keypoints of {path} ({what}); generate's keypoints={npy}")
        echo(f"{png}: the pose drawn on {path.name} (check it before generating)")
    return code


__all__ = ["draw_overlay", "estimate_file", "inputs_of", "run"]
