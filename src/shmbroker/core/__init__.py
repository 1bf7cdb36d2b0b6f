"""Layer 1-2, the core: the C rings' Python face, shared-memory segments and names, process facts."""
