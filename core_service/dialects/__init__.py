"""The API dialects Kyma speaks to clients, each read, passed through or translated here:
OpenAI's chat completions (`chat`), OpenAI's Responses API (`responses/`) and Anthropic's
Messages API (`messages/`). A translation is one small module per direction; the pipeline
sees only the protocols of `core_service.inference.dialect`."""
