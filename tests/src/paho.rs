//! The Python `paho-mqtt` client as a peer: a venv with it, made on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::skip_or_fail;

/// The version installed into the venv.
pub const VERSION: &str = "2.1.0";

/// Held while a venv is checked or made, so that two tests of one binary do not race.
static MAKING: Mutex<()> = Mutex::new(());

/// The python of a venv with paho-mqtt under `target_tmp` (pass `env!("CARGO_TARGET_TMPDIR")`),
/// made with `python3 -m venv` and pip on first use; `None` (after [`skip_or_fail`]) without
/// python3, venv or pip.
pub fn python(target_tmp: &Path) -> Option<PathBuf> {
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = target_tmp.join("paho-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import paho.mqtt.client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("paho-mqtt=={VERSION}"),
            ])
            .status()
            .is_ok_and(|s| s.success());
    if made && ready(&python) {
        return Some(python);
    }
    skip_or_fail("python3 with venv and pip (to install paho-mqtt)");
    None
}
