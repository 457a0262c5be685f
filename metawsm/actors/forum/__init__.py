"""The forum pipeline as actors: intake → outbox relay → stream consumer → handler → projections → broker."""
