"""Text for language models: `text:<file|folder|glob>` or a parquet/arrow `text_column`, tokenised once
into a memory-mapped token file cached beside the run.

The text is read in blocks, never whole, so a corpus larger than RAM is tokenised in bounded memory:
pass 1 checks it is UTF-8, counts its characters and hashes it (the cache key, with the tokenizer
and the split fractions); on a cache miss, the tokenizer is built from the training split (the first
characters of the text) and pass 2 writes the tokens of train, val and test one after the other,
each split a contiguous range of the stream (nanoGPT's train.bin/val.bin, in one file).
"""
from __future__ import annotations

import glob
import itertools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from specc.lang.errors import Location, Problem, SpecError
from specc.lang.train_config import DataConfig
from specc.train.sources import resolve_path
from specc.train import tokenizer as tokenizers

CACHE_FORMAT = 1
BLOCK_BYTES = 1 << 20   # read size; also the size of the text handed to a tokenizer at once
SPLITS = ("train", "val", "test")
MAX_FILES = 100_000     # files of one folder or glob


@dataclass
class TokenCorpus:
    """The token file of a text source: the stream, where each split lies in it, and its tokenizer."""

    tokens: np.ndarray                     # memory-mapped uint16/uint32, the whole stream
    bounds: dict[str, tuple[int, int]]     # split -> [start, end) in the stream
    counts: dict[str, dict[str, int]]      # split -> {"tokens", "chars", "bytes"}, for bits per char/byte
    tokenizer: tokenizers.Tokenizer
    folder: Path                           # the cache entry


TextChunks = Callable[[], Iterator[str]]


def text_source(config: DataConfig, base_dir: Path, where: Location | None) -> tuple[TextChunks, str]:
    """A re-iterable reader of the source's text in blocks, and a label for messages.

    Raises:
        SpecError: DATA_ERROR for a missing file, a folder without .txt files, a bad table column.
    """
    if config.kind == "text":
        files = _text_files(config.location, base_dir, where)
        return (lambda: _read_files(files, where)), config.location
    path = resolve_path(config.location, base_dir, where)
    _table_column(path, config.kind, config.text_column, where)  # checks the column before any pass
    return (lambda: _read_table_text(path, config.kind, config.text_column, where)), config.location


def _text_files(location: str, base_dir: Path, where: Location | None) -> list[Path]:
    if any(character in location for character in "*?["):
        for root in (base_dir, Path.cwd()):
            matches = itertools.islice(glob.iglob(str(root / location), recursive=True), MAX_FILES * 2 + 1)
            found = sorted(Path(p) for p in matches if Path(p).is_file())
            if found:
                return _bounded(found, location, where)
        _fail(f"no file matches {location} (looked in {base_dir} and the current directory)", where)
    for candidate in (base_dir / location, Path(location)):
        if candidate.is_dir():
            files = sorted(path for path in candidate.glob("*.txt") if path.is_file())
            if not files:
                _fail(f"{candidate}: the folder has no .txt files", where)
            return _bounded(files, location, where)
    return [resolve_path(location, base_dir, where)]


def _bounded(files: list[Path], location: str, where: Location | None) -> list[Path]:
    if len(files) > MAX_FILES:   # a glob stops listing at twice the bound: a huge tree is not walked whole
        _fail(f"{location}: {len(files):,} files; a text source reads at most {MAX_FILES:,}", where)
    return files


def _read_files(files: list[Path], where: Location | None) -> Iterator[str]:
    for path in files:
        yield from _read_utf8(path, where)


def _read_utf8(path: Path, where: Location | None) -> Iterator[str]:
    """The file's text in blocks; bytes that are not UTF-8 stop with the file, line and offset."""
    pending, offset, lines = b"", 0, 1   # offset: file position of pending[0]
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK_BYTES)
            data = pending + block
            if offset == 0 and data.startswith(b"\xef\xbb\xbf"):
                data, offset = data[3:], 3   # a byte-order mark is no text
            try:
                text, pending = data.decode("utf-8"), b""
            except UnicodeDecodeError as error:
                truncated = error.reason == "unexpected end of data" and block
                if not truncated:
                    line = lines + data[:error.start].count(b"\n")
                    _fail(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                          f"{offset + error.start}); save the file as UTF-8", where)
                text, pending = data[:error.start].decode("utf-8"), data[error.start:]
            lines += text.count("\n")
            offset += len(data) - len(pending)
            if text:
                yield text
            if not block:
                return


