"""Lightning callbacks and logging helpers (TensorBoard media)."""
