//! The health report: `application/health+json` as the IETF health-check draft
//! (draft-inadarei-api-health-check) shapes it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

/// The outcome of a check, or of the whole report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern (e.g. a queue filling up): still answered with 200.
    Warn,
    /// Unhealthy: answered with 503.
    Fail,
}

impl Status {
    /// The HTTP status `GET /health` answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Status::Pass | Status::Warn => 200,
            Status::Fail => 503,
        }
    }
}

/// One measurement of one component (an entry of the draft's `checks` arrays).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// This measurement's outcome.
    pub status: Status,
    /// `"component"` or `"system"` or `"datastore"`, as the draft names them.
    pub component_type: &'static str,
    /// Which instance, when a component has several (e.g. a listener's URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    /// The value measured.
    pub observed_value: Value,
    /// Its unit (`"s"`, `"percent"`, `"messages"`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<&'static str>,
    /// When the measured state began (RFC 3339), e.g. since when the client is connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// A sentence for humans, set when the status is not `pass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Check {
    /// A check of a component with this status and observed value.
    pub fn new(status: Status, observed_value: impl Into<Value>) -> Check {
        Check {
            status,
            component_type: "component",
            component_id: None,
            observed_value: observed_value.into(),
            observed_unit: None,
            time: None,
            output: None,
        }
    }

    /// The same check with a unit.
    pub fn unit(mut self, unit: &'static str) -> Check {
        self.observed_unit = Some(unit);
        self
    }

    /// The same check with an explanation.
    pub fn output(mut self, output: impl Into<String>) -> Check {
        self.output = Some(output.into());
        self
    }

    /// The same check naming its component type.
    pub fn of_type(mut self, component_type: &'static str) -> Check {
        self.component_type = component_type;
        self
    }

    /// The same check naming which instance it measured.
    pub fn id(mut self, id: impl Into<String>) -> Check {
        self.component_id = Some(id.into());
        self
    }

    /// The same check with the moment its state began.
    pub fn since(mut self, at: SystemTime) -> Check {
        self.time = Some(humantime::format_rfc3339_seconds(at).to_string());
        self
    }
}

/// A health report: the overall status and the checks behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The worst status of the checks (or what the report was made with).
    pub status: Status,
    /// What reports (e.g. `"mqtt-client"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// The checks, by `"component:measurement"` name.
    pub checks: BTreeMap<String, Vec<Check>>,
}

impl Health {
    /// A report with this status and no checks yet.
    pub fn new(status: Status) -> Health {
        Health {
            status,
            service_id: None,
            checks: BTreeMap::new(),
        }
    }

    /// Adds a check under `name` (`"component:measurement"`); the overall status becomes the
    /// worse of the two.
    pub fn check(&mut self, name: &str, check: Check) {
        self.status = self.status.max(check.status);
        self.checks.entry(name.into()).or_default().push(check);
    }

    /// The report as `application/health+json`.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from(r#"{"status":"fail"}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_check_decides_and_json_has_the_drafts_names() {
        let mut h = Health::new(Status::Pass);
        h.check("queue:depth", Check::new(Status::Warn, 90).unit("messages"));
        assert_eq!(h.status, Status::Warn);
        h.check("broker:connection", Check::new(Status::Pass, true));
        assert_eq!(h.status, Status::Warn, "a pass does not hide a warn");
        h.check(
            "broker:connection",
            Check::new(Status::Fail, false).output("down"),
        );
        assert_eq!(h.status, Status::Fail);
        let v: Value = serde_json::from_str(&h.to_json()).expect("json");
        assert_eq!(v["status"], "fail");
        assert_eq!(v["checks"]["queue:depth"][0]["observedValue"], 90);
        assert_eq!(v["checks"]["queue:depth"][0]["observedUnit"], "messages");
        assert_eq!(v["checks"]["broker:connection"][1]["output"], "down");
        assert_eq!(Status::Warn.http_status(), 200);
        assert_eq!(Status::Fail.http_status(), 503);
    }
}
