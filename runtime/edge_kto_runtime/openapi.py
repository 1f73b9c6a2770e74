"""The server's OpenAPI 3 description (served at ``/openapi.json``; schemathesis tests against it)."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _sampling_props(cap: int) -> dict[str, Any]:
    return {
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": cap},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 2},
        "n": {"type": "integer", "enum": [1]},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "stream": {"type": "boolean"},
        "ignore_eos": {"type": "boolean"},
        "model": {"type": "string"},
    }


def _post(summary: str, schema_ref: str, ok: dict[str, Any], extra_errors: tuple[str, ...] = ()) -> dict[str, Any]:
    responses = {"200": ok, "400": _ERROR, "401": _ERROR, "403": _ERROR, "413": _ERROR, "415": _ERROR}
    for code in extra_errors:
        responses[code] = _ERROR
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": schema_ref}}}},
            "responses": responses,
        }
    }


def openapi_spec(max_tokens_cap: int, max_body_bytes: int) -> dict[str, Any]:
    json_or_sse = {
        "description": "a completion (JSON), or SSE chunks when stream is true",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["id", "object", "choices"]}},
            "text/event-stream": {},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "edge-kto runtime",
            "version": "1",
            "description": f"OpenAI-compatible subset. Bodies over {max_body_bytes} bytes: 413; "
            f"max_tokens cap {max_tokens_cap}.",
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "liveness and model info",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {"application/json": {"schema": {"type": "object", "required": ["status"]}}},
                        }
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "the served model",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {"schema": {"type": "object", "required": ["object", "data"]}}
                            },
                        },
                        "401": _ERROR,
                    },
                }
            },
            "/v1/chat/completions": _post("chat completion", "#/components/schemas/ChatRequest", json_or_sse),
            "/v1/completions": _post("text completion", "#/components/schemas/CompletionRequest", json_or_sse),
            "/v1/feedback": _post(
                "thumbs up/down on a served completion",
                "#/components/schemas/Feedback",
                {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}},
                ("404", "409"),
            ),
        },
        "components": {
            "schemas": {
                "Message": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {"role": {"type": "string", "enum": list(ROLES)}, "content": {"type": "string"}},
                },
                "ChatRequest": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Message"}},
                        **_sampling_props(max_tokens_cap),
                    },
                },
                "CompletionRequest": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {"prompt": {"type": "string", "minLength": 1}, **_sampling_props(max_tokens_cap)},
                },
                "Feedback": {
                    "type": "object",
                    "required": ["request_id", "good"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "good": {"type": "boolean"},
                        "note": {"type": "string"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["message"]}},
                },
            }
        },
    }
