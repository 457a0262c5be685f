"""Runs as actors: RunSupervisor → Run[<run_id>] → TmuxAgent[<agent>]."""
