"""Device configuration: typed models and the TOML loader."""

from edge.config.loader import ConfigError, effective_config, load_config
from edge.config.models import SecretRef, SensorConfig

__all__ = ["ConfigError", "SecretRef", "SensorConfig", "effective_config", "load_config"]
