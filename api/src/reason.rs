//! Why a call failed, in a form clients match on instead of message text.
//!
//! Every error the API server can give for a user's request carries one
//! `Reason` in the gRPC status details, as a `google.rpc.ErrorInfo` (domain
//! [`DOMAIN`], reason in `UPPER_SNAKE_CASE`, AIP-193's shape), so a client in
//! any language reads it with its gRPC library's rich-error support. The
//! message stays for people: it says what was wrong and what to do.

use tonic::Code;
use tonic::Status;
use tonic_types::ErrorDetails;
use tonic_types::StatusExt;

/// The `ErrorInfo.domain` of Berth's reasons.
pub const DOMAIN: &str = "berth.dev";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The object named in the request does not exist.
    NotFound,
    /// The namespace the object belongs in does not exist.
    NamespaceNotFound,
    /// The namespace is being deleted: nothing new may be created in it.
    NamespaceTerminating,
    /// An object of that kind and name exists already.
    AlreadyExists,
    /// A resourceVersion precondition did not hold: re-read and retry.
    Conflict,
    /// The object or request is not valid; the message names the fields.
    Invalid,
    /// The state machine refused a bind (pod bound, node full, stale epoch).
    BindRefused,
    /// The address asked for (a ClusterIP) is held by another object.
    AddressTaken,
    /// The request or object is larger than the server takes.
    TooLarge,
    /// No address is free in the range the controllers were given.
    AddressesExhausted,
    /// The object is built in and may not be deleted (`default`).
    Protected,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::NotFound,
        Reason::NamespaceNotFound,
        Reason::NamespaceTerminating,
        Reason::AlreadyExists,
        Reason::Conflict,
        Reason::Invalid,
        Reason::BindRefused,
        Reason::AddressTaken,
        Reason::TooLarge,
        Reason::AddressesExhausted,
        Reason::Protected,
    ];

    /// The name carried in `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NOT_FOUND",
            Reason::NamespaceNotFound => "NAMESPACE_NOT_FOUND",
            Reason::NamespaceTerminating => "NAMESPACE_TERMINATING",
            Reason::AlreadyExists => "ALREADY_EXISTS",
            Reason::Conflict => "CONFLICT",
            Reason::Invalid => "INVALID",
            Reason::BindRefused => "BIND_REFUSED",
            Reason::AddressTaken => "ADDRESS_TAKEN",
            Reason::TooLarge => "TOO_LARGE",
            Reason::AddressesExhausted => "ADDRESSES_EXHAUSTED",
            Reason::Protected => "PROTECTED",
        }
    }

    pub fn parse(name: &str) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    /// The gRPC code a status with this reason has.
    pub fn code(self) -> Code {
        match self {
            Reason::NotFound | Reason::NamespaceNotFound => Code::NotFound,
            Reason::AlreadyExists | Reason::AddressTaken => Code::AlreadyExists,
            Reason::Conflict => Code::Aborted,
            Reason::Invalid => Code::InvalidArgument,
            Reason::NamespaceTerminating | Reason::BindRefused | Reason::Protected => {
                Code::FailedPrecondition
            }
            Reason::TooLarge | Reason::AddressesExhausted => Code::ResourceExhausted,
        }
    }

    /// A status of this reason's code with `message` for people and the
    /// reason in its details.
    pub fn status(self, message: impl Into<String>) -> Status {
        let details =
            ErrorDetails::with_error_info(self.as_str(), DOMAIN, std::collections::HashMap::new());
        Status::with_error_details(self.code(), message, details)
    }

    /// The reason a status carries; None for statuses without one (from
    /// another server, or failures below the API such as no quorum).
    pub fn of(status: &Status) -> Option<Reason> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        Reason::parse(&info.reason)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_survives_the_wire_and_keeps_its_code() {
        for &r in Reason::ALL {
            let sent = r.status(format!("{r} happened"));
            // What a client receives: the status rebuilt from its headers.
            let mut headers = tonic::metadata::MetadataMap::new().into_headers();
            sent.add_header(&mut headers).unwrap();
            let received = Status::from_header_map(&headers).expect("a status in the headers");
            assert_eq!(received.code(), r.code(), "{r}");
            assert_eq!(Reason::of(&received), Some(r));
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn a_status_without_details_or_from_another_domain_has_no_reason() {
        assert_eq!(
            Reason::of(&Status::not_found("namespace \"x\" not found")),
            None
        );
        let other = Status::with_error_details(
            Code::NotFound,
            "x",
            ErrorDetails::with_error_info(
                "NOT_FOUND",
                "example.com",
                std::collections::HashMap::new(),
            ),
        );
        assert_eq!(Reason::of(&other), None);
    }
}
