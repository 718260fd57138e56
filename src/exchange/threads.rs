//! Threads and deadlines: messages linked by `in_reply_to` or sharing a case reference, who has
//! answered a request, and which answers are overdue.

use std::collections::{BTreeSet, HashSet};

use tonic::Request;

use super::validate::MessageId;
use super::{is_party, ExchangeError, ExchangeService};
use crate::admission::ResponsePermit;
use crate::identity::AgencyId;
use crate::pb::v1::{ListThreadRequest, ListThreadResponse};
use crate::store::records::MessageRecord;
use crate::store::StoreError;

/// Most messages one ListThread answers with.
pub(super) const MAX_THREAD_MESSAGES: usize = 1000;
/// Most messages one ListThread looks at, readable or not.
pub(super) const MAX_THREAD_WALK: usize = 10 * MAX_THREAD_MESSAGES;

impl ExchangeService {
    /// The replies to `message_id`: (replying agency, reply id) from the reply index.
    async fn reply_entries(&self, message_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.store.replies(message_id).await
    }

    /// Agencies that answered `message_id` (sent a message `in_reply_to` it) with a reply
    /// `viewer` may read. A reply addressed only to others is not `viewer`'s business: saying
    /// it exists would leak a message the sender is not party to.
    pub(super) async fn repliers_seen_by(
        &self,
        message_id: &str,
        viewer: &AgencyId,
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut repliers = BTreeSet::new();
        for (agency, reply) in self.reply_entries(message_id).await? {
            if repliers.contains(&agency) {
                continue;
            }
            if let Some(reply) = self.store.message(&reply).await? {
                if is_party(&reply, viewer) {
                    repliers.insert(agency);
                }
            }
        }
        Ok(repliers)
    }

    async fn replies(&self, message_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .reply_entries(message_id)
            .await?
            .into_iter()
            .map(|(_, reply)| reply)
            .collect())
    }

    async fn readable_record(
        &self,
        agency: &AgencyId,
        id: &str,
    ) -> Result<Option<MessageRecord>, ExchangeError> {
        match MessageId::parse("message_id", id) {
            Ok(id) => match self.readable(agency, &id).await {
                Ok(record) => Ok(Some(record)),
                Err(ExchangeError::MessageNotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            Err(_) => Ok(None),
        }
    }

    /// The thread of a message (its root, found through `in_reply_to` as far as the caller may
    /// read, and every reply below it), or the messages of a case reference; only messages
    /// the caller may read, oldest first.
    pub(super) async fn thread(
        &self,
        request: Request<ListThreadRequest>,
    ) -> Result<(ListThreadResponse, ResponsePermit), ExchangeError> {
        let (caller, agency) = self.require_agency(&request)?;
        let request = request.into_inner();
        let mut records = Vec::new();
        match (
            request.message_id.is_empty(),
            request.case_reference.trim().is_empty(),
        ) {
            (false, true) => {
                let id = MessageId::parse("message_id", &request.message_id)?;
                // The caller must be able to read the message it names. The walk itself goes
                // through messages it cannot read (so that every entry point gives the same
                // thread); only readable ones are listed.
                let mut root = self.readable(&agency, &id).await?;
                let mut seen = HashSet::new();
                while !root.in_reply_to.is_empty()
                    && seen.insert(root.message_id.clone())
                    && seen.len() < MAX_THREAD_WALK
                {
                    match self.store.message(&root.in_reply_to).await? {
                        Some(parent) => root = parent,
                        None => break,
                    }
                }
                let mut queue = vec![root];
                let mut visited = HashSet::new();
                while let Some(record) = queue.pop() {
                    if records.len() >= MAX_THREAD_MESSAGES
                        || visited.len() >= MAX_THREAD_WALK
                        || !visited.insert(record.message_id.clone())
                    {
                        continue;
                    }
                    for reply in self.replies(&record.message_id).await? {
                        if let Some(child) = self.store.message(&reply).await? {
                            queue.push(child);
                        }
                    }
                    if is_party(&record, &agency) {
                        records.push(record);
                    }
                }
            }
            (true, false) => {
                for id in self
                    .store
                    .case_messages(request.case_reference.trim())
                    .await?
                {
                    if let Some(record) = self.readable_record(&agency, &id).await? {
                        records.push(record);
                    }
                    if records.len() >= MAX_THREAD_MESSAGES {
                        break;
                    }
                }
            }
            _ => {
                return Err(ExchangeError::invalid(
                    "message_id",
                    "give exactly one of message_id and case_reference",
                ))
            }
        }
        records.sort_by(|a, b| {
            (a.created_at_micros, &a.message_id).cmp(&(b.created_at_micros, &b.message_id))
        });
        // Room for the answer before any body is read, as for GetMessage. A thread larger than
        // the caller's budget takes all of it and goes alone.
        let bytes = records.iter().fold(0u64, |sum, record| {
            sum.saturating_add(record.body_len.saturating_add(super::ANSWER_OVERHEAD))
        });
        let permit = self
            .responses
            .reserve(&caller.id.to_string(), bytes)
            .await
            .map_err(ExchangeError::ResponsesUnread)?;
        let mut messages = Vec::with_capacity(records.len());
        for record in records {
            messages.push(self.to_message(record).await?);
        }
        Ok((ListThreadResponse { messages }, permit))
    }
}
