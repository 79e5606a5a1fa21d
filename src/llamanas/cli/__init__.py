"""The command line: typer commands that are thin calls into the stages' Python API."""

import importlib

from llamanas.cli.app import app, main

# Registering the commands; the import order is the order `llamanas --help` lists them in.
for _stage in ("pipeline", "model", "run", "deploy", "evidence"):
    importlib.import_module(f"llamanas.cli.commands_{_stage}")

__all__ = ["app", "main"]
