//! Why the B2BUA refuses a new call, and the one place that says which SIP answer each
//! reason gets (RFC 3261 §21; 422 is RFC 4028 §6).

/// A reason to refuse an initial INVITE before a call exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The Request-URI has no user part to route on.
    NoUser,
    /// `calls.max_calls` calls are up.
    CallLimit,
    /// The Session-Expires asked for is below our Min-SE.
    IntervalTooBrief,
    /// The number names a user we know who has no usable registration.
    Unavailable,
    /// Nobody and nothing answers to the number.
    NotFound,
    /// The request cannot start a dialog (no From tag, no Contact...).
    CannotBuildDialog,
    /// The request lacks a header every request must have.
    Malformed,
    /// No free port pair in the media relay.
    NoMediaPorts,
    /// No B-leg INVITE could be sent.
    NoTarget,
    /// The trunk's host name has no address (yet, or any more).
    TrunkUnresolved,
}

impl Refusal {
    /// The status code.
    pub fn status(self) -> u16 {
        match self {
            Self::NoUser => 484,
            Self::CallLimit | Self::NoMediaPorts | Self::TrunkUnresolved => 503,
            Self::IntervalTooBrief => 422,
            Self::Unavailable => 480,
            Self::NotFound => 404,
            Self::CannotBuildDialog | Self::Malformed => 400,
            Self::NoTarget => 500,
        }
    }

    /// A reason phrase more telling than the standard one, where there is one.
    pub fn phrase(self) -> Option<&'static str> {
        match self {
            Self::CallLimit => Some("Call Limit Reached"),
            Self::NoMediaPorts => Some("No Media Ports"),
            Self::CannotBuildDialog => Some("Cannot Build Dialog"),
            Self::TrunkUnresolved => Some("Trunk Not Resolved"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status() {
        let all = [
            (Refusal::NoUser, 484),
            (Refusal::CallLimit, 503),
            (Refusal::IntervalTooBrief, 422),
            (Refusal::Unavailable, 480),
            (Refusal::NotFound, 404),
            (Refusal::CannotBuildDialog, 400),
            (Refusal::Malformed, 400),
            (Refusal::NoMediaPorts, 503),
            (Refusal::NoTarget, 500),
            (Refusal::TrunkUnresolved, 503),
        ];
        for (r, status) in all {
            assert_eq!(r.status(), status, "{r:?}");
            assert!((400..600).contains(&r.status()));
        }
        assert_eq!(Refusal::CallLimit.phrase(), Some("Call Limit Reached"));
        assert_eq!(Refusal::NotFound.phrase(), None);
    }
}
