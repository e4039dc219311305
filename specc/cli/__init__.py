"""The `specc` command line (typer). Each command is a thin layer over the Python API.

app.py holds the app and the options and error handling every command shares; the commands are
grouped by what they do with a model: model.py (check, schema, draw, summary, diff),
training.py (train, evaluate, predict), weights.py (export, codegen, port, import).
"""
from specc.cli.app import app, main
from specc.cli import model, training, weights   # importing a group registers its commands

__all__ = ["app", "main", "model", "training", "weights"]
