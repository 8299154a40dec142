"""Stage-1 loss: position + velocity + acceleration on x̂0, plus the motion-specific facial loss Lf.

The original: ``L = |x̂0-x0|² + |Δx̂0-Δx0|² + |Δ²x̂0-Δ²x0|² + 3·(same three on the face keypoints)``.
Differences from the original, on purpose:

* coordinate terms are means over *visible* keypoints only (``vis`` from the DataModule: detector score and
  dropped legs), so missing detections do not teach the model to predict garbage;
* the score channel has its own term (``score``, over all keypoints) instead of being mixed into the
  coordinates (our normaliser keeps scores in [0, 1], the original normalised them like pixels);
* with ``anchor_cond`` the conditioning frame is prepended before differencing, so the first frame's velocity
  relative to the previous window is supervised too (smooth joins when sampling chained windows);
* optional hand and lip terms (the original has a TODO for them), weight 0 by default.

``reduction="all"`` is the official loss instead: every term a plain mean over all elements (x, y and score
channels alike, every keypoint, no visibility mask, no anchor frame); the face terms are then the means over the
flat dims 72:276 and the separate ``score`` term is reported with weight 0 (scores are inside every term).

Every term is returned (also when its weight is 0) so runs with ``loss=smga_no_face`` still log the face error.
"""

from __future__ import annotations

import torch
from torch import nn

from mmgt.pose.layout import GROUPS, NUM_KEYPOINTS

REGION_TERMS = ("face", "hands", "lips")


def _per_keypoint(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed squared error and entry count per keypoint, (K,) each, over entries where ``mask`` (..., K)."""
    m = mask.to(pred.dtype)
    err = ((pred - target).pow(2).sum(-1) * m).flatten(0, -2).sum(0)
    return err, m.flatten(0, -2).sum(0) * pred.shape[-1]


class SMGALoss(nn.Module):
    """Weighted sum of position/velocity/acceleration terms, globally and per region (face = Lf)."""

    def __init__(self, pos: float = 1.0, vel: float = 1.0, acc: float = 1.0, face: float = 3.0,
                 hands: float = 0.0, lips: float = 0.0, score: float = 1.0, anchor_cond: bool = True,
                 reduction: str = "visible") -> None:
        super().__init__()
        if reduction not in ("visible", "all"):
            raise ValueError(f"loss.reduction must be 'visible' or 'all', got {reduction!r}")
        self.reduction = reduction
        self.weights = {"pos": float(pos), "vel": float(vel), "acc": float(acc)}
        self.region_weights = {"face": float(face), "hands": float(hands), "lips": float(lips)}
        self.score_weight, self.anchor_cond = float(score), bool(anchor_cond)
        sel = torch.zeros(NUM_KEYPOINTS, 1 + len(REGION_TERMS))  # column 0: all keypoints, then one per region
        sel[:, 0] = 1.0
        for i, name in enumerate(REGION_TERMS):
            sel[list(GROUPS[name]), i + 1] = 1.0
        self.register_buffer("selector", sel, persistent=False)

    def term_weights(self) -> dict[str, float]:
        """Weight of every named term (``face_vel`` = face weight × velocity weight, ...)."""
        out = dict(self.weights)
        for region, w in self.region_weights.items():
            out.update({f"{region}_{k}": w * v for k, v in self.weights.items()})
        out["score"] = self.score_weight if self.reduction == "visible" else 0.0
        return out

    @staticmethod
    def _diffs(x: torch.Tensor, m: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(x, m), (Δx, m∧m'), (Δ²x, ...)] along time (dim 1)."""
        v, mv = x[:, 1:] - x[:, :-1], m[:, 1:] & m[:, :-1]
        a, ma = v[:, 1:] - v[:, :-1], mv[:, 1:] & mv[:, :-1]
        return [(x, m), (v, mv), (a, ma)]

    def forward(self, pred: torch.Tensor, target: torch.Tensor, vis: torch.Tensor,
                cond_pose: torch.Tensor | None = None, cond_vis: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``pred``/``target`` (B, N, K, C), ``vis`` (B, N, K) bool -> dict of terms and ``loss`` (weighted sum)."""
        vis = vis.to(torch.bool)
        p, g = pred[..., :2], target[..., :2]
        if self.reduction == "all":  # the official: all channels, all entries, no anchor
            p, g, vis = pred, target, torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
        pos_mask = vis
        if self.anchor_cond and cond_pose is not None and self.reduction == "visible":
            cv = vis[:, 0] if cond_vis is None else cond_vis.to(torch.bool)
            c = cond_pose[:, None, :, :2].to(p.dtype)
            p, g, vis = torch.cat([c, p], 1), torch.cat([c, g], 1), torch.cat([cv[:, None], vis], 1)
        dp, dg = self._diffs(p, vis), self._diffs(g, vis)
        dp[0] = (pred[..., :p.shape[-1]], pos_mask)  # the anchor frame is not a prediction: real frames only
        dg[0] = (target[..., :p.shape[-1]], pos_mask)
        terms: dict[str, torch.Tensor] = {}
        for name, (xp, m), (xg, _) in zip(("pos", "vel", "acc"), dp, dg):
            err, count = _per_keypoint(xp, xg, m)
            sel = self.selector.to(err.dtype)
            per_region = (err @ sel) / (count @ sel).clamp(min=1)  # masked means: all, then REGION_TERMS
            terms[name] = per_region[0]
            for i, region in enumerate(REGION_TERMS):
                terms[f"{region}_{name}"] = per_region[i + 1]
        terms["score"] = (pred[..., 2] - target[..., 2]).pow(2).mean()
        weights = self.term_weights()
        terms["loss"] = sum(weights[k] * terms[k] for k in weights)
        return terms
