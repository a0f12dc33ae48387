"""The state service: volte.v1.StateStore on Redis (see store.py, keys.py and service.py)."""
