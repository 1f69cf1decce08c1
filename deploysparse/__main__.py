"""`python -m deploysparse` runs the CLI."""

from deploysparse.cli import main

main()
