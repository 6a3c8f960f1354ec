"""llmgateway: one reliable endpoint in front of many unstable LLM provider keys."""

__version__ = "0.1.0"
