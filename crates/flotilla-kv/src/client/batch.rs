//! Batching of a [`super::KvClient`]: concurrent single-key puts, deletes and gets to one
//! region wait in one queue per region and class ([`BatchClass`]) and go out together, by
//! draining what is queued while earlier batches are in flight, never by waiting for a
//! timer (RheaKV batches up to 100 ops or 32 KiB; so does this). One batch per region and
//! class is in flight normally; when a whole batch's worth of ops waits behind it, another
//! sender starts, up to `batches_in_flight_max` (see [`starts_sender`]).
//!
//! Owns: the queues, how many senders each runs, the cut of a batch (`batch_ops_max`,
//! `batch_bytes_max`), the request a batch becomes and the split of its answer over the
//! ops. Must never: answer an op of a write batch definitely when the batch's answer is
//! malformed (its outcome is unknown), or run more senders than `batches_in_flight_max`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::connection::{Call, Reply};
use super::error::{wrong_reply, wrong_reply_unknown, ClientError};
use super::options::{ClientOptions, ReadConsistency};
use crate::region::Region;
use crate::service::proto;

/// Where the result of a batched write op goes.
pub(super) type WriteAnswer = oneshot::Sender<Result<proto::OpResult, ClientError>>;
/// Where the value of a batched get goes.
pub(super) type GetAnswer = oneshot::Sender<Result<Option<(Bytes, u64)>, ClientError>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A batch queue of one region (single-key ops of one class).
#[derive(Default)]
pub(super) struct Batcher {
    queue: Mutex<BatchQueue>,
}

#[derive(Default)]
struct BatchQueue {
    pending: VecDeque<Pending>,
    /// Senders running (each sends one batch at a time); at most `batches_in_flight_max`.
    senders: usize,
}

/// A single-key op waiting in a batch queue, and where its answer goes.
pub(super) enum Pending {
    Write {
        op: proto::Op,
        key: Bytes,
        bytes: usize,
        reply: WriteAnswer,
    },
    Get {
        key: Bytes,
        reply: GetAnswer,
    },
}

impl Pending {
    fn bytes(&self) -> usize {
        match self {
            Pending::Write { bytes, .. } => *bytes,
            Pending::Get { key, .. } => key.len(),
        }
    }
}

/// Which batch queue a single-key op joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum BatchClass {
    Write,
    Get(ReadConsistency),
}

/// The batch queues of a client, by region and class (shared by its clones).
#[derive(Default)]
pub(super) struct Batchers {
    queues: Mutex<HashMap<(u64, BatchClass), Arc<Batcher>>>,
}

impl Batchers {
    /// Queues `pending` for `region`; answers its queue when a sender must start for it
    /// (the caller runs it: [`Batcher::next_batch`] until it answers `None`).
    pub(super) fn enqueue(
        &self,
        region: &Region,
        class: BatchClass,
        pending: Pending,
        options: &ClientOptions,
    ) -> Option<Arc<Batcher>> {
        let batcher = lock(&self.queues)
            .entry((region.id.0, class))
            .or_default()
            .clone();
        let start = {
            let mut queue = lock(&batcher.queue);
            queue.pending.push_back(pending);
            let start = starts_sender(queue.senders, queue.pending.len(), options);
            if start {
                queue.senders += 1;
            }
            start
        };
        start.then_some(batcher)
    }
}

impl Batcher {
    /// The next batch of one sender: what the queue holds, up to `batch_ops_max` ops and
    /// `batch_bytes_max` bytes (one op at least). `None` when the queue is empty: the
    /// sender stops (and is counted out).
    pub(super) fn next_batch(&self, options: &ClientOptions) -> Option<Vec<Pending>> {
        let mut queue = lock(&self.queue);
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.pending.front() {
            let size = next.bytes();
            if !batch.is_empty()
                && (batch.len() >= options.batch_ops_max || bytes + size > options.batch_bytes_max)
            {
                break;
            }
            bytes += size;
            if let Some(p) = queue.pending.pop_front() {
                batch.push(p);
            }
        }
        if batch.is_empty() {
            queue.senders -= 1;
            return None;
        }
        Some(batch)
    }
}

