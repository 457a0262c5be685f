"""The ``metawsm`` command line (click)."""
