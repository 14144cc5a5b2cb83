//! Who a certificate says its holder is.

use std::fmt;

use crate::PkiError;

/// Controllers' group, beside their `berth:controller:ID` names.
pub const CONTROLLERS_GROUP: &str = "berth:controllers";
/// Nodes' group, as in Kubernetes.
pub const NODES_GROUP: &str = "system:nodes";

const CONTROLLER_PREFIX: &str = "berth:controller:";
const NODE_PREFIX: &str = "system:node:";

/// The holder of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Controller ID of the cluster: Raft, the store and membership are
    /// for controllers alone.
    Controller(u64),
    /// Node NAME's agent.
    Node(String),
    /// A person or program, with the groups RBAC binds.
    User { name: String, groups: Vec<String> },
}

impl Identity {
    /// The user name RBAC and the audit log see.
    pub fn name(&self) -> String {
        match self {
            Identity::Controller(id) => format!("{CONTROLLER_PREFIX}{id}"),
            Identity::Node(name) => format!("{NODE_PREFIX}{name}"),
            Identity::User { name, .. } => name.clone(),
        }
    }

    pub fn groups(&self) -> Vec<String> {
        match self {
            Identity::Controller(_) => vec![CONTROLLERS_GROUP.into()],
            Identity::Node(_) => vec![NODES_GROUP.into()],
            Identity::User { groups, .. } => groups.clone(),
        }
    }

    /// Reads an identity back from a subject's common name and
    /// organizations. A name in a reserved form (controller, node) must
    /// come with its group, so that neither is claimed by half.
    pub fn from_subject(common_name: &str, groups: Vec<String>) -> Result<Self, PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::Identity("its subject has no common name".into()));
        }
        if let Some(id) = common_name.strip_prefix(CONTROLLER_PREFIX) {
            let id = id.parse().map_err(|_| {
                PkiError::Identity(format!("{common_name:?} has no numeric controller id"))
            })?;
            return match groups.as_slice() {
                [g] if g == CONTROLLERS_GROUP => Ok(Identity::Controller(id)),
                _ => Err(reserved(common_name, CONTROLLERS_GROUP)),
            };
        }
        if let Some(node) = common_name.strip_prefix(NODE_PREFIX) {
            return match groups.as_slice() {
                [g] if g == NODES_GROUP && !node.is_empty() => Ok(Identity::Node(node.into())),
                _ => Err(reserved(common_name, NODES_GROUP)),
            };
        }
        if groups
            .iter()
            .any(|g| g == CONTROLLERS_GROUP || g == NODES_GROUP)
        {
            return Err(PkiError::Identity(format!(
                "user {common_name:?} claims a controllers' or nodes' group"
            )));
        }
        Ok(Identity::User {
            name: common_name.into(),
            groups,
        })
    }
}

fn reserved(common_name: &str, group: &str) -> PkiError {
    PkiError::Identity(format!(
        "{common_name:?} is a reserved name that needs group {group} alone"
    ))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How a certificate lists its holder's groups: one subject alternative
/// name `urn:berth:group:GROUP` each (an X.509 subject holds one
/// organization per name in the issuing library, and a user may be in
/// several groups).
pub(crate) const GROUP_URN: &str = "urn:berth:group:";

/// The identity in a peer's certificate (DER), as a TLS server or client
/// that verified the certificate's chain hands it over.
pub fn peer_identity(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    let subject = cert.subject();
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str()
            .map(str::to_string)
            .map_err(|e| PkiError::Certificate(format!("a subject name is not text: {e}")))
    };
    let mut common_names = subject.iter_common_name();
    let common_name = match (common_names.next(), common_names.next()) {
        (Some(cn), None) => text(cn)?,
        (None, _) => return Err(PkiError::Identity("its subject has no common name".into())),
        (Some(_), Some(_)) => {
            return Err(PkiError::Identity(
                "its subject has more than one common name".into(),
            ))
        }
    };
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Certificate(format!("its alternative names: {e}")))?;
    let groups = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(GROUP_URN),
            _ => None,
        })
        .map(str::to_string)
        .collect();
    Identity::from_subject(&common_name, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_need_their_group_and_users_cannot_claim_it() {
        let controller =
            Identity::from_subject("berth:controller:3", vec![CONTROLLERS_GROUP.into()]);
        assert_eq!(controller.unwrap(), Identity::Controller(3));
        let node = Identity::from_subject("system:node:n1", vec![NODES_GROUP.into()]);
        assert_eq!(node.unwrap(), Identity::Node("n1".into()));
        assert!(Identity::from_subject("berth:controller:3", vec![]).is_err());
        assert!(
            Identity::from_subject("berth:controller:x", vec![CONTROLLERS_GROUP.into()]).is_err()
        );
        assert!(Identity::from_subject("system:node:n1", vec!["system:masters".into()]).is_err());
        assert!(Identity::from_subject("system:node:", vec![NODES_GROUP.into()]).is_err());
        assert!(Identity::from_subject("mallory", vec![NODES_GROUP.into()]).is_err());
        assert!(Identity::from_subject("", vec![]).is_err());
        let alice = Identity::from_subject("alice", vec!["dev".into()]).unwrap();
        assert_eq!(
            (alice.name(), alice.groups()),
            ("alice".into(), vec!["dev".into()])
        );
    }
}
