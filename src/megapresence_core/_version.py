"""The version of the megapresence distribution: the one place it is written.

``pyproject.toml`` reads it from here when a wheel or sdist is built, and every
package (``megapresence_core``, ``megapresence_anyio``, ``megapresence_nats``,
``megapresence_redis``) re-exports it as ``__version__``: they ship together.
"""

__version__ = "0.1.0"
