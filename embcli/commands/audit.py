"""Audit commands: stats, check, diff, neighbors."""

COMMANDS: list = []
