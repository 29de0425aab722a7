//! The `Watch` call's translation: cursors and messages between protobuf and
//! `crate::watch` / `crate::store::watch`.
//!
//! Owns: the checks of a cursor a client sent (key sizes, a valid range). Must never: let
//! a cursor with an oversized key or an inverted range reach the store.

use crate::error::KvError;
use crate::ids::RegionId;
use crate::store::watch::WatchMessage;
use crate::watch::{Cursor, WatchItem};

use super::proto;

/// The protobuf form of `cursor`.
#[must_use]
pub fn cursor_to_proto(cursor: &Cursor) -> proto::WatchCursor {
    proto::WatchCursor {
        region_id: cursor.region.0,
        version: cursor.version,
        index: cursor.index,
        event: cursor.event,
        start: cursor.start.clone(),
        end: cursor.end.clone(),
    }
}

/// The cursor `cursor` names, checked: keys within the limits, a valid range.
pub fn cursor_from_proto(cursor: &proto::WatchCursor) -> Result<Cursor, KvError> {
    crate::limits::check_key(&cursor.start)?;
    crate::limits::check_key(&cursor.end)?;
    crate::limits::check_range(&cursor.start, &cursor.end)?;
    Ok(Cursor {
        region: RegionId(cursor.region_id),
        version: cursor.version,
        index: cursor.index,
        event: cursor.event,
        start: cursor.start.clone(),
        end: cursor.end.clone(),
    })
}

/// The reply (or the error ending the stream) for `message`.
pub(super) fn reply_of(message: WatchMessage) -> Result<proto::WatchReply, KvError> {
    let mut reply = proto::WatchReply::default();
    match message {
        WatchMessage::Events { cursor, events } => {
            reply.cursor = Some(cursor_to_proto(&cursor));
            reply.events = events
                .into_iter()
                .filter_map(|(event, item)| match item {
                    WatchItem::Put { key, value } => Some(proto::WatchEvent {
                        event,
                        delete: false,
                        key,
                        value,
                    }),
                    WatchItem::Delete { key } => Some(proto::WatchEvent {
                        event,
                        delete: true,
                        key,
                        value: bytes::Bytes::new(),
                    }),
                    WatchItem::Split { .. } => None,
                })
                .collect();
        }
        WatchMessage::Split { cursor, child } => {
            reply.cursor = Some(cursor_to_proto(&cursor));
            reply.child = Some(cursor_to_proto(&child));
        }
        WatchMessage::Compacted {
            message,
            resume_from,
        } => {
            reply.compacted = message;
            reply.resume_from = resume_from.as_ref().map(cursor_to_proto);
        }
        WatchMessage::Failed(error) => return Err(error),
    }
    Ok(reply)
}
