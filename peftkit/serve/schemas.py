"""What the server accepts: request bodies (pydantic) and the bounds on them.

OpenAI-shaped requests ignore fields peftkit does not use (clients send `user`, `seed`, ...), as
OpenAI-compatible servers do; peftkit's own /v1/predict refuses unknown fields (a typo should not
pass unnoticed). Fields that would change the answer and are not supported (`stream`, `n` > 1) are
refused by the routes with a 400 that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20      # a request body larger than this: 413
    max_texts: int = 64                # texts (or prompts) per request
    max_text_chars: int = 20_000       # characters per text / message content
    max_tokens: int = 256              # new tokens per completion
    max_messages: int = 64             # chat messages per request


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str
    texts: list[str] = Field(min_length=1)


class Sampled(BaseModel):
    """The generation fields both OpenAI endpoints share."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)   # 0 (greedy) unless asked: as `peftkit predict`
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: Union[str, list[str], None] = None


class CompletionRequest(Sampled):
    prompt: Union[str, list[str]]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else \
            "".join(part.text for part in self.content)


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)   # the newer name of max_tokens


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = None
