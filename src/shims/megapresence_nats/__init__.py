"""megapresence_nats: reserved for the nats shim; nothing is exported yet."""
