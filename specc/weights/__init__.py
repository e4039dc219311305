"""Stage 2b, weights (between building and summaries/training/export): tensors in and out of a compiled model.

`files` reads other libraries' weight files without running their code, `mapping` pairs their
tensors with a model's (strict names, rename rules, or structure), `report` says what a load did,
`loading` writes and reads specc's own safetensors (the spec in the metadata) and loads any of
them into a model, `checkpoint` holds `specc train` checkpoints, `freeze` starts a fine-tune from
saved weights, and `building` is the public `specc.build` (compile, then load weights).
"""
