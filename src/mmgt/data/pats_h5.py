"""Old import path of :mod:`mmgt.data.pats.h5` (PATS' processed h5 features), kept for existing code."""

from mmgt.data.pats.h5 import (
    CACHE_SIGNATURE,
    LOG_MEL_KEY,
    LOG_MEL_RATE,
    N_JOINTS,
    PATS_FPS,
    PATS_TO_134,
    frame_features,
    import_pats_h5,
    pats_pose_to_134,
    read_pats_h5,
    resample_pose,
)

__all__ = ["CACHE_SIGNATURE", "LOG_MEL_KEY", "LOG_MEL_RATE", "N_JOINTS", "PATS_FPS", "PATS_TO_134", "frame_features",
           "import_pats_h5", "pats_pose_to_134", "read_pats_h5", "resample_pose"]
