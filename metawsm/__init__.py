"""metawsm: supervise coding agents through a durable forum and an actor-system daemon."""

__version__ = "0.1.0"
