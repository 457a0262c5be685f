"""The HTTP facade (aiohttp): JSON API, WebSocket stream, health, debug, OpenAPI, metrics."""
