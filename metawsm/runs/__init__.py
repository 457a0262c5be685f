"""Runs: agents at work on tickets in tmux sessions inside workspaces (model, infrastructure, actors)."""
