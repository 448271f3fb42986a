"""imagegen_server: the asyncio gRPC gateway in front of Gemini's image models."""
