"""The Keeper (`llmgateway worker`): key-file sync, probes of keys and proxies, upstream model
lists, maintenance."""
