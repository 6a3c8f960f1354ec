"""The Conductor (`llmgateway gateway`): edge, attempt loop, replies, status writer,
readiness, start-up."""