def _table_column(path: Path, kind: str, column: str, where: Location | None) -> None:
    import pyarrow as pa

    schema = _open_batches(path, kind, where)[0]
    if column not in schema.names:
        _fail(f"{path}: no column named '{column}' (text_column); the columns are {', '.join(schema.names)}",
              where)
    kind_of = schema.field(column).type
    if not (pa.types.is_string(kind_of) or pa.types.is_large_string(kind_of)):
        _fail(f"{path}: column '{column}' has type {kind_of}; text_column must hold strings", where)


def _open_batches(path: Path, kind: str, where: Location | None):
    """(schema, iterator of record batches) of a parquet or arrow file, read batch by batch."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path, memory_map=True)
            return parquet.schema_arrow, parquet.iter_batches(batch_size=4096)
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            stream = pa.ipc.open_stream(source)
            return stream.schema, iter(stream)
    except (OSError, pa.ArrowException) as error:
        _fail(f"{path}: not a readable {kind} file ({error})", where)


def _read_table_text(path: Path, kind: str, column: str, where: Location | None) -> Iterator[str]:
    """The column's rows, each followed by a newline (Hugging Face text data sets: a row per document)."""
    _, batches = _open_batches(path, kind, where)
    for batch in batches:
        rows = [row for row in batch.column(batch.schema.get_field_index(column)).to_pylist() if row]
        if rows:
            yield "\n".join(rows) + "\n"


def _split_chunks(chunks: TextChunks, start: int, end: int) -> Iterator[str]:
    """The text between characters `start` and `end` of the stream, in blocks."""
    position = 0
    for chunk in chunks():
        low, high = max(start - position, 0), min(end - position, len(chunk))
        if low < high:
            yield chunk[low:high]
        position += len(chunk)
        if position >= end:
            return


def _lines(blocks: Iterator[str]) -> Iterator[str]:
    """Blocks cut after a newline where there is one, so a BPE word is never cut in two."""
    carried = ""
    for block in blocks:
        text = carried + block
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < 4 * BLOCK_BYTES:
            carried = text
            continue
        cut = cut or len(text)
        carried = text[cut:]
        yield text[:cut]
    if carried:
        yield carried


def load_corpus(config: DataConfig, *, base_dir: Path, cache_root: Path, where: Location | None,
                tokenizer_where: Location | None) -> TokenCorpus:
    """Tokenise the configured text once, or find its token file in the cache.

    Args:
        config: the `train.data` section (a text source, with `tokenizer`).
        base_dir: the spec's folder (paths are looked up there first).
        cache_root: where token files are kept (`<out>/.tokens`).
        where, tokenizer_where: the spec positions data and tokenizer errors point at.

    Raises:
        SpecError: DATA_ERROR for a missing file, non-UTF-8 bytes or an empty text.
    """
    chunks, label = text_source(config, base_dir, where)
    total, digest = 0, hashlib.sha256()
    for chunk in chunks():
        total += len(chunk)
        digest.update(chunk.encode("utf-8"))
    if total == 0:
        _fail(f"{label}: the text is empty", where)
    split = config.split
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, digest.hexdigest(), split.val, split.test,
                                     _tokenizer_key(config.tokenizer, base_dir, tokenizer_where)]).encode()).hexdigest()
    folder = cache_root / key[:32]
    if not (folder / "meta.json").is_file():
        _write_cache(folder, chunks, total, config, base_dir, tokenizer_where)
    return _open_cache(folder, tokenizer_where)


def _tokenizer_key(config: Any, base_dir: Path, where: Location | None) -> Any:
    if isinstance(config, str) and config not in ("bytes", "char"):
        path = resolve_path(config, base_dir, where)
        return [config, hashlib.sha256(path.read_bytes()[:tokenizers.MAX_TOKENIZER_FILE_BYTES + 1]).hexdigest()]
    return config if isinstance(config, str) else config.model_dump()


