"""`vars: {vocab_size: $tokenizer.vocab_size}`: a var that takes the size of the training data's tokenizer.

The size is known once the text is tokenised (specc.train.text_corpus); training, `evaluate` and
`generate` then set the var to it (a plain `--set`). Commands that read no data (`check`, `summary`,
`draw`, `specc.build`) see a stand-in: 256 for `bytes`, N for `{bpe: {vocab_size: N}}`, and 256
for a `char` tokenizer or a tokenizer.json, whose sizes only the data or the file tell: those two say
so in a warning (TOKENIZER_STAND_IN), since every count shown then rests on a guess.
"""
from __future__ import annotations

from typing import Any

from specc.lang.errors import Problem

TOKENIZER_VOCAB = "$tokenizer.vocab_size"
BYTE_VOCABULARY = 256


def tokenizer_vars(raw: Any) -> list[str]:
    """Names of the vars whose value is `$tokenizer.vocab_size`, in a parsed spec."""
    variables = raw.get("vars") if isinstance(raw, dict) else None
    if not isinstance(variables, dict):
        return []
    return [name for name, value in variables.items() if isinstance(value, str) and value.strip() == TOKENIZER_VOCAB]


def stand_in_vocabulary(raw: dict) -> int:
    """The vocabulary size a spec's tokenizer has before any data are read (see the module's docstring)."""
    train = raw.get("train")
    data = train.get("data") if isinstance(train, dict) else None
    tokenizer = data.get("tokenizer") if isinstance(data, dict) else None
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("bpe"), dict):
        size = tokenizer["bpe"].get("vocab_size")
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return BYTE_VOCABULARY


def with_stand_in(raw: Any) -> Any:
    """A copy of the parsed spec whose `$tokenizer.vocab_size` vars hold the stand-in (the raw spec
    keeps the reference, so a run can set the real size)."""
    names = tokenizer_vars(raw)
    if not names:
        return raw
    size = stand_in_vocabulary(raw)
    return {**raw, "vars": {**raw["vars"], **{name: size for name in names}}}


def stand_in_warnings(spec: Any) -> list[Problem]:
    """A warning at each `$tokenizer.vocab_size` var of a `Spec` whose stand-in is a guess (a `char`
    tokenizer or a tokenizer.json: only the text or the file tells their size); none once a run has set it."""
    data = spec.raw.get("train", {}).get("data") if isinstance(spec.raw.get("train"), dict) else None
    tokenizer = data.get("tokenizer") if isinstance(data, dict) else None
    if tokenizer == "bytes" or (isinstance(tokenizer, dict) and "bpe" in tokenizer):
        return []   # their sizes are known before any text is read
    known = ("a char tokenizer's size is known once the training text is read" if tokenizer == "char" else
             "a tokenizer file's size is known once training reads it" if isinstance(tokenizer, str) else
             "no tokenizer of the spec's training data tells it yet")
    return [Problem(f"{name} is {stand_in_vocabulary(spec.raw)} here, a stand-in for $tokenizer.vocab_size: {known}, "
                    f"so the parameters and shapes shown use the stand-in (training sets the real size; "
                    f"`--set {name}=N` shows another)",
                    spec.source.locate(("vars", name)) if spec.source else None, "TOKENIZER_STAND_IN")
            for name in tokenizer_vars(spec.raw)]
