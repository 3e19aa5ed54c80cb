"""megapresence_redis: reserved for the redis shim; nothing is exported yet."""
