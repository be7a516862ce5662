"""``python -m budcache``: the command line."""

from .cli import main

main()
