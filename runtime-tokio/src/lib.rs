//! Async MQTT client on tokio.
