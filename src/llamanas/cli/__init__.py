"""The command line: typer commands that are thin calls into the stages' Python API."""

from llamanas.cli.app import app, main

__all__ = ["app", "main"]
