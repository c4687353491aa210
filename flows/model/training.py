"""Train the reference model on the corpus shipped with the package.

Plain functions and dataclasses: no Prefect, MLflow or telemetry here. The flows turn the
:class:`TrainResult` figures into metrics.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt_observatory.flows.model.gpt import EOT, ByteTokenizer, GPTConfig, TinyGPT, mean_loss

DOCUMENT_SEPARATOR = "\f\n"
"""A form feed on its own line separates documents in a corpus file."""


@dataclass(frozen=True, slots=True)
class TrainParams:
    """Everything that decides the trained weights (with the data and the code)."""

    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 6e-3
    seed: int = 1234
    context: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    heldout_fraction: float = 0.1

    def config(self) -> GPTConfig:
        return GPTConfig(context=self.context, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model)

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Corpus:
    """Training text as one token stream, split into train and held-out parts."""

    train: torch.Tensor
    heldout: torch.Tensor
    data_hash: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A trained model on the CPU and the figures of its training."""

    model: TinyGPT
    params: TrainParams
    data_hash: str
    train_loss: float
    heldout_loss: float
    tokens_seen: int
    duration_s: float
    device: str


def data_file(name: str) -> Path:
    """A file shipped in the model's ``data/`` folder (package data)."""
    return Path(str(resources.files("gpt_observatory.flows.model") / "data" / name))


def default_corpus_path() -> Path:
    return data_file("corpus.txt")


def data_hash(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def load_corpus(path: Path | None = None, heldout_fraction: float = 0.1) -> Corpus:
    """Read a corpus file; documents end with :data:`~gpt_observatory.flows.model.gpt.EOT`; the tail is held out."""
    raw = (path or default_corpus_path()).read_bytes()
    tokenizer = ByteTokenizer()
    stream: list[int] = []
    for doc in raw.decode("utf-8").split(DOCUMENT_SEPARATOR):
        if doc.strip():
            stream += [*tokenizer.encode(doc.strip() + "\n"), EOT]
    cut = int(len(stream) * (1.0 - heldout_fraction))
    tokens = torch.tensor(stream, dtype=torch.long)
    return Corpus(train=tokens[:cut], heldout=tokens[cut:], data_hash=data_hash(raw), size_bytes=len(raw))


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op CPU threads (0: leave torch's choice), restoring the old count.

    A model this small gains nothing from intra-op parallelism, and on a busy machine the
    spinning worker threads cost several times the work itself (measured: evaluation 0.8 s
    with one thread, 9-46 s with two on this 2-core box under load).
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    params: TrainParams, corpus: Corpus | None = None, device: str | None = None, progress: bool = True
) -> TrainResult:
    """Train from scratch; the same params, data and device give the same weights."""
    corpus = corpus or load_corpus(heldout_fraction=params.heldout_fraction)
    device = device or pick_device()
    cfg = params.config()
    if len(corpus.train) <= cfg.context + 1:
        raise ValueError(f"corpus too small: {len(corpus.train)} training tokens for context {cfg.context}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = TinyGPT(cfg)
    model.to(device).train()
    gen = torch.Generator().manual_seed(params.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.learning_rate, total_steps=params.steps, pct_start=0.1
    )
    offsets = torch.arange(cfg.context + 1)
    smoothed = float("nan")
    started = time.perf_counter()
    bar = tqdm(range(params.steps), desc="train tiny-gpt", unit="step", disable=not progress, leave=False)
    for step in bar:
        starts = torch.randint(0, len(corpus.train) - cfg.context - 1, (params.batch_size,), generator=gen)
        window = corpus.train[starts[:, None] + offsets].to(device)
        loss = model.loss(window[:, :-1], window[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = loss.item()
        smoothed = value if step == 0 else 0.9 * smoothed + 0.1 * value
        if step % 20 == 0:
            bar.set_postfix(loss=f"{smoothed:.3f}")
    duration = time.perf_counter() - started
    heldout = mean_loss(model, corpus.heldout)
    return TrainResult(
        model=model.cpu().eval(),
        params=params,
        data_hash=corpus.data_hash,
        train_loss=smoothed,
        heldout_loss=heldout,
        tokens_seen=params.steps * params.batch_size * cfg.context,
        duration_s=duration,
        device=device,
    )
