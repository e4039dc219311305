"""Text data meet the model: the tokenizer sets `$tokenizer.vocab_size`, the model must fit the
vocabulary, the spec's input gives block_size, and a checkpoint's tokenizer must be the spec's.

Used by training (`specc.train.training`), `evaluate` and `generate`; the token file itself is
`specc.train.text_corpus`, its windows `specc.train.token_windows`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from specc.build.compiled import Compiled
from specc.lang.errors import Location, Problem, SpecError
from specc.lang.spec import Spec, load
from specc.lang.tokenizer_vars import tokenizer_vars
from specc.train import tokenizer as tokenizers
from specc.train.text_corpus import TokenCorpus, check_windows, load_corpus


def spec_base_dir(spec: Spec) -> Path:
    """The spec file's folder (data paths are looked up there first)."""
    return Path(spec.file).parent if spec.file != "<spec>" else Path.cwd()


def cache_root_of(checkpoint: str | Path | None, out: Path) -> Path:
    """Where token files are cached: `<out>/.tokens`, or beside the runs a checkpoint belongs to
    (`runs/<name>/<run>/last.pt` -> `runs/.tokens`)."""
    if checkpoint is not None:
        parents = Path(checkpoint).resolve().parents
        if len(parents) > 2:
            return parents[2] / ".tokens"
    return out / ".tokens"


def tokenizer_location(spec: Spec) -> Location | None:
    return spec.source.locate(("train", "data", "tokenizer"))


def read_text_data(spec: Spec, cache_root: Path) -> tuple[Spec, TokenCorpus | None]:
    """Tokenise a text source (or find its token file in `cache_root`), and set the spec's
    `$tokenizer.vocab_size` vars to the tokenizer's size.

    Returns:
        The spec (reloaded with the vars set) and the corpus; the spec unchanged and None for other data.
    """
    config = spec.train.data
    if not config.is_text:
        return spec, None
    corpus = load_corpus(config, base_dir=spec_base_dir(spec), cache_root=cache_root,
                         where=spec.source.locate(("train", "data", "source")), tokenizer_where=tokenizer_location(spec))
    names = tokenizer_vars(spec.raw)
    if names:
        spec = load(spec, {name: corpus.tokenizer.vocab_size for name in names})
    return spec, corpus


def block_size_of(spec: Spec, compiled: Compiled) -> int:
    """The length of the spec's one token input `{shape: [block_size], dtype: long}`.

    Raises:
        SpecError: a located error when the spec has other inputs.
    """
    shapes = compiled.input_shapes()
    name = next(iter(shapes))
    if len(shapes) != 1 or len(shapes[name]) != 1 or spec.inputs[name].dtype not in ("long", "int64"):
        raise SpecError(Problem(f"text data feed one input of token ids, {{shape: [block_size], dtype: long}}; "
                                f"the spec's inputs are {', '.join(f'{n} {list(s)}' for n, s in shapes.items())}",
                                spec.source.locate(("inputs",)), "DATA_ERROR"))
    return shapes[name][0]


def check_model_fits(spec: Spec, compiled: Compiled, corpus: TokenCorpus) -> int:
    """The model's embedding of the token input and its output must cover the vocabulary.

    Returns:
        block_size, after checking every split holds a window of it.

    Raises:
        SpecError: located at the embedding (or the output layer) when it is smaller than the vocabulary.
    """
    block_size = block_size_of(spec, compiled)
    check_windows(corpus, block_size, spec.train.data.location, spec.source.locate(("train", "data", "source")))
    vocabulary, tokenizer = corpus.tokenizer.vocab_size, corpus.tokenizer.describe()
    graph = compiled.graph
    token_input = compiled.input_names[0]
    for node in graph.nodes:
        if node.op == "module" and node.target == "Embedding" and token_input in node.inputs:
            rows = int(node.args.get("num_embeddings", vocabulary))
            if rows < vocabulary:
                raise SpecError(Problem(f"the embedding has {rows} rows but the tokenizer {tokenizer} makes ids up "
                                        f"to {vocabulary - 1}; set num_embeddings to {vocabulary} or more "
                                        f"(vars: {{vocab_size: $tokenizer.vocab_size}} follows the tokenizer)",
                                        node.location, "DATA_ERROR"))
    output = graph[graph.outputs[0]]
    classes = (output.feature_shape or (0,))[-1]
    if classes < vocabulary:
        raise SpecError(Problem(f"the model outputs {classes} scores per position but the tokenizer {tokenizer} has "
                                f"{vocabulary} tokens; the output needs {vocabulary} or more", output.location,
                                "DATA_ERROR"))
    return block_size


def check_tokenizer(stored: dict[str, Any] | None, tokenizer: tokenizers.Tokenizer | None, spec: Spec,
                    checkpoint: str | Path) -> None:
    """A checkpoint's tokenizer must be the one the spec's data make, or its ids mean other text.

    Raises:
        SpecError: CHECKPOINT_ERROR located at `train.data.tokenizer` (or the data source).
    """
    current = tokenizer.state() if tokenizer is not None else None
    if stored == current:
        return
    where = tokenizer_location(spec) or spec.source.locate(("train", "data", "source"))
    saved = tokenizers.from_state(stored).describe() if stored else "none (not text data)"
    now = tokenizer.describe() if tokenizer is not None else "none (not text data)"
    detail = " (same kind, other symbols: other training text or split)" if stored and current and \
        stored.get("kind") == current.get("kind") else ""
    raise SpecError(Problem(f"{checkpoint}: the checkpoint was trained with tokenizer {saved} but the spec's data "
                            f"give {now}{detail}; use the spec it was trained with", where, "CHECKPOINT_ERROR"))
