"""`python -m scl` runs the command line."""

from scl.cli import main

main()
