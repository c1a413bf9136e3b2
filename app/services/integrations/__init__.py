"""Everything that talks to a system outside Lethe: OpenDSR and Fides, the callback outbox, the
organisation's Delta tables (source erasure) and model registries (publishing). Every outbound HTTP
call goes through ``app.core.outbound``; each integration reads request state, never writes it except
through ``requests.lifecycle``."""
