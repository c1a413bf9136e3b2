"""API keys: hashed keys, scopes, rotation and the serving replicas' key cache."""
