"""Generation: still image + speech -> talking, gesturing video.

- :mod:`~mmgt.generation.inputs` — reading and checking the image, speech, initial pose and corpus clips;
- :mod:`~mmgt.generation.options` — typed sampling options per stage (:class:`PoseSampling`, :class:`VideoSampling`);
- :mod:`~mmgt.generation.pipeline` — :class:`GesturePipeline` over the two stages' networks, scheduler and processors;
- :mod:`~mmgt.generation.outputs` — where the files go, written all together or not at all;
- :mod:`~mmgt.generation.task` — the ``python -m mmgt.generate`` task (config -> calls, split mode, reports).
"""

from mmgt.errors import GenerationError
from mmgt.generation.options import PoseSampling, Sampling, VideoSampling
from mmgt.generation.outputs import GenerationResult
from mmgt.generation.pipeline import GestureOutput, GesturePipeline, load_stage

__all__ = ["GenerationError", "GenerationResult", "GestureOutput", "GesturePipeline", "PoseSampling", "Sampling",
           "VideoSampling", "load_stage"]
