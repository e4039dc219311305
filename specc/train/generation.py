"""`specc generate`: sample text from a checkpoint trained on text, decoded with its saved tokenizer.

    import specc
    out = specc.generate("specs/gpt_char.yaml", "runs/gpt_char/<run>/best.pt", prompt="def ",
                         max_new_tokens=200, temperature=0.8, top_k=40, seed=0)
    print(out.text)

Sampling is nanoGPT's: the last `block_size` tokens go through the model, the last position's
scores are divided by the temperature (0: always the most likely token), cut to the `top_k` best,
and a token is drawn from their softmax with a generator seeded by `seed` (the same seed gives
the same text). With the key/value cache (specc.train.kv_cache, the default) each step feeds only
the new token; the tokens are the same as without it. Past block_size tokens, each step reads
the last block_size tokens afresh, with or without the cache (the model's positions end there).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.weights.checkpoint import load_checkpoint, load_model_state
from specc.lang.errors import Problem, SpecError
from specc.lang.spec import Spec, load
from specc.lang.tokenizer_vars import tokenizer_vars
from specc.train import tokenizer as tokenizers
from specc.train.kv_cache import kv_cache, reset
from specc.train.loop import first_output
from specc.train.prepare import build_model, load_train_spec, resolve_device
from specc.train.text_data import block_size_of, tokenizer_location

MAX_NEW_TOKENS = 1_000_000
# the cached and uncached scores of one step must agree this closely, or the cache is not used
CACHE_TOLERANCE = 1e-3


@dataclass
class Generated:
    """A sample: the prompt and its continuation, the new token ids, and how it was made."""

    prompt: str
    continuation: str
    tokens: list[int]
    seconds: float
    cached: bool        # the key/value cache was used

    @property
    def text(self) -> str:
        return self.prompt + self.continuation

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds else float("inf")

    def __str__(self) -> str:
        return self.text


def generate(spec_or_path: str | Path | dict | Spec | None, checkpoint: str | Path, *, prompt: str = "\n",
             max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
             device: str | None = None, cache: bool = True, overrides: dict[str, Any] | None = None) -> Generated:
    """Continue `prompt` with `max_new_tokens` tokens sampled from the checkpoint's model.

    Args:
        spec_or_path: the spec; None = the resolved spec stored in the checkpoint.
        checkpoint: a best.pt or last.pt of a run on text data.
        prompt: the text to continue (encoded with the checkpoint's tokenizer).
        max_new_tokens: how many tokens to sample.
        temperature: divides the scores; below 1 sharper, above 1 flatter, 0 always the likeliest token.
        top_k: sample among the k likeliest tokens only; None = all.
        seed: seeds the sampling generator.
        device: overrides `train.device`.
        cache: use the key/value cache (same tokens, linear instead of quadratic time).
        overrides: vars or dotted keys, like `--set`.

    Raises:
        SpecError: a checkpoint without a tokenizer, a spec whose tokenizer is another kind, bad arguments.
    """
    _check_arguments(prompt, max_new_tokens, temperature, top_k)
    state = load_checkpoint(checkpoint)
    if not state.get("tokenizer"):
        raise SpecError(Problem(f"{checkpoint}: the checkpoint holds no tokenizer: it was not trained on text "
                                f"(train.data.tokenizer)", None, "CHECKPOINT_ERROR"))
    tokenizer = tokenizers.from_state(state["tokenizer"])
    spec = _spec_for(spec_or_path, state, tokenizer, overrides, checkpoint)
    compiled = build_model(spec, resolve_device(device or spec.train.device), None)
    load_model_state(compiled.module, state, checkpoint)
    model = compiled.module.eval()
    block_size = block_size_of(spec, compiled)
    ids = tokenizer.encode(prompt)
    if not len(ids):
        raise SpecError(Problem("the prompt encodes to no tokens; give at least one character", None, "TYPE_ERROR"))
    device_of = next(model.parameters()).device
    context = torch.as_tensor(ids, dtype=torch.long, device=device_of).unsqueeze(0)   # (1, T)
    sampler = Sampler(tokenizer.vocab_size, temperature, top_k, seed, device_of)
    started = time.perf_counter()
    with torch.no_grad():
        cached = cache and _cache_agrees(model, context[:, -block_size:])
        new = sample(model, context, max_new_tokens, block_size, sampler, cached)
    seconds = time.perf_counter() - started
    return Generated(prompt, tokenizer.decode(new), new, seconds, cached)


def _check_arguments(prompt: str, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    problems = []
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        problems.append(f"max_new_tokens must be 0 to {MAX_NEW_TOKENS:,} (got {max_new_tokens})")
    if not temperature >= 0:
        problems.append(f"temperature must be 0 or more (got {temperature})")
    if top_k is not None and top_k < 1:
        problems.append(f"top_k must be 1 or more (got {top_k})")
    if not prompt:
        problems.append("the prompt is empty; give at least one character (nanoGPT starts from a newline)")
    if problems:
        raise SpecError([Problem(message, None, "TYPE_ERROR") for message in problems])


def _spec_for(spec_or_path: Any, state: dict, tokenizer: tokenizers.Tokenizer, overrides: dict | None,
              checkpoint: str | Path) -> Spec:
    """The spec to build, its `$tokenizer.vocab_size` vars set; its tokenizer must be the checkpoint's kind."""
    spec = load_train_spec(state["spec"] if spec_or_path is None else spec_or_path, overrides)
    names = tokenizer_vars(spec.raw)
    if names:
        spec = load(spec, {name: tokenizer.vocab_size for name in names})
    configured = spec.train.data.tokenizer
    kind = None if configured is None else ("bpe" if not isinstance(configured, str) else
                                            configured if configured in ("bytes", "char") else "file")
    if kind != tokenizer.kind:
        said = "no tokenizer" if configured is None else f"tokenizer {tokenizers.describe_config(configured)}"
        raise SpecError(Problem(f"{checkpoint}: the checkpoint was trained with tokenizer {tokenizer.describe()} but "
                                f"the spec says {said}; use the spec it was trained with",
                                tokenizer_location(spec) or spec.source.locate(("train",)), "CHECKPOINT_ERROR"))
    return spec


def sample(model: nn.Module, context: torch.Tensor, count: int, block_size: int, sampler: "Sampler",
           cached: bool) -> list[int]:
    """`count` new token ids after `context` (1, T), with or without the key/value cache (no gradients)."""
    with torch.no_grad():
        return (_sample_cached if cached else _sample_plain)(model, context, count, block_size, sampler)


class Sampler:
    """Temperature, top-k and a seeded generator: the next token from the last position's scores."""

    def __init__(self, vocab_size: int, temperature: float, top_k: int | None, seed: int, device: torch.device):
        self.vocab_size, self.temperature, self.top_k = vocab_size, temperature, top_k
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        logits = scores[:, -1, :self.vocab_size].float()   # (1, V): ids past the vocabulary never come out
        if self.temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self.generator)   # (1, 1)


