"""The upstream Gemini REST client: request building, response and failure parsing, SSE."""
