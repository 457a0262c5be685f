"""The operator's domain: what a decision is, how it is announced, notified and second-guessed.

The actor that takes decisions is :mod:`metawsm.actors.operator.actor`; this package holds what it
uses and what other parts of the daemon (agent actors, the API, the WebSocket hub) share with it.
"""
