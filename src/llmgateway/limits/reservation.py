"""How many tokens a request reserves against a tokens-per-minute limit before it is sent.

The rule: a prompt estimate of one token per `BYTES_PER_TOKEN` bytes of the request body
(rounded up), plus the output the request allows: the largest `max_tokens`,
`max_completion_tokens`, `max_output_tokens` (OpenAI chat, the Responses API, Anthropic) or
`maxOutputTokens` (Gemini's `generationConfig`) the body sets, else the prompt estimate again.
Read from the raw bytes with one regular expression, no JSON model: an unescaped `"max_tokens"`
followed by a colon and digits can only be a key (a quote inside a JSON string is escaped).
Once the answer's usage is read the reservation is replaced by the real count (`spent`).
"""

from __future__ import annotations

import re

BYTES_PER_TOKEN = 4
"""The prompt estimate: one token per this many bytes of the body."""
MOST_OUTPUT = 1 << 24
"""The largest output allowance believed (a `max_tokens` of 10**9 counts as this)."""
_ALLOWANCE = re.compile(
    rb'"(?:max_tokens|max_completion_tokens|max_output_tokens|maxOutputTokens)"\s*:\s*(\d{1,9})\b'
)


def reservation(body: bytes) -> int:
    """The tokens `body` reserves (see the module docstring)."""
    prompt = -(-len(body) // BYTES_PER_TOKEN)
    allowed = [int(found) for found in _ALLOWANCE.findall(body)]
    output = min(max(allowed), MOST_OUTPUT) if allowed else prompt
    return prompt + output
