"""Command-line interface: click commands only, no serving logic."""
