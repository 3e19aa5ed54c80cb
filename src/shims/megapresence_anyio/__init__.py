"""megapresence_anyio: reserved for the anyio shim; nothing is exported yet."""
