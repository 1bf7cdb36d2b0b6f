"""Layer 5, the framework: Server and its loop, sessions, messages, the client side, services' interface."""
