"""Test tooling shipped with the package: the fake upstream provider (`FakeUpstream`), which
speaks the OpenAI and Gemini wire formats on real loopback HTTP, with faults chosen by key."""

from llmgateway.testing.fake_upstream import FakeUpstream, SeenRequest
from llmgateway.testing.faults import Behavior, behavior_for_name

__all__ = ["Behavior", "FakeUpstream", "SeenRequest", "behavior_for_name"]
