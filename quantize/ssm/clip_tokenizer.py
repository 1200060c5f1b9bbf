"""CLIP's BPE tokenizer, taken from an installed package (open_clip or OpenAI's `clip`); never downloaded.

The vocabulary ships inside those wheels; without one of them the CLIP text
tower cannot tokenise prompts, and this says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def load_clip_tokenizer(context_length: int = 77) -> Callable[[Sequence[str]], torch.Tensor]:
    try:
        import open_clip  # type: ignore[import-not-found]

        return lambda texts: open_clip.tokenize(list(texts), context_length=context_length)
    except ImportError:
        pass
    try:
        import clip  # type: ignore[import-not-found]

        return lambda texts: clip.tokenize(list(texts), context_length=context_length)
    except ImportError:
        pass
    raise ImportError("the CLIP text encoder needs CLIP's BPE tokenizer: install open_clip_torch (or OpenAI's "
                      "clip package), or use text_encoder='hashed' / 'minilm'")
