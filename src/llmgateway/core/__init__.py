"""The pure core: outcome types and classification, the key pool, breakers and guards.

Standard library only, no I/O."""
