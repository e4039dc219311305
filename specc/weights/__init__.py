"""Stage 2b, weights (between building and summaries/training/export): tensors in and out of a compiled model.

`files` reads other libraries' weight files without running their code, `mapping` pairs their
tensors with a model's (strict names, rename rules, or `auto`, whose structure evidence is in
`pairing`), `report` says what a load did and why, `check` compares a loaded model with the
library's own outputs, `hf_config` reads a Hugging Face config.json as spec vars, `loading` writes
and reads specc's own safetensors (the spec in the metadata) and loads any of them into a model,
`checkpoint` holds `specc train` checkpoints, `freeze` starts a fine-tune from saved weights, and
`building` is the public `specc.build` (compile, then load weights).
"""
