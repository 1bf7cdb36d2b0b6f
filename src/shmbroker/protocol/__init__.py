"""Layer 3, the protocol (sans-IO): frames and state machines, handles, the reserved function codes."""
