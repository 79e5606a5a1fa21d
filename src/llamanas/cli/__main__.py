"""``python -m llamanas.cli`` (and ``accelerate launch -m llamanas.cli``) runs the command line."""

from llamanas.cli.app import main

main()
