"""The `ephq` command line: Typer for the commands, Rich for people, JSON Lines for programs."""
