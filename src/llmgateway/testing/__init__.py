"""Test tooling shipped with the package: the fake upstream provider (`FakeUpstream`), which
speaks the OpenAI and Gemini wire formats on real loopback HTTP, with faults chosen by key, a
scripted hostile upstream (`HostileUpstream`) that answers with exactly the bytes a test gives,
and an in-memory `Upstream` (`MemoryUpstream`) that drives the attempt loop without a socket."""

from llmgateway.testing.fake_upstream import FakeUpstream, SeenRequest
from llmgateway.testing.faults import Behavior, behavior_for_name
from llmgateway.testing.hostile import HostileUpstream
from llmgateway.testing.memory_upstream import MemoryUpstream, ScriptedResponse, SentRequest

__all__ = [
    "Behavior",
    "FakeUpstream",
    "HostileUpstream",
    "MemoryUpstream",
    "ScriptedResponse",
    "SeenRequest",
    "SentRequest",
    "behavior_for_name",
]
