"""A deterministic OpenAI-compatible model: request checks, generation, and its HTTP shape."""
