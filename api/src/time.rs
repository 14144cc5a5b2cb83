//! Timestamps as the API writes them: RFC 3339 in UTC, to the second, as
//! Kubernetes' `metav1.Time` is.

use std::time::SystemTime;

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
