//! no_std MQTT client on embassy.
#![no_std]
