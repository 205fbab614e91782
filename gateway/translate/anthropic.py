"""Anthropic Messages ⇄ chat completions, for runtimes that do not serve /v1/messages.

Pure functions and one stateful stream translator; no I/O. The pieces live in:

    anthropic_errors    TranslationError, Anthropic's error body and `event: error`
    anthropic_validate  validate_messages: a malformed request is a 400 naming the field
    anthropic_request   messages_to_chat: the request, one way
    anthropic_system    fold_system_messages: system messages inside `messages`, for templates
    anthropic_response  chat_to_message and the usage / stop-reason maps, the other way
    anthropic_stream    ChatStreamToMessages: a chat stream as Anthropic's event stream

Each module's docstring says what it decides where the two APIs differ. Import from here.
"""

from gateway.translate.anthropic_errors import (
    TranslationError, error_body, error_event, error_type_for_status, sse_event)
from gateway.translate.anthropic_request import messages_to_chat
from gateway.translate.anthropic_response import (
    SIGNATURE, anthropic_usage, chat_to_message, message_usage)
from gateway.translate.anthropic_stream import ChatStreamToMessages
from gateway.translate.anthropic_validate import validate_messages, validate_route

__all__ = [
    "SIGNATURE", "ChatStreamToMessages", "TranslationError", "anthropic_usage",
    "chat_to_message", "error_body", "error_event", "error_type_for_status",
    "message_usage", "messages_to_chat", "sse_event", "validate_messages", "validate_route",
]
