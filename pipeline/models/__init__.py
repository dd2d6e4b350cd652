"""Scene models behind the indoor vote and the photo embeddings.

``vote`` is pure numpy (the filters and tests use it without torch); ``scene`` holds the torch
side (backbone loading, preprocessing, batched inference) and is imported only by the code that
runs a model, so ``crossview filter`` and the other stages never pay for importing torch.
"""

from __future__ import annotations

from pipeline.errors import ModelError

__all__ = ["ModelError"]
