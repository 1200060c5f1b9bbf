"""Running under systemd: sd_notify/watchdog (`notify`) and installing the units (`install`)."""

from edge.service.notify import Notifier, Watchdog, watchdog_timeout_s

__all__ = ["Notifier", "Watchdog", "watchdog_timeout_s"]
