"""Layer 4, transports: addresses, the peer's identity and the session rule, TCP keys, the shm carrier."""
