"""Plain ``nn.Module`` networks (no Lightning, no Hydra): stage-1 SMGA and stage-2 video parts."""
