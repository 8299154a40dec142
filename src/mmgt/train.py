"""``python -m mmgt.train [overrides]``: train SMGA (stage 1) or the video model (stage 2)."""

from __future__ import annotations

from omegaconf import DictConfig

from mmgt.utils.cli import app


@app("train", lightning_logs=True)
def main(cfg: DictConfig) -> float | None:
    from mmgt.runner import train

    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


if __name__ == "__main__":
    main()
