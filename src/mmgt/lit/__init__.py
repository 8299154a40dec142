"""LightningModules: training logic for the two stages (architecture lives in ``mmgt.models``)."""