def char_boundaries(total: int, val: float, test: float) -> list[int]:
    """Character positions where train, val and test start and end: train first, test last."""
    train_end = int(total * (1 - val - test))
    val_end = int(total * (1 - test))
    return [0, train_end, val_end, total]


def build_tokenizer(config: Any, train_text: TextChunks, base_dir: Path,
                    where: Location | None) -> tokenizers.Tokenizer:
    """The configured tokenizer; char and bpe learn from the training split's text only."""
    if config == "bytes":
        return tokenizers.ByteTokenizer()
    if config == "char":
        seen: set[str] = set()
        for chunk in train_text():
            seen.update(chunk)
        return tokenizers.CharTokenizer("".join(seen))
    if isinstance(config, str):
        return tokenizers.read_tokenizer_file(resolve_path(config, base_dir, where), where)
    return tokenizers.train_bpe(train_text(), config.bpe.vocab_size, config.bpe.min_frequency, where)


def _write_cache(folder: Path, chunks: TextChunks, total: int, config: DataConfig, base_dir: Path,
                 where: Location | None) -> None:
    """Tokenise into `<folder>.tmp-<pid>`, then rename it into place (a crash leaves no half entry)."""
    edges = char_boundaries(total, config.split.val, config.split.test)
    tokenizer = build_tokenizer(config.tokenizer, lambda: _split_chunks(chunks, edges[0], edges[1]), base_dir, where)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    temporary = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    bounds, counts, written = {}, {}, 0
    with open(temporary / "tokens.bin", "wb") as out:
        for name, start, end in zip(SPLITS, edges[:-1], edges[1:]):
            tally = {"tokens": 0, "chars": end - start, "bytes": 0}
            for text in _lines(_split_chunks(chunks, start, end)):
                ids = tokenizer.encode(text)
                out.write(ids.astype(dtype).tobytes())
                tally["tokens"] += len(ids)
                tally["bytes"] += len(text.encode("utf-8"))
            bounds[name] = [written, written + tally["tokens"]]
            counts[name], written = tally, written + tally["tokens"]
        out.flush()
        os.fsync(out.fileno())
    meta = {"format": CACHE_FORMAT, "dtype": np.dtype(dtype).name, "bounds": bounds, "counts": counts,
            "tokenizer": tokenizer.state()}
    (temporary / "tokenizer.json").write_text(tokenizers.file_text(tokenizer), encoding="utf-8")
    (temporary / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    try:
        os.rename(temporary, folder)
    except OSError:   # another run wrote the same entry first: it holds the same tokens
        shutil.rmtree(temporary, ignore_errors=True)


def _open_cache(folder: Path, where: Location | None) -> TokenCorpus:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    path = folder / "tokens.bin"
    count = max(end for _, end in meta["bounds"].values())
    tokens = np.memmap(path, dtype=meta["dtype"], mode="r", shape=(count,)) if count else np.zeros(0, np.uint16)
    return TokenCorpus(tokens, {name: tuple(bound) for name, bound in meta["bounds"].items()}, meta["counts"],
                       tokenizers.from_state(meta["tokenizer"], where), folder)


def check_windows(corpus: TokenCorpus, block_size: int, label: str, where: Location | None) -> None:
    """Every split that has text must hold one window of block_size + 1 tokens (input and target).

    Raises:
        SpecError: DATA_ERROR naming the split, its size and the window's.
    """
    for name, (start, end) in corpus.bounds.items():
        chars = corpus.counts[name]["chars"]
        if (name == "train" or chars) and end - start < block_size + 1:
            _fail(f"{label}: the {name} split has {end - start:,} tokens ({chars:,} characters), shorter than one "
                  f"window of block_size + 1 = {block_size + 1} tokens; use more text, a smaller block_size "
                  f"or other split fractions", where)


def _fail(message: str, where: Location | None) -> None:
    raise SpecError(Problem(message, where, "DATA_ERROR"))
