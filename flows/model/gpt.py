"""The reference model: a tiny byte-level decoder-only transformer and its tokenizer.

Self-contained on purpose (torch only): :mod:`.pyfunc` pickles this module by value into the
MLflow model, so a client that loads ``models:/tiny-gpt@champion`` needs torch,
not this package.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

EOT = 0
"""End-of-text byte: separates corpus documents; generating it ends a completion."""


@dataclass(frozen=True, slots=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256): token counts are byte counts."""

    vocab_size: int = 256
    eot: int = EOT

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")

    def stream_decoder(self) -> codecs.IncrementalDecoder:
        """A decoder for one token at a time: yields "" until a multi-byte character completes."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace")

    def to_json(self) -> str:
        return json.dumps({"type": "byte", "encoding": "utf-8", **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> ByteTokenizer:
        data = json.loads(text)
        return cls(vocab_size=int(data["vocab_size"]), eot=int(data["eot"]))


@dataclass(frozen=True, slots=True)
class GPTConfig:
    """Shape of the network."""

    vocab_size: int = 256
    context: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        return cls(**json.loads(text))


class _Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Decoder-only transformer with learned positions and tied input/output embeddings."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits for every position of ``idx`` (batch, time)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def mean_loss(model: TinyGPT, tokens: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token loss over non-overlapping context windows of ``tokens``."""
    ctx = model.cfg.context
    n = (len(tokens) - 1) // ctx
    if n == 0:
        raise ValueError(f"need more than {ctx} tokens to compute a loss, got {len(tokens)}")
    device = next(model.parameters()).device
    x = tokens[: n * ctx].view(n, ctx)
    y = tokens[1 : n * ctx + 1].view(n, ctx)
    total = 0.0
    was_training = model.training
    model.eval()
    for i in range(0, n, batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        total += model.loss(xb, yb).item() * len(xb)
    model.train(was_training)
    return total / n


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def generate(
    model: TinyGPT,
    prompt: list[int],
    max_tokens: int,
    temperature: float = 0.8,
    generator: torch.Generator | None = None,
    stop: int | None = EOT,
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new tokens, one at a time; stop after yielding ``stop``.

    No KV cache: each step re-reads the last ``context`` tokens, which at context 64 costs
    less than the cache bookkeeping. ``temperature`` 0 is greedy decoding.
    """
    model.eval()
    device = next(model.parameters()).device
    window = list(prompt[-model.cfg.context :]) or [EOT]
    for _ in range(max_tokens):
        idx = torch.tensor([window[-model.cfg.context :]], dtype=torch.long, device=device)
        logits = model(idx)[0, -1]
        if temperature <= 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=generator))
        yield token
        if token == stop:
            return
        window.append(token)
