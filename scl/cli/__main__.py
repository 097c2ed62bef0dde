"""`python -m scl.cli` runs the command line."""

from scl.cli import main

main()
