//! Key layout of the embedded backend's single sled tree. One tree, so that one journal record (a group commit)
//! covers every record a message touches. Agency ids never contain `/`, and message ids are fixed-length UUIDs.
//! The audit log's keys (`l/`, `h/`, `p/`, `c/`) are private to `log`.

use crate::store::PublishedKey;

/// `m/<message_id>` → `MessageRecord`.
pub(super) fn message(message_id: &str) -> Vec<u8> {
    [b"m/", message_id.as_bytes()].concat()
}

/// `i/<agency>/` prefix of one agency's inbox.
pub(super) fn inbox_prefix(agency: &str) -> Vec<u8> {
    [b"i/", agency.as_bytes(), b"/"].concat()
}

/// `i/<agency>/<sequence, 8 bytes big-endian>` → message id.
pub(super) fn inbox(agency: &str, sequence: u64) -> Vec<u8> {
    [inbox_prefix(agency).as_slice(), &sequence.to_be_bytes()].concat()
}

/// The big-endian `u64` at the end of a key: an inbox sequence, an audit index, a size.
pub(super) fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// `k/<sender>/<client_message_id>` → `IdempotencyRecord`.
pub(super) fn idempotency(sender: &str, client_message_id: &str) -> Vec<u8> {
    [b"k/", sender.as_bytes(), b"/", client_message_id.as_bytes()].concat()
}

/// `d/<message_id>/<agency>` → `DeliveryRecord`, once the recipient's state moved past
/// PENDING.
pub(super) fn delivery(message_id: &str, agency: &str) -> Vec<u8> {
    [b"d/", message_id.as_bytes(), b"/", agency.as_bytes()].concat()
}

/// `r/<topic, 4 bytes big-endian>/` prefix of one topic's retention index.
pub(super) fn retention_prefix(topic: i32) -> Vec<u8> {
    [b"r/".as_slice(), &topic.to_be_bytes(), b"/"].concat()
}

/// `r/<topic>/<created_at_micros, 8 bytes big-endian>/<message_id>` → empty: messages in
/// the order their retention period runs out.
pub(super) fn retention(topic: i32, created_at_micros: i64, message_id: &str) -> Vec<u8> {
    [
        retention_prefix(topic).as_slice(),
        &created_at_micros.max(0).to_be_bytes(),
        b"/",
        message_id.as_bytes(),
    ]
    .concat()
}

/// The message id at the end of a retention key.
pub(super) fn retention_message_id(key: &[u8]) -> Option<&str> {
    // "r/" + topic (4) + "/" + time (8) + "/" before the id.
    std::str::from_utf8(key.get(16..)?).ok()
}

/// `a/` prefix of the directory.
pub(super) const AGENCY_PREFIX: &[u8] = b"a/";

/// `a/<agency>` → `AgencyRecord`.
pub(super) fn agency(agency: &str) -> Vec<u8> {
    [AGENCY_PREFIX, agency.as_bytes()].concat()
}

/// `r/<message_id>/` prefix of the replies to a message: `<agency>/<reply_id>` → empty.
pub(super) fn replies_prefix(message_id: &str) -> Vec<u8> {
    [b"r/", message_id.as_bytes(), b"/"].concat()
}

/// `r/<message_id>/<agency>/<reply_id>`: `agency` answered `message_id` with `reply_id`.
pub(super) fn reply(message_id: &str, agency: &str, reply_id: &str) -> Vec<u8> {
    [
        replies_prefix(message_id).as_slice(),
        agency.as_bytes(),
        b"/",
        reply_id.as_bytes(),
    ]
    .concat()
}

/// `x/<case reference>/` prefix of the messages carrying a case reference.
pub(super) fn case_prefix(case_reference: &str) -> Vec<u8> {
    [b"x/", case_reference.as_bytes(), b"\0"].concat()
}

/// `x/<case reference>\0<message_id>` → empty.
pub(super) fn case_entry(case_reference: &str, message_id: &str) -> Vec<u8> {
    [
        case_prefix(case_reference).as_slice(),
        message_id.as_bytes(),
    ]
    .concat()
}

/// `f/<original_message_id>/` prefix of the forwarded copies of a message.
pub(super) fn copies_prefix(original: &str) -> Vec<u8> {
    [b"f/", original.as_bytes(), b"/"].concat()
}

/// `f/<original>/<copy_id>` → empty: a forwarded copy of `original`.
pub(super) fn copy(original: &str, copy_id: &str) -> Vec<u8> {
    [copies_prefix(original).as_slice(), copy_id.as_bytes()].concat()
}

/// `n/<original_message_id>/` prefix of the retraction and correction notices of a message.
pub(super) fn notices_prefix(original: &str) -> Vec<u8> {
    [b"n/", original.as_bytes(), b"/"].concat()
}

/// `n/<original>/<notice_id>` → empty.
pub(super) fn notice(original: &str, notice_id: &str) -> Vec<u8> {
    [notices_prefix(original).as_slice(), notice_id.as_bytes()].concat()
}

/// `g/<original_message_id>/<holder>/<agency>` → `ConsentRecord`: `holder`'s request to
/// forward the originator's message to `agency`, and the decision on it. (Release 1 wrote
/// `g/<original>/<agency>` → `1`/`0`, consent for any holder; those keys are no longer read,
/// so such a holder asks again.)
pub(super) fn consent(original: &str, holder: &str, agency: &str) -> Vec<u8> {
    [
        b"g/",
        original.as_bytes(),
        b"/",
        holder.as_bytes(),
        b"/",
        agency.as_bytes(),
    ]
    .concat()
}

/// `q/<agency>` → `QuotaRecord`: the agency's match query quota window.
pub(super) fn match_quota(agency: &str) -> Vec<u8> {
    [b"q/", agency.as_bytes()].concat()
}

/// `b/<epoch><kind><blinded>` prefix: who published one blinded identifier.
pub(super) fn published_prefix(epoch: u32, kind: i32, blinded: &[u8]) -> Vec<u8> {
    let kind = u8::try_from(kind).unwrap_or(u8::MAX);
    [b"b/".as_slice(), &epoch.to_be_bytes(), &[kind], blinded].concat()
}

/// `b/<epoch><kind><blinded><agency>` → `PublishedRecord`.
pub(super) fn published(epoch: u32, kind: i32, blinded: &[u8], agency: &str) -> Vec<u8> {
    [
        published_prefix(epoch, kind, blinded).as_slice(),
        agency.as_bytes(),
    ]
    .concat()
}

impl PublishedKey {
    /// The prefix of every agency's publication under this identifier.
    pub(super) fn prefix(&self) -> Vec<u8> {
        published_prefix(self.key_epoch, self.kind, &self.blinded)
    }

    /// The key of `agency`'s publication under this identifier.
    pub(super) fn key(&self, agency: &str) -> Vec<u8> {
        published(self.key_epoch, self.kind, &self.blinded, agency)
    }
}

#[cfg(test)]
mod tests {
    use super::{inbox, inbox_prefix, trailing_u64};

    #[test]
    fn inbox_keys_sort_by_sequence_and_round_trip() {
        let a = inbox("ES-CNP", 255);
        let b = inbox("ES-CNP", 256);
        assert!(a < b);
        assert_eq!(trailing_u64(&b), Some(256));
        assert!(a.starts_with(&inbox_prefix("ES-CNP")));
        assert!(!a.starts_with(&inbox_prefix("ES")));
    }
}
