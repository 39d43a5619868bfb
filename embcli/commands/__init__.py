"""Click commands, grouped by what they do. Each module exposes COMMANDS."""
