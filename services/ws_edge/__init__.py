"""The WebSocket edge: authenticates clients and pushes them their events."""
