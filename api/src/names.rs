//! What names may be, and the names Berth itself gives: DNS-1123 labels
//! and subdomains for objects, Kubernetes' qualified names for label keys,
//! and the namespaces every cluster has.

/// Where Berth's own objects live: leases of nodes, the scheduler and the
/// reconcilers.
pub const SYSTEM_NAMESPACE: &str = "berth-system";
/// Where namespaced objects go when a request names no namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The lease a node's agent renews, in SYSTEM_NAMESPACE.
pub fn node_lease_name(node: &str) -> String {
    format!("node-{node}")
}

/// Namespaces created at startup that cannot be deleted.
pub const BUILTIN_NAMESPACES: &[&str] = &[DEFAULT_NAMESPACE, SYSTEM_NAMESPACE];

const DNS_LABEL_MAX: usize = 63;
pub const DNS_SUBDOMAIN_MAX: usize = 253;

fn is_dns_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 label: the name of a namespace, a service, a container.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= DNS_LABEL_MAX && is_dns_label_chars(s)
}

/// A DNS-1123 subdomain: the name of most objects.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= DNS_SUBDOMAIN_MAX && s.split('.').all(is_dns_label_chars)
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `[prefix/]name` as used for label and annotation keys.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}
