//! The agency directory: who may exchange, kept durable in the store and cached in memory for
//! the per-call checks. Served to administrators by [`AdminService`](service::AdminService).

pub(crate) mod service;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::audit;
use crate::identity::{AgencyId, Caller, IdentityError};
use crate::pb::v1::{Agency, AgencyStatus, AuditAction, Region};
use crate::rpc::InvalidField;
use crate::store::records::AgencyRecord;
use crate::store::{PutMode, Store, StoreError};
use crate::time::now_micros;

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A field of the agency is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The agency id is registered already.
    #[error("agency {0} is already registered")]
    AlreadyExists(AgencyId),
    /// The agency id is not registered.
    #[error("agency {0} is not registered")]
    NotFound(AgencyId),
    /// The caller presented no usable identity.
    #[error(transparent)]
    Unauthenticated(#[from] IdentityError),
    /// The caller's role may not administer the directory.
    #[error("directory administration needs an administrator certificate (spiffe://<trust-domain>/admin/<name>); this caller is {0}")]
    NotAdmin(String),
    /// A published CRL was refused.
    #[error(transparent)]
    Crl(#[from] crate::tls::CrlError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::rpc::Refusal for DirectoryError {
    fn is_refusal(&self) -> bool {
        use crate::tls::CrlError;
        !matches!(
            self,
            DirectoryError::Store(_)
                | DirectoryError::Crl(CrlError::Persist(_) | CrlError::Rebuild(_))
        )
    }
}

impl From<DirectoryError> for tonic::Status {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Invalid(invalid) => invalid.into(),
            DirectoryError::AlreadyExists(_) => tonic::Status::already_exists(err.to_string()),
            DirectoryError::NotFound(_) => tonic::Status::not_found(err.to_string()),
            DirectoryError::Unauthenticated(e) => e.into(),
            DirectoryError::NotAdmin(_) => tonic::Status::permission_denied(err.to_string()),
            DirectoryError::Crl(e) => e.into(),
            DirectoryError::Store(e) => crate::rpc::store_failure(&e),
        }
    }
}

/// A validated directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyEntry {
    /// Its id.
    pub agency_id: AgencyId,
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// ISO 3166-1 alpha-2 country code (or `EU`, `XX`).
    pub country: String,
    /// Its region.
    pub region: Region,
    /// `None` keeps the current status on update and means ACTIVE on registration.
    pub status: Option<AgencyStatus>,
}

impl TryFrom<Option<Agency>> for AgencyEntry {
    type Error = DirectoryError;

    fn try_from(agency: Option<Agency>) -> Result<Self, Self::Error> {
        let invalid =
            |field: &str, reason: &str| DirectoryError::from(InvalidField::new(field, reason));
        let agency = agency.ok_or_else(|| invalid("agency", "is required"))?;
        let agency_id = AgencyId::parse(&agency.agency_id)
            .map_err(|e: IdentityError| invalid("agency.agency_id", &e.to_string()))?;
        let name = agency.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid("agency.name", "must be 1 to 200 characters"));
        }
        crate::text::check(&name, crate::text::Shape::Line)
            .map_err(|e| invalid("agency.name", &e.to_string()))?;
        let country = agency.country;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                "agency.country",
                "must be an ISO 3166-1 alpha-2 code in upper case, such as ES or CO",
            ));
        }
        let region = match Region::try_from(agency.region) {
            Ok(Region::Unspecified) | Err(_) => {
                return Err(invalid(
                    "agency.region",
                    "must be REGION_EU, REGION_CELAC or REGION_INTERNATIONAL",
                ))
            }
            Ok(region) => region,
        };
        let status = match AgencyStatus::try_from(agency.status) {
            Ok(AgencyStatus::Unspecified) => None,
            Ok(status) => Some(status),
            Err(_) => return Err(invalid("agency.status", "unknown status value")),
        };
        Ok(AgencyEntry {
            agency_id,
            name,
            country,
            region,
            status,
        })
    }
}

/// Converts a stored record to its wire form.
pub(crate) fn to_wire(record: &AgencyRecord) -> Agency {
    Agency {
        agency_id: record.agency_id.clone(),
        name: record.name.clone(),
        country: record.country.clone(),
        region: record.region,
        status: record.status,
    }
}

