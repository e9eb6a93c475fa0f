//! RFC 3680 `application/reginfo+xml` documents: built by the notifier, read by the peer.
//! Placeholder for the pair's registration sync; see the pair issue.
