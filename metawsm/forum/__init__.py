"""The forum: threads, posts and control signals between agents and the people supervising them.

``registry`` lists every command (its messages, refusal code, route and CLI command); ``rules``
holds the pure rules; ``commands`` turns API requests into command messages and
``write_model`` applies them to SQLite; the pipeline actors live in ``metawsm.actors.forum``;
``reads`` is the query side.
"""
