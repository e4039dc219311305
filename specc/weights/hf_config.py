"""A Hugging Face `config.json` as spec vars: the sizes a checkpoint folder was saved with.

specc's language-model specs (gpt2_small, llama3, qwen2, gemma, mixtral) name their sizes alike
(`dim`, `n_layers`, `n_heads`, `n_kv_heads`, `hidden_dim`, ...). `config_vars` reads the keys
transformers writes and returns, for the vars a spec declares, the values the checkpoint needs;
keys the spec has no var for are left out, so a config can never set something unexpected.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specc.lang.errors import Problem, SpecError

# transformers' config key -> the var specc's specs use for it (first one found wins)
CONFIG_VARS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim", "n_embd": "dim", "d_model": "dim",
    "num_hidden_layers": "n_layers", "n_layer": "n_layers",
    "num_attention_heads": "n_heads", "n_head": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "head_dim": "head_dim",
    "intermediate_size": "hidden_dim",
    "rms_norm_eps": "norm_eps", "layer_norm_epsilon": "norm_eps", "layer_norm_eps": "norm_eps",
    "rope_theta": "rope_base",
    "max_position_embeddings": "max_len",
    "n_positions": "block_size",
    "num_local_experts": "n_experts",
    "num_experts_per_tok": "top_k",
    "activation_function": "activation",
}
# values spelled differently: GPT-2's "gelu_new" is the tanh approximation
_VALUES = {"activation": {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}}
_LIMIT = 1_000_000   # bytes: a config is small; anything bigger is not one


def config_vars(path: str | Path, declared: set[str] | None = None) -> dict[str, Any]:
    """The spec vars (only those in `declared`) that a Hugging Face `config.json` sets.

    Args:
        path: the config file, or the checkpoint folder holding `config.json`.
        declared: the spec's var names (`set(specc.load(spec).vars)`); None keeps every known key.

    Raises:
        SpecError: CHECKPOINT_ERROR for a missing, oversized or malformed file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        if path.stat().st_size > _LIMIT:
            raise SpecError(Problem(f"{path}: {path.stat().st_size:,} bytes is no config.json", None, "CHECKPOINT_ERROR"))
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SpecError(Problem(f"{path}: cannot read the config ({error})", None, "CHECKPOINT_ERROR")) from None
    if not isinstance(config, dict):
        raise SpecError(Problem(f"{path}: a config is a JSON object", None, "CHECKPOINT_ERROR"))
    rope = config.get("rope_parameters")      # transformers 5.x keeps rope_theta here
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        config = {**config, "rope_theta": rope["rope_theta"]}
    found: dict[str, Any] = {}
    for key, name in CONFIG_VARS.items():
        value = config.get(key)
        if (declared is None or name in declared) and name not in found and isinstance(value, (int, float, str)) and value is not None:
            found[name] = _VALUES.get(name, {}).get(value, value) if isinstance(value, str) else value
    return found
