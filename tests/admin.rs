//! AdminService: registering, updating and listing the agencies of the directory.

mod common;

use common::*;
use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::{
    AdminServiceListAgenciesRequest, Agency, AgencyStatus, ListAgenciesRequest, Region,
    RegisterAgencyRequest, UpdateAgencyRequest,
};
use tonic::transport::Channel;
use tonic::Code;

type Admin = AdminServiceClient<Channel>;

fn agency(id: &str, name: &str, country: &str, region: Region) -> Agency {
    Agency {
        agency_id: id.into(),
        name: name.into(),
        country: country.into(),
        region: region as i32,
        status: AgencyStatus::Unspecified as i32,
    }
}

fn policia() -> Agency {
    agency("ES-CNP", "Policía Nacional", "ES", Region::Eu)
}

fn dijin() -> Agency {
    agency(
        "CO-DIJIN",
        "Dirección de Investigación Criminal e INTERPOL",
        "CO",
        Region::Celac,
    )
}

async fn register(admin: &mut Admin, agency: Agency) -> Result<Agency, tonic::Status> {
    admin
        .register_agency(RegisterAgencyRequest {
            agency: Some(agency),
        })
        .await
        .map(|r| r.into_inner().agency.expect("agency"))
}

async fn update(admin: &mut Admin, agency: Agency) -> Result<Agency, tonic::Status> {
    admin
        .update_agency(UpdateAgencyRequest {
            agency: Some(agency),
        })
        .await
        .map(|r| r.into_inner().agency.expect("agency"))
}

async fn list(admin: &mut Admin) -> Vec<Agency> {
    admin
        .list_agencies(AdminServiceListAgenciesRequest {})
        .await
        .expect("ListAgencies")
        .into_inner()
        .agencies
}

fn active(mut agency: Agency) -> Agency {
    agency.status = AgencyStatus::Active as i32;
    agency
}

/// Registered agencies are listed in id order (unspecified status stored as ACTIVE, an explicit one
/// kept), and agencies see the same directory.
#[tokio::test]
async fn registered_agencies_are_listed_in_id_order() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    assert_eq!(list(&mut admin).await, []);

    let stored = register(&mut admin, policia())
        .await
        .expect("register ES-CNP");
    assert_eq!(
        stored,
        active(policia()),
        "UNSPECIFIED status registers as ACTIVE"
    );
    register(&mut admin, dijin())
        .await
        .expect("register CO-DIJIN");
    let mut unodc = agency("INT-UNODC", "UNODC", "XX", Region::International);
    unodc.status = AgencyStatus::Suspended as i32;
    assert_eq!(
        register(&mut admin, unodc.clone())
            .await
            .expect("register INT-UNODC"),
        unodc,
        "an explicit status is kept"
    );

    assert_eq!(
        list(&mut admin).await,
        [active(dijin()), active(policia()), unodc.clone()]
    );
    // Agencies see the same directory.
    let mut client = pki.agency_client("ES-CNP", server.addr).await;
    let seen = client
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("agency ListAgencies")
        .into_inner()
        .agencies;
    assert_eq!(seen, [active(dijin()), active(policia()), unodc]);
}

/// Registering an agency id a second time is ALREADY_EXISTS and leaves the first registration as it
/// was.
#[tokio::test]
async fn registering_an_existing_agency_is_already_exists() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    register(&mut admin, policia())
        .await
        .expect("first registration");
    let mut again = policia();
    again.name = "Another name".into();
    assert_code(register(&mut admin, again).await, Code::AlreadyExists);
    assert_eq!(
        list(&mut admin).await,
        [active(policia())],
        "the original is kept"
    );
}

/// Updating an agency that was never registered is NOT_FOUND.
#[tokio::test]
async fn updating_an_unknown_agency_is_not_found() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    assert_code(update(&mut admin, policia()).await, Code::NotFound);
    assert_eq!(list(&mut admin).await, [], "an update does not create");
}

