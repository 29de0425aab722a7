//! Peer ids crossing the CLI boundary, both ways: the limits on them and their checks in
//! requests (the service) and answers (the client).
//!
//! Owns: what a valid peer id looks like on the CLI wire and how many a message may name.
//! Must never: accept an id or a list beyond those limits.

use flotilla_raft::PeerId;
use tonic::Status;

use super::error::CliError;
use super::metadata::invalid;
use super::proto;

/// Longest peer id accepted in a request or an answer (the wire codec's limit too).
pub use crate::limits::PEER_ID_BYTES_MAX;
/// Most peers one request may name.
pub const REQUEST_PEERS_MAX: usize = 1024;

/// True if `text` may be a peer id: 1 to [`PEER_ID_BYTES_MAX`] printable ASCII characters.
pub(crate) fn valid_peer_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= PEER_ID_BYTES_MAX
        && text.chars().all(|c| c.is_ascii_graphic())
}

/// The peer id in request field `field`, or `INVALID_ARGUMENT`.
pub(crate) fn parse_peer(field: &str, text: &str) -> Result<PeerId, Status> {
    if valid_peer_text(text) {
        Ok(PeerId::new(text))
    } else {
        Err(invalid(format!(
            "{field}: a peer id is 1 to {PEER_ID_BYTES_MAX} printable ASCII characters"
        )))
    }
}

/// The peer ids of a request, at most [`REQUEST_PEERS_MAX`] of them.
pub(crate) fn parse_peers(texts: &[String]) -> Result<Vec<PeerId>, Status> {
    if texts.len() > REQUEST_PEERS_MAX {
        return Err(invalid(format!(
            "peers: {} named, at most {REQUEST_PEERS_MAX}",
            texts.len()
        )));
    }
    texts.iter().map(|t| parse_peer("peers", t)).collect()
}

/// The wire form of `peers`.
pub(crate) fn names(peers: impl IntoIterator<Item = PeerId>) -> Vec<String> {
    peers.into_iter().map(|p| p.as_str().to_owned()).collect()
}

/// A peer id in an answer, checked.
pub(crate) fn peer_answer(text: &str) -> Result<PeerId, CliError> {
    if valid_peer_text(text) {
        Ok(PeerId::new(text))
    } else {
        Err(CliError::InvalidAnswer(format!(
            "peer id of {} bytes is not valid",
            text.len()
        )))
    }
}

/// The peer ids of an answer, checked, at most [`REQUEST_PEERS_MAX`] of them.
pub(crate) fn peers_answer(reply: proto::PeersReply) -> Result<Vec<PeerId>, CliError> {
    if reply.peers.len() > REQUEST_PEERS_MAX {
        return Err(CliError::InvalidAnswer(format!(
            "{} peers",
            reply.peers.len()
        )));
    }
    reply.peers.iter().map(|p| peer_answer(p)).collect()
}
