"""Anthropic's Messages API: read (`request`), passed through to deployments that speak it
(`native`), or translated to chat completions (`to_chat`) and back (`from_chat` for a whole
reply, `chat_stream` for a stream), with the event stream written by `events`."""
