//! The gRPC edge: authentication, and mapping of errors to `tonic::Status` (in `error.rs`).

pub mod admin;
pub mod agent;

use tonic::Request;

use crate::error::{Error, Result};
use crate::ids::AgentId;
use crate::pki::peer_identity;

/// The agent a request comes from, from its verified client certificate. Expiry is checked per
/// call, because a TLS connection outlives the certificate it was opened with.
///
/// # Errors
/// No certificate, or an expired one.
pub fn agent_of<T>(req: &Request<T>) -> Result<AgentId> {
    let certs = req.peer_certs().ok_or_else(|| {
        Error::Unauthenticated("this call needs the agent's client certificate; enroll the agent first".into())
    })?;
    let leaf = certs.first().ok_or_else(|| Error::Unauthenticated("no client certificate presented".into()))?;
    let id =
        peer_identity(leaf).ok_or_else(|| Error::Unauthenticated("the client certificate names no agent".into()))?;
    if id.not_after_unix <= crate::core::now_unix() {
        return Err(Error::Unauthenticated(format!(
            "the certificate of agent {} expired; it renews automatically while it can reach the controller, otherwise enroll it again",
            id.agent_id
        )));
    }
    Ok(AgentId::new(id.agent_id))
}

/// The bearer token of a tresorctl request.
pub fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}
