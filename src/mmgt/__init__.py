"""mmgt: co-speech gesture video generation (MMGT re-implementation) on Lightning + Hydra."""

__version__ = "0.1.0"
