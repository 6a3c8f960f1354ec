"""Configuration: the settings model, loading `providers.yaml`, and the cross-field rules."""
