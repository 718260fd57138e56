//! `puente.v1.AdminService`: directory administration for administrator certificates.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{to_wire, AgencyEntry, Directory, DirectoryError};
use crate::identity::{caller_of, Caller, Role};
use crate::pb::v1::admin_service_server::AdminService as AdminApi;
use crate::pb::v1::{
    AdminServiceListAgenciesRequest, AdminServiceListAgenciesResponse, RegisterAgencyRequest,
    RegisterAgencyResponse, UpdateAgencyRequest, UpdateAgencyResponse,
};

/// The AdminService handlers.
pub struct AdminService {
    directory: Arc<Directory>,
}

impl AdminService {
    /// Serves `directory`.
    pub fn new(directory: Arc<Directory>) -> AdminService {
        AdminService { directory }
    }
}

fn require_admin<T>(request: &Request<T>) -> Result<Arc<Caller>, DirectoryError> {
    let caller = caller_of(request)?;
    match caller.role {
        Role::Admin(_) => Ok(caller),
        Role::Agency(_) | Role::Auditor(_) => Err(DirectoryError::NotAdmin(caller.id.to_string())),
    }
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    #[instrument(skip(self, request))]
    async fn register_agency(
        &self,
        request: Request<RegisterAgencyRequest>,
    ) -> Result<Response<RegisterAgencyResponse>, Status> {
        let caller = require_admin(&request)?;
        let entry = AgencyEntry::try_from(request.into_inner().agency)?;
        let record = self.directory.register(entry).await?;
        info!(admin = %caller.id, agency = %record.agency_id, "agency registered");
        Ok(Response::new(RegisterAgencyResponse {
            agency: Some(to_wire(&record)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_agency(
        &self,
        request: Request<UpdateAgencyRequest>,
    ) -> Result<Response<UpdateAgencyResponse>, Status> {
        let caller = require_admin(&request)?;
        let entry = AgencyEntry::try_from(request.into_inner().agency)?;
        let record = self.directory.update(entry).await?;
        info!(admin = %caller.id, agency = %record.agency_id, status = record.status, "agency updated");
        Ok(Response::new(UpdateAgencyResponse {
            agency: Some(to_wire(&record)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_agencies(
        &self,
        request: Request<AdminServiceListAgenciesRequest>,
    ) -> Result<Response<AdminServiceListAgenciesResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(AdminServiceListAgenciesResponse {
            agencies: self.directory.list().iter().map(to_wire).collect(),
        }))
    }
}