def _sample_plain(model: nn.Module, context: torch.Tensor, count: int, block_size: int, sampler: Sampler) -> list[int]:
    """Each step runs the last block_size tokens through the model."""
    new = []
    for _ in range(count):
        token = sampler(first_output(model(context[:, -block_size:])))
        context = torch.cat((context, token), dim=1)
        new.append(int(token))
    return new


def _sample_cached(model: nn.Module, context: torch.Tensor, count: int, block_size: int, sampler: Sampler) -> list[int]:
    """The prompt fills the cache once; then each step feeds the new token alone."""
    new = []
    with kv_cache(model) as state:
        window = context[:, -block_size:]
        scores = first_output(model(window))
        state.position = window.shape[1]
        for step in range(count):
            token = sampler(scores)
            context = torch.cat((context, token), dim=1)
            new.append(int(token))
            if step == count - 1:
                break
            if state.position + 1 > block_size:   # past the model's positions: read the window afresh
                reset(model, state)
                window = context[:, -block_size:]
                scores, state.position = first_output(model(window)), window.shape[1]
            else:
                scores = first_output(model(token))
                state.position += 1
    return new


def _cache_agrees(model: nn.Module, window: torch.Tensor) -> bool:
    """Whether the cache reproduces the model on `window` (one step after the rest): False for a model
    without specc attention layers, or with a layer that mixes positions the cache does not know."""
    if window.shape[1] < 2:
        window = window.repeat(1, 2)
    try:
        expected = first_output(model(window))[:, -1]
        with kv_cache(model) as state:
            if not state.layers:
                return False
            model(window[:, :-1])
            state.position = window.shape[1] - 1
            got = first_output(model(window[:, -1:]))[:, -1]
    except (RuntimeError, ValueError):   # e.g. a model whose layers need the whole block_size
        return False
    return bool(torch.allclose(got, expected, atol=CACHE_TOLERANCE, rtol=CACHE_TOLERANCE))
