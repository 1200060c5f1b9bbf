"""Fleet updates: signed bundles, desired state over MQTT, the device agent and the operator's tools."""
