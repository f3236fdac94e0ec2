"""`python -m fedge`: the same as the `fedge` command."""

from fedge.cli import main

main()
