"""The Keeper (`llmgateway worker`): keeps the store in step with the key and proxy files
(`worker.sync`) and with the keys' health."""
