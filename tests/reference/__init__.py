"""PyTorch reference models with NVIDIA DLE's state-dict layout, used by the parity tests (DLE is absent in CI)."""
