"""The text keys of `train.data` (language models): `tokenizer`, `text_column`, `samples_per_epoch`,
`steps`, and how they combine with the other data keys (docs/train.md#text-language-models)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from specc.lang.errors import did_you_mean

TOKENIZER_NAMES = ("bytes", "char")   # or {bpe: {vocab_size: N}}, or a path to a tokenizer.json


class BpeOptions(BaseModel):
    """Byte-level BPE learned from the training split (Hugging Face `tokenizers`)."""

    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(ge=257, le=2**20)   # the 256 bytes plus at least one merge
    min_frequency: int = Field(2, ge=1)         # a pair seen fewer times is never merged


class BpeTokenizer(BaseModel):
    """`tokenizer: {bpe: {vocab_size: 4096}}`."""

    model_config = ConfigDict(extra="forbid")
    bpe: BpeOptions


def check_tokenizer_name(value: Any) -> Any:
    """A tokenizer given by name is bytes, char or the path of a .json file.

    Raises:
        ValueError: any other name, with a did-you-mean.
    """
    if isinstance(value, str) and value not in TOKENIZER_NAMES and not value.endswith(".json"):
        suggestion = did_you_mean(value, TOKENIZER_NAMES)
        raise ValueError(f"tokenizer must be bytes, char, {{bpe: {{vocab_size: N}}}} or the path of a "
                         f"tokenizer.json (got {value!r})" + (f" (did you mean '{suggestion}'?)" if suggestion else ""))
    return value


def check_text_keys(data: Any) -> None:
    """The text keys appear with text data only, text data have a tokenizer, and the keys of other
    sources (target, inputs, normalize, augment, kfold) stay away from text.

    Args:
        data: a validated `DataConfig`.

    Raises:
        ValueError: the first key that does not fit.
    """
    if data.text_column is not None and data.kind not in ("parquet", "arrow"):
        raise ValueError("`text_column` applies to parquet: and arrow: sources only")
    if not data.is_text:
        extra = [key for key in ("tokenizer", "samples_per_epoch", "steps") if getattr(data, key) is not None]
        if extra:
            raise ValueError(f"`{extra[0]}` applies to text data only: a text: source, or parquet:/arrow: "
                             f"with `text_column`")
        return
    if data.tokenizer is None:
        raise ValueError("text data need a `tokenizer`: bytes, char, {bpe: {vocab_size: N}} or the path "
                         "of a tokenizer.json")
    if data.samples_per_epoch is not None and data.steps is not None:
        raise ValueError("give `samples_per_epoch` or `steps`, not both (both say how long an epoch is)")
    for key in ("target", "inputs", "normalize", "augment"):
        if key in data.model_fields_set:
            raise ValueError(f"`{key}` does not apply to text data: the target is the next token")
    if data.split.kfold is not None:
        raise ValueError("text data split into contiguous train/val/test ranges; kfold does not apply")
