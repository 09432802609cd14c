"""convolab's version (bottom layer: the cache keys and the CLI read it without importing the
package's facade)."""

__version__ = "0.1.0"
