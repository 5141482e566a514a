"""Reports printed by the `revorch` command."""
