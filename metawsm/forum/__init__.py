"""The forum: threads, posts and control signals between agents and the people supervising them.

``domain`` holds the rules (pure, no I/O); ``handlers`` apply commands to SQLite; the
pipeline actors live in ``metawsm.actors.forum``; ``reads`` is the query side.
"""
