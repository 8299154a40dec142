"""Training losses (plain ``nn.Module``s configured by the ``loss`` config group)."""
