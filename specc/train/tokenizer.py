"""Tokenizers of `train.data.tokenizer`: `bytes`, `char`, `bpe: {vocab_size: N}` or a `tokenizer.json`.

- bytes: UTF-8 bytes, vocabulary 256; any text round-trips.
- char: the training split's characters, sorted (nanoGPT's shakespeare_char), plus one last id for a
  character the training split lacks (decoded as U+FFFD), so the vocabulary is the training split's alone.
- bpe: byte-level BPE trained on the training split only with Hugging Face `tokenizers` (GPT-2's
  scheme: any text round-trips); a path: a `tokenizer.json` as a Hugging Face model folder carries it.

A tokenizer is stored as `{"kind": ..., "data": <text>}` (strings only: checkpoints load with
weights_only=True) in the checkpoints and as `tokenizer.json` in the run folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from specc.lang.errors import Location, Problem, SpecError

UNKNOWN_CHARACTER = "\ufffd"
# A tokenizer.json from a stranger is parsed by the Rust library; its size is bounded first.
MAX_TOKENIZER_FILE_BYTES = 64 * 2**20


class Tokenizer:
    """Text <-> token ids; `state()` is what checkpoints and the run folder keep."""

    kind = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """The token ids of `text` (int64)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; ids that are no whole character decode as U+FFFD."""
        raise NotImplementedError

    def data(self) -> str:
        raise NotImplementedError

    def state(self) -> dict[str, str]:
        """`{"kind", "data"}`: strings only."""
        return {"kind": self.kind, "data": self.data()}

    def describe(self) -> str:
        """One phrase for messages: `char (104 symbols)`."""
        return f"{self.kind} ({self.vocab_size} symbols)"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255."""

    kind = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def data(self) -> str:
        return ""


class CharTokenizer(Tokenizer):
    """One id per character of the training split (sorted), plus an id for unseen characters."""

    kind = "char"

    def __init__(self, characters: str):
        self.characters = "".join(sorted(set(characters)))
        self.index = {character: i for i, character in enumerate(self.characters)}
        self.unknown = len(self.characters)
        # a lookup table over code points for fast encoding (characters beyond it go through the dict)
        self.table = np.full(max((ord(c) for c in self.characters), default=0) + 1, self.unknown, dtype=np.int64)
        for character, i in self.index.items():
            self.table[ord(character)] = i

    @property
    def vocab_size(self) -> int:
        return len(self.characters) + 1

    def encode(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        inside = points < len(self.table)
        return np.where(inside, self.table[np.where(inside, points, 0)], self.unknown)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.characters[i] if 0 <= i < self.unknown else UNKNOWN_CHARACTER for i in map(int, ids))

    def data(self) -> str:
        return self.characters


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer`: trained byte-level BPE, or a tokenizer.json."""

    def __init__(self, tokenizer: Any, kind: str):
        self.tokenizer, self.kind = tokenizer, kind

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Several texts at once (the library encodes them in parallel)."""
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(item.ids, dtype=np.int64) for item in encoded]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def data(self) -> str:
        return self.tokenizer.to_str()


def _library(where: Location | None = None) -> Any:
    """Hugging Face `tokenizers` (the `data` extra), or a located error saying how to install it."""
    try:
        import tokenizers as library
    except ImportError:
        _fail("BPE and tokenizer.json tokenizers need Hugging Face's tokenizers: pip install tokenizers "
              "(or specc[data])", where)
    return library


def train_bpe(chunks: Iterable[str], vocab_size: int, min_frequency: int = 2,
              where: Location | None = None) -> HuggingFaceTokenizer:
    """Byte-level BPE (GPT-2's scheme) learned from `chunks`, the training split's text."""
    library = _library(where)
    Rust, decoders, models = library.Tokenizer, library.decoders, library.models
    pre_tokenizers, trainers = library.pre_tokenizers, library.trainers

    tokenizer = Rust(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(chunks, trainer)
    return HuggingFaceTokenizer(tokenizer, "bpe")


def read_tokenizer_file(path: Path, where: Location | None) -> HuggingFaceTokenizer:
    """A `tokenizer.json` (Hugging Face's format), size-bounded; a bad file is a located error."""
    Rust = _library(where).Tokenizer

    size = path.stat().st_size
    if size > MAX_TOKENIZER_FILE_BYTES:
        _fail(f"{path}: {size:,} bytes; a tokenizer.json is at most {MAX_TOKENIZER_FILE_BYTES:,}", where)
    try:
        tokenizer = Rust.from_str(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, Exception) as error:  # the library raises plain Exception on bad JSON
        _fail(f"{path}: not a Hugging Face tokenizer.json ({str(error).splitlines()[0][:200]})", where)
    return HuggingFaceTokenizer(tokenizer, "file")


def from_state(state: dict[str, Any], where: Location | None = None) -> Tokenizer:
    """The tokenizer a checkpoint (or cache) stored with `Tokenizer.state()`."""
    kind, data = state.get("kind"), state.get("data", "")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(data)
    if kind in ("bpe", "file"):
        Rust = _library(where).Tokenizer
        try:
            return HuggingFaceTokenizer(Rust.from_str(data), kind)
        except Exception as error:  # the library raises plain Exception on bad JSON
            _fail(f"the stored {kind} tokenizer cannot be read ({str(error)[:200]})", where)
    _fail(f"unknown stored tokenizer kind {kind!r}", where)


def describe_config(config: Any) -> str:
    """`train.data.tokenizer` as one phrase: `bytes`, `char`, `bpe (vocab_size 4096)`, a path."""
    if isinstance(config, str):
        return config
    return f"bpe (vocab_size {config.bpe.vocab_size})"


def file_text(tokenizer: Tokenizer) -> str:
    """What the run folder's `tokenizer.json` holds: Hugging Face's JSON for bpe and files, a small
    specc JSON (`{"specc_tokenizer": "char", "characters": ...}`) for bytes and char."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        return tokenizer.data()
    return json.dumps({"specc_tokenizer": tokenizer.kind, "characters": tokenizer.data()}, ensure_ascii=False)


def _fail(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
