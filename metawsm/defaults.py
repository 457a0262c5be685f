"""Default file locations, importable without loading anything heavy (the CLI starts fast)."""

DEFAULT_POLICY_PATH = ".metawsm/policy.json"
DEFAULT_DB_PATH = ".metawsm/metawsm.db"
DEFAULT_ADDR = "127.0.0.1:3001"
