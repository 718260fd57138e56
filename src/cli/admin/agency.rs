//! `puente admin agency`: registers, changes, suspends, resumes and lists the agencies of the
//! directory over `AdminService`.

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, ValueEnum};
use tonic::transport::Channel;
use tonic::Code;

use super::country_code;
use crate::cli::{print_agencies, rpc_error_with_hint, ConnectArgs};
use crate::identity::AgencyId;
use crate::pb::v1::admin_service_client::AdminServiceClient;
use crate::pb::v1::{
    AdminServiceListAgenciesRequest, Agency, AgencyStatus, Region, RegisterAgencyRequest,
    UpdateAgencyRequest,
};

/// Region of an agency, as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum RegionArg {
    /// A European Union member state or EU body.
    Eu,
    /// A Latin American or Caribbean state.
    Celac,
    /// An international organisation.
    International,
}

impl From<RegionArg> for Region {
    fn from(region: RegionArg) -> Region {
        match region {
            RegionArg::Eu => Region::Eu,
            RegionArg::Celac => Region::Celac,
            RegionArg::International => Region::International,
        }
    }
}

/// Flags of `puente admin agency add`.
#[derive(Debug, Args)]
pub(super) struct AgencyAddArgs {
    /// Agency id: 2 to 32 of A-Z, 0-9 and '-', country code first (ES-CNP).
    #[arg(long, value_parser = AgencyId::parse)]
    id: AgencyId,
    /// Full name.
    #[arg(long)]
    name: String,
    /// ISO 3166-1 alpha-2 country code (ES, CO); XX for an international organisation.
    #[arg(long, value_parser = country_code)]
    country: String,
    /// Region whose recipients (`region:EU`...) include the agency.
    #[arg(long, value_enum)]
    region: RegionArg,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `puente admin agency update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["name", "country", "region"])))]
pub(super) struct AgencyUpdateArgs {
    /// The agency to change.
    #[arg(long, value_parser = AgencyId::parse)]
    id: AgencyId,
    /// New full name.
    #[arg(long)]
    name: Option<String>,
    /// New ISO 3166-1 alpha-2 country code.
    #[arg(long, value_parser = country_code)]
    country: Option<String>,
    /// New region.
    #[arg(long, value_enum)]
    region: Option<RegionArg>,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `puente admin agency suspend` and `resume`.
#[derive(Debug, Args)]
pub(super) struct AgencyIdArgs {
    /// The agency id.
    #[arg(value_parser = AgencyId::parse)]
    id: AgencyId,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `puente admin agency list`.
#[derive(Debug, Args)]
pub(super) struct AgencyListArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

// === Agencies ===

pub(super) async fn admin_client(
    connect: &ConnectArgs,
) -> anyhow::Result<AdminServiceClient<Channel>> {
    if connect.profile.is_none()
        && (connect.cert.is_none() || connect.key.is_none() || connect.ca.is_none())
    {
        bail!("say which administrator you are: --profile admin after `puente serve --dev`, or --addr, --cert, --key and --ca with a certificate from `puente admin cert issue --admin NAME`");
    }
    Ok(AdminServiceClient::new(connect.connect().await?))
}

/// Turns a gRPC error of AdminService into a message for the terminal.
pub(super) fn admin_rpc_error(status: tonic::Status) -> anyhow::Error {
    let hint = matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated).then_some(
        "this needs an administrator's certificate: --profile admin after `puente serve --dev`, or --cert/--key issued by `puente admin cert issue --admin NAME`",
    );
    rpc_error_with_hint(status, hint)
}

/// The directory's record of agency `id`.
pub(super) async fn current_agency(
    client: &mut AdminServiceClient<Channel>,
    id: &AgencyId,
) -> anyhow::Result<Agency> {
    client
        .list_agencies(AdminServiceListAgenciesRequest {})
        .await
        .map_err(admin_rpc_error)?
        .into_inner()
        .agencies
        .into_iter()
        .find(|agency| agency.agency_id == id.as_str())
        .with_context(|| {
            format!("agency {id} is not registered (see `puente admin agency list`; register it with `puente admin agency add`)")
        })
}

pub(super) async fn update(
    client: &mut AdminServiceClient<Channel>,
    agency: Agency,
) -> anyhow::Result<Agency> {
    client
        .update_agency(UpdateAgencyRequest {
            agency: Some(agency),
        })
        .await
        .map_err(admin_rpc_error)?
        .into_inner()
        .agency
        .context("the exchange answered without the agency")
}

pub(super) async fn agency_add(args: AgencyAddArgs) -> anyhow::Result<()> {
    let mut client = admin_client(&args.connect).await?;
    let agency = client
        .register_agency(RegisterAgencyRequest {
            agency: Some(Agency {
                agency_id: args.id.to_string(),
                name: args.name,
                country: args.country,
                region: Region::from(args.region) as i32,
                status: AgencyStatus::Unspecified as i32,
            }),
        })
        .await
        .map_err(|status| {
            if status.code() == Code::AlreadyExists {
                anyhow::anyhow!(
                    "agency {} is already registered; change it with `puente admin agency update --id {}`",
                    args.id,
                    args.id
                )
            } else {
                admin_rpc_error(status)
            }
        })?
        .into_inner()
        .agency
        .context("the exchange answered without the agency")?;
    print_agencies(&[agency]);
    Ok(())
}

pub(super) async fn agency_update(args: AgencyUpdateArgs) -> anyhow::Result<()> {
    let mut client = admin_client(&args.connect).await?;
    let mut agency = current_agency(&mut client, &args.id).await?;
    if let Some(name) = args.name {
        agency.name = name;
    }
    if let Some(country) = args.country {
        agency.country = country;
    }
    if let Some(region) = args.region {
        agency.region = Region::from(region) as i32;
    }
    // UNSPECIFIED keeps the status, so a concurrent suspend is not undone.
    agency.status = AgencyStatus::Unspecified as i32;
    let agency = update(&mut client, agency).await?;
    print_agencies(&[agency]);
    Ok(())
}

pub(super) async fn agency_set_status(
    args: AgencyIdArgs,
    status: AgencyStatus,
) -> anyhow::Result<()> {
    let mut client = admin_client(&args.connect).await?;
    let mut agency = current_agency(&mut client, &args.id).await?;
    let word = match status {
        AgencyStatus::Suspended => "suspended",
        AgencyStatus::Active | AgencyStatus::Unspecified => "active",
    };
    if agency.status == status as i32 {
        println!("{} is already {word}", args.id);
        return Ok(());
    }
    agency.status = status as i32;
    let agency = update(&mut client, agency).await?;
    print_agencies(&[agency]);
    if status == AgencyStatus::Suspended {
        eprintln!(
            "{} is suspended: its systems are refused until `puente admin agency resume {}`",
            args.id, args.id
        );
    }
    Ok(())
}

pub(super) async fn agency_list(args: AgencyListArgs) -> anyhow::Result<()> {
    let agencies = admin_client(&args.connect)
        .await?
        .list_agencies(AdminServiceListAgenciesRequest {})
        .await
        .map_err(admin_rpc_error)?
        .into_inner()
        .agencies;
    print_agencies(&agencies);
    Ok(())
}
