"""Test tooling shipped with the package: the fake upstream provider (`FakeUpstream`), which
speaks the OpenAI and Gemini wire formats on real loopback HTTP, with faults chosen by key, and a
scripted hostile upstream (`HostileUpstream`) that answers with exactly the bytes a test gives."""

from llmgateway.testing.fake_upstream import FakeUpstream, SeenRequest
from llmgateway.testing.faults import Behavior, behavior_for_name
from llmgateway.testing.hostile import HostileUpstream

__all__ = ["Behavior", "FakeUpstream", "HostileUpstream", "SeenRequest", "behavior_for_name"]
