"""Stage 1, the language: YAML text with positions -> a validated `Spec`.

`source` reads YAML remembering where each key was written, `expressions` evaluates `$vars` and
`$(expr)`, `spec` and `train_config` are the pydantic schema, `errors` the located problems, and
`schema` the JSON Schema for editors. Nothing here imports torch-building code.
"""
