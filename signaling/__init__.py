"""The control plane: REST API, event WebSocket, WHIP and WHEP, serving web/."""