/// Every invalid agency field is INVALID_ARGUMENT naming that field, on registration and on update
/// alike.
#[tokio::test]
async fn invalid_agency_fields_are_invalid_argument() {
    let cases: Vec<(&str, Option<Agency>)> = vec![
        ("agency", None),
        (
            "agency.agency_id",
            Some(agency("es-cnp", "Policía Nacional", "ES", Region::Eu)),
        ),
        (
            "agency.agency_id",
            Some(agency("E", "Policía Nacional", "ES", Region::Eu)),
        ),
        (
            "agency.name",
            Some(agency("ES-CNP", "  ", "ES", Region::Eu)),
        ),
        (
            "agency.name",
            Some(agency("ES-CNP", &"n".repeat(201), "ES", Region::Eu)),
        ),
        (
            "agency.country",
            Some(agency("ES-CNP", "Policía Nacional", "ESP", Region::Eu)),
        ),
        (
            "agency.country",
            Some(agency("ES-CNP", "Policía Nacional", "es", Region::Eu)),
        ),
        (
            "agency.region",
            Some(agency(
                "ES-CNP",
                "Policía Nacional",
                "ES",
                Region::Unspecified,
            )),
        ),
        (
            "agency.status",
            Some(Agency {
                status: 99,
                ..policia()
            }),
        ),
    ];
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    register(&mut admin, dijin())
        .await
        .expect("register CO-DIJIN");
    for (field, input) in cases {
        let result = admin
            .register_agency(RegisterAgencyRequest {
                agency: input.clone(),
            })
            .await;
        assert_bad_field(result, field);
        // The same rules apply to updates (CO-DIJIN exists, so only the field is wrong).
        let input = input.map(|a| Agency {
            agency_id: if a.agency_id == "ES-CNP" {
                "CO-DIJIN".into()
            } else {
                a.agency_id
            },
            ..a
        });
        let result = admin
            .update_agency(UpdateAgencyRequest { agency: input })
            .await;
        assert_bad_field(result, field);
    }
    assert_eq!(list(&mut admin).await, [active(dijin())], "nothing changed");
}

/// An update that leaves the status unspecified keeps a suspension (the agency stays refused) until
/// reactivated.
#[tokio::test]
async fn update_with_unspecified_status_keeps_the_status() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    register(&mut admin, policia()).await.expect("register");

    let mut suspended = policia();
    suspended.status = AgencyStatus::Suspended as i32;
    assert_eq!(
        update(&mut admin, suspended.clone())
            .await
            .expect("suspend"),
        suspended
    );

    let renamed = Agency {
        name: "Policía Nacional de España".into(),
        status: AgencyStatus::Unspecified as i32,
        ..policia()
    };
    let stored = update(&mut admin, renamed.clone()).await.expect("rename");
    assert_eq!(
        stored,
        Agency {
            status: AgencyStatus::Suspended as i32,
            ..renamed.clone()
        }
    );
    assert_eq!(list(&mut admin).await, [stored]);

    // And the agency is still refused.
    let mut client = pki.agency_client("ES-CNP", server.addr).await;
    assert_code(
        client.list_agencies(ListAgenciesRequest {}).await,
        Code::PermissionDenied,
    );

    // Reactivating restores access.
    update(&mut admin, active(renamed))
        .await
        .expect("reactivate");
    client
        .list_agencies(ListAgenciesRequest {})
        .await
        .expect("reactivated agency may call");
}

/// An update replaces an agency's name, country and region.
#[tokio::test]
async fn update_replaces_name_country_and_region() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut admin = pki.admin_client("root", server.addr).await;
    register(
        &mut admin,
        agency("EU-EUROPOL", "Europol", "NL", Region::Eu),
    )
    .await
    .expect("register");
    let moved = agency(
        "EU-EUROPOL",
        "European Union Agency for Law Enforcement Cooperation",
        "XX",
        Region::International,
    );
    let stored = update(&mut admin, moved.clone()).await.expect("update");
    assert_eq!(stored, active(moved));
    assert_eq!(list(&mut admin).await, [stored]);
}

/// Any administrator identity, not only `root`, may register agencies, and all see the same
/// directory.
#[tokio::test]
async fn any_administrator_may_manage_the_directory() {
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let mut root = pki.admin_client("root", server.addr).await;
    let mut other = pki.admin_client("operator-2", server.addr).await;
    register(&mut root, policia())
        .await
        .expect("root registers");
    register(&mut other, dijin())
        .await
        .expect("another admin registers");
    assert_eq!(list(&mut root).await, list(&mut other).await);
}
