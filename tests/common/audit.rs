//! Checking the audit log as an auditor does: signed checkpoints and consistency proofs.

use puente::audit::merkle::{verify_consistency, Hash};
use puente::audit::note::{Checkpoint, NoteVerifier};
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::{GetCheckpointRequest, GetConsistencyProofRequest, GetLogInfoRequest};
use tonic::transport::Channel;

/// The checkpoint of a signed note, after checking its signature with the log's verifier key.
/// Panics if the key, the signature or the body is bad.
pub fn verify_checkpoint(verifier_key: &str, note: &str) -> Checkpoint {
    let verifier = NoteVerifier::parse(verifier_key).expect("verifier key");
    Checkpoint::parse(verifier.verify(note).expect("signed by the log key"))
        .expect("checkpoint body")
}

/// The log's verifier key and its latest checkpoint, whose signature is checked with that key.
pub async fn signed_checkpoint(client: &mut AuditServiceClient<Channel>) -> (String, Checkpoint) {
    let key = client
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner()
        .verifier_key;
    let note = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner()
        .checkpoint;
    let checkpoint = verify_checkpoint(&key, &note);
    (key, checkpoint)
}

/// Asserts, with a consistency proof from the server, that the log of checkpoint `after`
/// extends the log of checkpoint `before`.
pub async fn assert_log_extends(
    client: &mut AuditServiceClient<Channel>,
    before: &Checkpoint,
    after: &Checkpoint,
) {
    assert!(
        after.size >= before.size,
        "the log shrank from {} to {} entries",
        before.size,
        after.size
    );
    let proof: Vec<Hash> = client
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: before.size,
            to_size: after.size,
        })
        .await
        .expect("consistency proof")
        .into_inner()
        .hashes
        .into_iter()
        .map(|h| h.try_into().expect("32-byte hash"))
        .collect();
    verify_consistency(before.size, after.size, &proof, &before.root, &after.root)
        .expect("the later log extends the earlier checkpoint");
}
