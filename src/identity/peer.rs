//! What the server attaches to every request of a connection: the caller, its address, the
//! revocations in force and the connection's admission state; and how handlers read it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Caller, IdentityError, Revocations};
use crate::admission::connections::Activity;
use crate::admission::records::AuditBudget;

/// What the server attaches to every request of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The caller, or why its certificate does not name one.
    pub caller: Result<Arc<Caller>, IdentityError>,
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The revocations in force, checked on every call of the connection.
    pub revocations: Arc<Revocations>,
    /// The calls open on the connection, for its idle timeout.
    pub activity: Arc<Activity>,
    /// The server's per-caller budget of audited calls.
    pub audit_budget: Arc<AuditBudget>,
}

/// The caller of a request, as attached by the server to its connection.
///
/// # Errors
/// `IdentityError::NoCertificate` when the request came over no authenticated connection, the
/// error found when the connection's certificate was parsed, or `Revoked` when its certificate
/// has been revoked since.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Arc<Caller>, IdentityError> {
    let peer = request
        .extensions()
        .get::<Peer>()
        .ok_or(IdentityError::NoCertificate)?;
    let caller = peer.caller.clone()?;
    if peer.revocations.is_revoked(&caller.serial) {
        return Err(IdentityError::Revoked);
    }
    Ok(caller)
}

/// The connection a request came over, for audit records of refused calls.
pub fn peer_of<T>(request: &tonic::Request<T>) -> Option<Peer> {
    request.extensions().get::<Peer>().cloned()
}