/// The directory: a write-through cache over the store's agency records.
pub struct Directory {
    store: Arc<dyn Store>,
    agencies: RwLock<BTreeMap<String, AgencyRecord>>,
    /// Serialises updates so the cache applies them in the order the store did.
    writes: tokio::sync::Mutex<()>,
    /// Bumped on every change, so open inbox streams notice a suspension at once.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Directory {
    /// Loads every agency from the store.
    ///
    /// # Errors
    /// Store errors.
    pub async fn load(store: Arc<dyn Store>) -> Result<Directory, DirectoryError> {
        let agencies = store
            .agencies()
            .await?
            .into_iter()
            .map(|record| (record.agency_id.clone(), record))
            .collect();
        Ok(Directory {
            store,
            agencies: RwLock::new(agencies),
            writes: tokio::sync::Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, AgencyRecord>> {
        self.agencies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One agency, if registered.
    pub fn get(&self, agency: &str) -> Option<AgencyRecord> {
        self.read().get(agency).cloned()
    }

    /// Every agency, ordered by id.
    pub fn list(&self) -> Vec<AgencyRecord> {
        self.read().values().cloned().collect()
    }

    /// Ids of the active agencies, of one region or of all.
    pub fn active(&self, region: Option<Region>) -> Vec<String> {
        self.read()
            .values()
            .filter(|a| a.status == AgencyStatus::Active as i32)
            .filter(|a| region.is_none_or(|r| a.region == r as i32))
            .map(|a| a.agency_id.clone())
            .collect()
    }

    /// Whether an agency is registered and active.
    pub fn is_active(&self, agency: &str) -> bool {
        self.read()
            .get(agency)
            .is_some_and(|a| a.status == AgencyStatus::Active as i32)
    }

    /// Changes whenever an agency is registered or updated.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers a new agency (ACTIVE unless a status is given).
    ///
    /// # Errors
    /// `AlreadyExists`, or store errors.
    pub async fn register(
        &self,
        entry: AgencyEntry,
        actor: Option<&Caller>,
    ) -> Result<AgencyRecord, DirectoryError> {
        let _guard = self.writes.lock().await;
        let now = now_micros();
        let record = AgencyRecord {
            agency_id: entry.agency_id.to_string(),
            name: entry.name,
            country: entry.country,
            region: entry.region as i32,
            status: entry.status.unwrap_or(AgencyStatus::Active) as i32,
            created_at_micros: now,
            updated_at_micros: now,
        };
        let mut event = audit::event(AuditAction::AgencyRegistered, actor);
        event.subject_agency = record.agency_id.clone();
        let stored = match self
            .store
            .put_agency(record, PutMode::Create, event.into())
            .await
        {
            Err(StoreError::AlreadyExists) => {
                return Err(DirectoryError::AlreadyExists(entry.agency_id))
            }
            other => other?,
        };
        self.cache(&stored);
        Ok(stored)
    }

    /// Replaces an agency's name, country, region and (if given) status.
    ///
    /// # Errors
    /// `NotFound`, or store errors.
    pub async fn update(
        &self,
        entry: AgencyEntry,
        actor: Option<&Caller>,
    ) -> Result<AgencyRecord, DirectoryError> {
        let _guard = self.writes.lock().await;
        let current = self
            .get(entry.agency_id.as_str())
            .ok_or_else(|| DirectoryError::NotFound(entry.agency_id.clone()))?;
        let record = AgencyRecord {
            agency_id: current.agency_id.clone(),
            name: entry.name,
            country: entry.country,
            region: entry.region as i32,
            status: entry.status.map_or(current.status, |s| s as i32),
            created_at_micros: current.created_at_micros,
            updated_at_micros: now_micros(),
        };
        let suspended = AgencyStatus::Suspended as i32;
        let action = match (current.status == suspended, record.status == suspended) {
            (false, true) => AuditAction::AgencySuspended,
            (true, false) => AuditAction::AgencyResumed,
            _ => AuditAction::AgencyUpdated,
        };
        let mut event = audit::event(action, actor);
        event.subject_agency = record.agency_id.clone();
        let stored = self
            .store
            .put_agency(record, PutMode::Update, event.into())
            .await?;
        self.cache(&stored);
        Ok(stored)
    }

    fn cache(&self, record: &AgencyRecord) {
        self.agencies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(record.agency_id.clone(), record.clone());
        self.changes.send_modify(|generation| *generation += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(id: &str, name: &str, country: &str, region: Region) -> Option<Agency> {
        Some(Agency {
            agency_id: id.into(),
            name: name.into(),
            country: country.into(),
            region: region as i32,
            status: 0,
        })
    }

    #[test]
    fn agency_entries_are_validated_field_by_field() {
        let cases = [
            (agency("ES-CNP", "Policía Nacional", "ES", Region::Eu), None),
            (None, Some("agency")),
            (
                agency("es", "x", "ES", Region::Eu),
                Some("agency.agency_id"),
            ),
            (agency("ES-CNP", " ", "ES", Region::Eu), Some("agency.name")),
            (
                agency("ES-CNP", "x", "ESP", Region::Eu),
                Some("agency.country"),
            ),
            (
                agency("ES-CNP", "x", "es", Region::Eu),
                Some("agency.country"),
            ),
            (
                agency("ES-CNP", "x", "ES", Region::Unspecified),
                Some("agency.region"),
            ),
        ];
        for (input, want) in cases {
            let got = AgencyEntry::try_from(input.clone()).err().map(|e| match e {
                DirectoryError::Invalid(invalid) => invalid.field,
                other => panic!("unexpected {other}"),
            });
            assert_eq!(got.as_deref(), want, "{input:?}");
        }
    }
}
