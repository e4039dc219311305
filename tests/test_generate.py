"""`specc generate` and the key/value cache: reproducible samples, the cache's tokens equal the
uncached ones, and the cache reproduces every attention layout's forward (docs/train.md#text)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import specc
from specc.cli import app
from specc.lang.errors import SpecError
from specc.train.generation import generate
from specc.train.kv_cache import CachedAttention, kv_cache
from specc.train.training import train

SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.mark.parametrize("name", ["gpt2_small", "llama3", "qwen2", "gemma"])
def test_the_cache_gives_the_scores_of_the_whole_sequence_for_every_attention_layout(name):
    overrides = {"n_layers": 2, "dim": 64, "n_heads": 4, "block_size": 32, "vocab_size": 100} \
        if name == "gpt2_small" else {}
    torch.manual_seed(0)
    model = specc.build(SPECS / f"{name}.yaml", **overrides).eval()
    tokens = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        expected = model(tokens)
        with kv_cache(model) as state:
            assert state.layers == 2 and sum(isinstance(m, CachedAttention) for m in model.modules()) == 2
            pieces = [model(tokens[:, :6])]                     # the prompt at once
            state.position = 6
            pieces.append(model(tokens[:, 6:9]))                # three new tokens after a cache
            state.position = 9
            for t in range(9, 12):                              # then one at a time
                pieces.append(model(tokens[:, t:t + 1]))
                state.position += 1
        assert not any(isinstance(m, CachedAttention) for m in model.modules())   # put back
        assert torch.allclose(torch.cat(pieces, dim=1), expected, atol=1e-5)
        assert torch.equal(model(tokens), expected)


# --- generate from a trained checkpoint ------------------------------------------------------------------
def tiny_lm(source: str, block_size: int = 16, layers: list | None = None) -> dict:
    return {
        "name": "tiny_gen", "inputs": {"tokens": {"shape": [block_size], "dtype": "long"}},
        "vars": {"vocab_size": "$tokenizer.vocab_size", "block_size": block_size},
        "layers": layers or [
            {"Embedding": {"num_embeddings": "$vocab_size", "embedding_dim": 32}, "name": "wte"},
            {"PositionalEmbedding": {"max_len": "$block_size"}, "name": "wpe"},
            {"residual": [{"LayerNorm": {}}, {"CausalSelfAttention": {"n_heads": 4, "max_len": "$block_size"}}]},
            {"residual": [{"LayerNorm": {}}, {"MLP": {"hidden_dim": 64}}]},
            {"LayerNorm": {}}, {"Linear": {"out_features": "$vocab_size"}, "name": "head"}],
        "train": {"data": {"source": source, "tokenizer": "char", "split": {"val": 0.1, "test": 0.0}, "steps": 30},
                  "batch_size": 8, "epochs": 1, "loss": "CrossEntropyLoss", "optimizer": {"AdamW": {"lr": 0.01}}},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate")
    (folder / "corpus.txt").write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(80)))
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_lm("text:corpus.txt"), sort_keys=False))
    result = train(path, out=folder / "runs", verbose=False)
    assert result.ok
    return path, result.best_checkpoint


def test_a_fixed_seed_gives_the_same_text_and_the_cache_gives_the_same_tokens(trained):
    path, checkpoint = trained
    first = generate(path, checkpoint, prompt="def ", max_new_tokens=40, seed=3)
    again = generate(None, checkpoint, prompt="def ", max_new_tokens=40, seed=3)   # the checkpoint's own spec
    other = generate(path, checkpoint, prompt="def ", max_new_tokens=40, seed=4)
    plain = generate(path, checkpoint, prompt="def ", max_new_tokens=40, seed=3, cache=False)
    assert first.cached and not plain.cached
    assert first.tokens == again.tokens == plain.tokens and first.text == plain.text
    assert first.tokens != other.tokens and len(first.tokens) == 40
    assert first.text.startswith("def ") and first.text == "def " + first.continuation


def test_past_block_size_and_with_top_k_and_temperature_the_cache_still_matches(trained):
    path, checkpoint = trained
    options = dict(prompt="def f1(x):\n", max_new_tokens=30, seed=1, temperature=0.7, top_k=3)  # 11 + 30 > 16
    cached, plain = generate(path, checkpoint, **options), generate(path, checkpoint, cache=False, **options)
    assert cached.cached and cached.tokens == plain.tokens
    greedy = [generate(path, checkpoint, prompt="def", max_new_tokens=10, temperature=0, seed=s).tokens for s in (0, 9)]
    assert greedy[0] == greedy[1]                     # temperature 0: the likeliest token, whatever the seed
    top_1 = generate(path, checkpoint, prompt="def", max_new_tokens=10, top_k=1, seed=5).tokens
    assert top_1 == greedy[0]


def test_a_model_whose_layers_mix_positions_the_cache_does_not_know_generates_without_it(tmp_path, trained):
    path, checkpoint = trained
    (tmp_path / "corpus.txt").write_text((Path(path).parent / "corpus.txt").read_text())
    spec = tiny_lm("text:corpus.txt")
    spec["layers"].insert(2, {"cumsum": {"dim": 1}})   # a running sum over the positions
    (tmp_path / "mixing.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = train(tmp_path / "mixing.yaml", out=tmp_path / "runs", verbose=False)
    sample = generate(tmp_path / "mixing.yaml", result.best_checkpoint, prompt="def", max_new_tokens=20)
    plain = generate(tmp_path / "mixing.yaml", result.best_checkpoint, prompt="def", max_new_tokens=20, cache=False)
    assert not sample.cached and sample.tokens == plain.tokens


def test_specc_generate_on_the_command_line(trained):
    path, checkpoint = trained
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(path), "--checkpoint", str(checkpoint), "--prompt", "def ",
                                 "--max-new-tokens", "25", "--seed", "3", "--temperature", "0.9", "--top-k", "5"])
    assert result.exit_code == 0, result.output
    expected = generate(path, checkpoint, prompt="def ", max_new_tokens=25, seed=3, temperature=0.9, top_k=5)
    assert result.output == expected.text + "\n"
    bad = runner.invoke(app, ["generate", str(path), "--checkpoint", str(checkpoint), "--temperature", "-1",
                              "--top-k", "0"])
    assert bad.exit_code == 2
    assert "temperature must be 0 or more (got -1.0)" in bad.output and "top_k must be 1 or more" in bad.output


def test_a_spec_with_another_tokenizer_is_a_located_error(trained, tmp_path):
    path, checkpoint = trained
    spec = yaml.safe_load(Path(path).read_text())
    spec["train"]["data"]["tokenizer"] = "bytes"
    (tmp_path / "bytes.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    lines = (tmp_path / "bytes.yaml").read_text().splitlines()
    with pytest.raises(SpecError) as error:
        generate(tmp_path / "bytes.yaml", checkpoint, max_new_tokens=5)
    problem = error.value.problems[0]
    assert "the checkpoint was trained with tokenizer char" in problem.message
    assert "but the spec says tokenizer bytes" in problem.message
    assert problem.location.line == next(i for i, line in enumerate(lines, 1) if "tokenizer: bytes" in line)


def test_a_checkpoint_not_trained_on_text_cannot_generate(tmp_path):
    spec = {"name": "iris", "inputs": {"x": {"shape": [4]}}, "layers": [{"Linear": {"out_features": 3}}],
            "train": {"data": {"source": "sklearn:iris"}, "epochs": 1, "loss": "CrossEntropyLoss"}}
    result = train(spec, out=tmp_path, verbose=False)
    with pytest.raises(SpecError, match="holds no tokenizer: it was not trained on text"):
        generate(None, result.best_checkpoint)
