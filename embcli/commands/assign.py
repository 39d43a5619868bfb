"""The command that writes: assign."""

COMMANDS: list = []
