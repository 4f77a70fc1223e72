//! Async MQTT client on smol.