/// A batch of writes as one request: the key it is routed by (its first op's), the
/// request, and where each op's result goes, in order. `None` for a batch without writes.
pub(super) fn write_call(batch: Vec<Pending>) -> Option<(Bytes, Call, Vec<WriteAnswer>)> {
    let mut ops = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut route_key = None;
    for pending in batch {
        if let Pending::Write { op, key, reply, .. } = pending {
            route_key.get_or_insert(key);
            ops.push(op);
            replies.push(reply);
        }
    }
    let route_key = route_key?;
    let call = Call::Write(proto::WriteRequest { context: None, ops });
    Some((route_key, call, replies))
}

/// Answers every op of a write batch from the batch's `answer`.
pub(super) fn answer_writes(
    replies: Vec<WriteAnswer>,
    answer: Result<(Reply, Region), ClientError>,
) {
    match answer {
        Ok((Reply::Write(reply), _)) if reply.results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(reply.results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err(wrong_reply_unknown()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// A batch of gets as one request (a get for one key, else a multi-get): the key it is
/// routed by (its first), the request, and where each value goes, in order. `None` for a
/// batch without gets.
pub(super) fn get_call(
    batch: Vec<Pending>,
    read: ReadConsistency,
) -> Option<(Bytes, Call, Vec<GetAnswer>)> {
    let mut keys = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for pending in batch {
        if let Pending::Get { key, reply } = pending {
            keys.push(key);
            replies.push(reply);
        }
    }
    let route_key = keys.first().cloned()?;
    let call = if keys.len() == 1 {
        Call::Get(proto::GetRequest {
            context: None,
            key: route_key.clone(),
            read: read.proto(),
        })
    } else {
        Call::MultiGet(proto::MultiGetRequest {
            context: None,
            keys,
            read: read.proto(),
        })
    };
    Some((route_key, call, replies))
}

/// Answers every get of a batch from the batch's `answer`.
pub(super) fn answer_gets(replies: Vec<GetAnswer>, answer: Result<(Reply, Region), ClientError>) {
    match answer {
        Ok((Reply::Get(reply), _)) if replies.len() == 1 => {
            for reply_to in replies {
                let _ = reply_to.send(Ok(reply.found.then(|| (reply.value.clone(), reply.lease))));
            }
        }
        Ok((Reply::MultiGet(reply), _)) if reply.values.len() == replies.len() => {
            for (reply_to, value) in replies.into_iter().zip(reply.values) {
                let _ = reply_to.send(Ok(value.found.then_some((value.value, value.lease))));
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err(wrong_reply()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Whether an op queued behind `senders` running senders, leaving `pending` ops waiting,
/// starts another sender: the first always; more only once a whole batch waits.
pub(super) fn starts_sender(senders: usize, pending: usize, options: &ClientOptions) -> bool {
    senders == 0 || (senders < options.batches_in_flight_max && pending >= options.batch_ops_max)
}

/// The value bytes `op` carries (what a batch counts besides keys).
pub(super) fn op_value_len(op: &proto::Op) -> usize {
    use proto::op::Op;
    match &op.op {
        Some(Op::Put(p) | Op::PutIfAbsent(p) | Op::GetAndPut(p)) => p.value.len(),
        Some(Op::CompareAndPut(c)) => c.value.len() + c.expected.as_ref().map_or(0, Bytes::len),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_batch_goes_out_only_once_a_whole_batch_waits() {
        let options = ClientOptions {
            batch_ops_max: 100,
            batches_in_flight_max: 3,
            ..ClientOptions::default()
        };
        assert!(
            starts_sender(0, 1, &options),
            "nothing in flight: send at once"
        );
        assert!(
            !starts_sender(1, 1, &options),
            "a lone op waits to join the next batch"
        );
        assert!(!starts_sender(1, 99, &options));
        assert!(
            starts_sender(1, 100, &options),
            "a full batch waits: send it now"
        );
        assert!(starts_sender(2, 150, &options));
        assert!(
            !starts_sender(3, 1000, &options),
            "never more than batches_in_flight_max"
        );
    }
}
