//! `puente.v1.AdminService`: directory administration for administrator certificates.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{to_wire, AgencyEntry, Directory, DirectoryError};
use crate::audit;
use crate::identity::{caller_of, peer_of, Caller, Peer, Role};
use crate::pb::v1::admin_service_server::AdminService as AdminApi;
use crate::pb::v1::{
    AdminServiceListAgenciesRequest, AdminServiceListAgenciesResponse, AuditAction,
    PublishRevocationListRequest, PublishRevocationListResponse, RegisterAgencyRequest,
    RegisterAgencyResponse, UpdateAgencyRequest, UpdateAgencyResponse,
};
use crate::store::Store;
use crate::tls::CrlError;
use crate::tls::TlsState;

/// The AdminService handlers.
pub(crate) struct AdminService {
    directory: Arc<Directory>,
    tls: Arc<TlsState>,
    store: Arc<dyn Store>,
}

impl AdminService {
    /// Serves `directory`, publishes CRLs into `tls`, and records refusals and CRLs in the
    /// audit log of `store`.
    pub(crate) fn new(
        directory: Arc<Directory>,
        tls: Arc<TlsState>,
        store: Arc<dyn Store>,
    ) -> AdminService {
        AdminService {
            directory,
            tls,
            store,
        }
    }

    async fn register(
        &self,
        request: Request<RegisterAgencyRequest>,
    ) -> Result<RegisterAgencyResponse, DirectoryError> {
        let caller = require_admin(&request)?;
        let entry = AgencyEntry::try_from(request.into_inner().agency)?;
        let record = self.directory.register(entry, Some(&caller)).await?;
        info!(admin = %caller.id, agency = %record.agency_id, "agency registered");
        Ok(RegisterAgencyResponse {
            agency: Some(to_wire(&record)),
        })
    }

    async fn update(
        &self,
        request: Request<UpdateAgencyRequest>,
    ) -> Result<UpdateAgencyResponse, DirectoryError> {
        let caller = require_admin(&request)?;
        let entry = AgencyEntry::try_from(request.into_inner().agency)?;
        let record = self.directory.update(entry, Some(&caller)).await?;
        info!(admin = %caller.id, agency = %record.agency_id, status = record.status, "agency updated");
        Ok(UpdateAgencyResponse {
            agency: Some(to_wire(&record)),
        })
    }

    async fn publish(
        &self,
        request: Request<PublishRevocationListRequest>,
    ) -> Result<PublishRevocationListResponse, DirectoryError> {
        let caller = require_admin(&request)?;
        let request = request.into_inner();
        let unrevoke_reason = if request.allow_unrevoke {
            Some(check_unrevoke_reason(&request.unrevoke_reason)?)
        } else {
            None
        };
        let pem = request.crl_pem;
        let allow_unrevoke = request.allow_unrevoke;
        let tls = Arc::clone(&self.tls);
        // Verifying, persisting (fsync) and rebuilding the TLS configuration block.
        let summary =
            tokio::task::spawn_blocking(move || tls.apply_crl(pem.as_bytes(), allow_unrevoke))
                .await
                .map_err(|e| DirectoryError::Crl(CrlError::Rebuild(e.to_string())))??;
        if summary.changed {
            let mut event = audit::event(AuditAction::CrlApplied, Some(&caller));
            event.crl_number = summary.number;
            if let (Some(reason), false) = (&unrevoke_reason, summary.unrevoked.is_empty()) {
                // The serials come from the CRL that was in force, not from the request.
                event.reason = format!(
                    "allow_unrevoke: un-revoked {} certificate(s) ({}); reason: {reason}",
                    summary.unrevoked.len(),
                    summary.unrevoked.join(", ")
                );
                tracing::warn!(admin = %caller.id, unrevoked = summary.unrevoked.len(), "certificates un-revoked by an administrator");
            }
            self.store.record(vec![event.into()]).await?;
        }
        info!(admin = %caller.id, crl_number = summary.number, revoked = summary.revoked_count, "CRL published");
        Ok(PublishRevocationListResponse {
            crl_number: summary.number,
            revoked_count: u32::try_from(summary.revoked_count).unwrap_or(u32::MAX),
            next_update: summary
                .next_update
                .map(|seconds| crate::time::timestamp(seconds.saturating_mul(1_000_000))),
        })
    }
}

/// Longest reason for un-revoking, in characters.
const MAX_UNREVOKE_REASON: usize = 256;

/// The reason given with `allow_unrevoke`: required, printable, bounded.
fn check_unrevoke_reason(reason: &str) -> Result<String, DirectoryError> {
    let reason = reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_UNREVOKE_REASON
        || crate::text::check(reason, crate::text::Shape::Line).is_err()
    {
        return Err(crate::rpc::InvalidField::new(
            "unrevoke_reason",
            format!(
                "is required with allow_unrevoke: 1 to {MAX_UNREVOKE_REASON} printable characters saying why revoked certificates become valid again"
            ),
        )
        .into());
    }
    Ok(reason.to_string())
}

fn require_admin<T>(request: &Request<T>) -> Result<Arc<Caller>, DirectoryError> {
    let caller = caller_of(request)?;
    match caller.role {
        Role::Admin(_) => Ok(caller),
        Role::Agency(_) | Role::Auditor(_) => Err(DirectoryError::NotAdmin(caller.id.to_string())),
    }
}

impl AdminService {
    /// Answers `method` of `puente.v1.AdminService` (see [`crate::rpc::answer`]).
    async fn answer<T>(
        &self,
        method: &str,
        peer: Option<Peer>,
        result: Result<T, DirectoryError>,
    ) -> Result<Response<T>, Status> {
        crate::rpc::answer(
            self.store.as_ref(),
            "puente.v1.AdminService",
            method,
            peer,
            result,
        )
        .await
    }
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    #[instrument(skip(self, request))]
    async fn register_agency(
        &self,
        request: Request<RegisterAgencyRequest>,
    ) -> Result<Response<RegisterAgencyResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.register(request).await;
        self.answer("RegisterAgency", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn update_agency(
        &self,
        request: Request<UpdateAgencyRequest>,
    ) -> Result<Response<UpdateAgencyResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.update(request).await;
        self.answer("UpdateAgency", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn list_agencies(
        &self,
        request: Request<AdminServiceListAgenciesRequest>,
    ) -> Result<Response<AdminServiceListAgenciesResponse>, Status> {
        let peer = peer_of(&request);
        let result = require_admin(&request).map(|_| AdminServiceListAgenciesResponse {
            agencies: self.directory.list().iter().map(to_wire).collect(),
        });
        self.answer("ListAgencies", peer, result).await
    }

    #[instrument(skip(self, request))]
    async fn publish_revocation_list(
        &self,
        request: Request<PublishRevocationListRequest>,
    ) -> Result<Response<PublishRevocationListResponse>, Status> {
        let peer = peer_of(&request);
        let result = self.publish(request).await;
        self.answer("PublishRevocationList", peer, result).await
    }
}
