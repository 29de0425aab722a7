//! Watch from the client (`crate::watch`): one stream per region piece of the watched
//! range, merged into one sequence of events, each with the token that resumes right
//! after it.
//!
//! A watch holds a cursor per piece (a region and the keys watched there). Each cursor
//! has a stream to its region's leader; a stream that ends or fails is opened again from
//! the cursor, wherever the region is then (a leader change, a restart, a store gone). A
//! split hands part of a cursor's keys to a new cursor in the child; a merge moves a
//! cursor to the target. The token of an event names every cursor as it stands once the
//! event is delivered, so resuming from it delivers each piece's next event and nothing
//! before: events are in commit order per key (a key is in one piece at a time), and none
//! is missed or repeated.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::connection::grpc_client;
use super::retry::{classify, never_sent, Next};
use super::{ClientError, KvClient};
use crate::service::proto;
use crate::service::watch::{cursor_from_proto, cursor_to_proto};
use crate::watch::{Cursor, WHOLE};

/// Longest pause between two attempts to open a stream.
const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Events buffered for the reader of a watch before its streams wait.
const EVENTS_BUFFER: usize = 1024;
/// Replies of all streams buffered for the watch: a reader that stops reading stops the
/// streams, whose stores then cut them off (`Compacted`) rather than hold more.
const REPLIES_BUFFER: usize = 256;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    /// It was set.
    Put,
    /// It was deleted.
    Delete,
}

/// One change a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// The key.
    pub key: Bytes,
    /// Its new value (empty for a delete).
    pub value: Bytes,
    /// Resumes the watch right after this event ([`KvClient::watch`]'s `from`).
    pub token: String,
}

/// Why a watch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchError {
    /// The error kind (`Compacted`: the history needed is gone, or the watcher fell
    /// behind).
    pub kind: String,
    /// What happened.
    pub message: String,
    /// The oldest position it can resume from (a token), if one is known.
    pub resume_from: Option<String>,
}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for WatchError {}

/// A running watch: its events in order, until an error ends it. Dropping it stops it.
#[derive(Debug)]
pub struct Watcher {
    events: mpsc::Receiver<Result<WatchEvent, WatchError>>,
    driver: tokio::task::JoinHandle<()>,
    position: String,
}

impl Watcher {
    /// The next event (`None` never comes while the watch runs: an end is an error).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, WatchError>> {
        let next = self.events.recv().await;
        if let Some(Ok(event)) = &next {
            self.position.clone_from(&event.token);
        }
        next
    }

    /// The token resuming right after the last event [`Watcher::next`] returned (before
    /// any: where the watch started).
    #[must_use]
    pub fn position(&self) -> &str {
        &self.position
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What a stream tells the watch.
enum StreamMessage {
    Reply(Box<proto::WatchReply>),
    /// The stream ended (with the error, if it failed); it is opened again unless fatal.
    Ended(Option<ClientError>),
}

/// One piece of the watch.
struct Slot {
    cursor: Cursor,
    /// Whether the cursor has a position (a from-now cursor gets it from its first reply).
    placed: bool,
    /// The stream's generation: messages of an older one are ignored.
    generation: u64,
    stream: Option<tokio::task::JoinHandle<()>>,
}

impl KvClient {
    /// Watches the keys starting with `prefix` (empty: every key): from now, or right
    /// after the event whose token is `from`. Fails at once on a token that does not
    /// decode or does not match the prefix, or if no store answers.
    pub async fn watch(
        &self,
        prefix: impl Into<Bytes>,
        from: Option<&str>,
    ) -> Result<Watcher, ClientError> {
        let start: Bytes = prefix.into();
        let end = crate::watch::prefix_end(&start);
        self.watch_range(start, end, from).await
    }

    /// Watches the keys in `[start, end)` (an empty end: unbounded), as [`KvClient::watch`].
    pub async fn watch_range(
        &self,
        start: Bytes,
        end: Bytes,
        from: Option<&str>,
    ) -> Result<Watcher, ClientError> {
        let invalid =
            |e: crate::error::KvError| ClientError::definite("InvalidArgument", e.to_string());
        crate::limits::check_key(&start).map_err(invalid)?;
        crate::limits::check_key(&end).map_err(invalid)?;
        crate::limits::check_range(&start, &end).map_err(invalid)?;
        let (cursors, placed) = match from {
            Some(token) => {
                let cursors = crate::watch::decode_token(token).map_err(invalid)?;
                crate::watch::check_cover(&cursors, &start, &end).map_err(invalid)?;
                (cursors, true)
            }
            None => (self.cursors_from_now(&start, &end).await?, false),
        };
        let (events_tx, events) = mpsc::channel(EVENTS_BUFFER);
        let (messages_tx, messages) = mpsc::channel(REPLIES_BUFFER);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let mut driver = Driver {
            client: self.clone(),
            slots: BTreeMap::new(),
            next_slot: 0,
            messages_tx,
            events: events_tx,
            ready: Some(ready_tx),
        };
        for cursor in cursors {
            driver.add(cursor, placed);
        }
        let driver = tokio::spawn(async move { driver.run(messages).await });
        // "From now" is once every piece has its position: a change made after this
        // returns is delivered.
        let timeout = self.inner.options.timeout;
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(position)) => Ok(Watcher {
                events,
                driver,
                position,
            }),
            // The watch ended before it was placed: its error is the first answer.
            Ok(Err(_)) => Ok(Watcher {
                events,
                driver,
                position: String::new(),
            }),
            Err(_) => {
                // Nothing of it may go on: its streams would renew interest for nobody.
                driver.abort();
                Err(ClientError::definite(
                    "Unavailable",
                    format!("the watch was not placed within the operation timeout ({timeout:?})"),
                ))
            }
        }
    }

    /// The cursors of a new watch of `[start, end)`: one per region it spans, as the
    /// routes have them (a region that changed since answers `StaleEpoch` and the piece
    /// is placed again).
    async fn cursors_from_now(
        &self,
        start: &Bytes,
        end: &Bytes,
    ) -> Result<Vec<Cursor>, ClientError> {
        let mut cursors = Vec::new();
        let mut at = start.clone();
        loop {
            let route = self.route(&at).await?;
            let region = route.region;
            let piece_end = if region.end.is_empty() || (!end.is_empty() && end <= &region.end) {
                end.clone()
            } else {
                region.end.clone()
            };
            cursors.push(Cursor {
                region: region.id,
                version: region.epoch.version,
                index: 0,
                event: WHOLE,
                start: at.clone(),
                end: piece_end.clone(),
            });
            if piece_end.is_empty() || piece_end == *end {
                return Ok(cursors);
            }
            at = piece_end;
        }
    }

    /// Opens a stream of `cursor`'s region (its leader), trying the region's peers and
    /// the routes again until one answers or the error is final.
    async fn open_watch(
        &self,
        cursor: &Cursor,
        from_now: bool,
    ) -> Result<tonic::Streaming<proto::WatchReply>, ClientError> {
        let mut pause = Duration::from_millis(20);
        let mut last_refresh: Option<Instant> = None;
        loop {
            // The cursor's own region while it exists; a merged source's keys are its
            // target's, found by the keys.
            let mut route = self
                .inner
                .routes
                .all()
                .into_iter()
                .find(|route| route.region.id == cursor.region);
            if route.is_none() && last_refresh.is_none_or(|at| at.elapsed() > REOPEN_PAUSE_MAX) {
                last_refresh = Some(Instant::now());
                self.refresh_routes().await.ok();
                route = self
                    .inner
                    .routes
                    .all()
                    .into_iter()
                    .find(|route| route.region.id == cursor.region);
            }
            let route = match route {
                Some(route) => route,
                None => self.route(&cursor.start).await?,
            };
            let error = match self.pick(&route, false) {
                None => {
                    self.refresh_routes().await.ok();
                    ClientError::definite(
                        "Unavailable",
                        format!("region {} has no known peers", route.region.id),
                    )
                }
                Some(target) => match self.channel(&target).await {
                    Err(error) => {
                        self.mark_down(&target);
                        self.set_leader(&route.region, None);
                        error
                    }
                    Ok(channel) => {
                        let request = proto::WatchRequest {
                            context: Some(proto::RegionContext {
                                region_id: route.region.id.0,
                                conf_version: route.region.epoch.conf_version,
                                version: route.region.epoch.version,
                            }),
                            cursor: Some(cursor_to_proto(cursor)),
                            from_now,
                        };
                        match grpc_client(channel).watch(request).await {
                            Ok(response) => {
                                self.set_leader(&route.region, Some(target));
                                return Ok(response.into_inner());
                            }
                            Err(status) => {
                                let (next, error) = classify(&status);
                                match next {
                                    Next::Redirect(hint) => {
                                        let hint = hint.filter(|h| *h != target);
                                        self.set_leader(&route.region, hint);
                                    }
                                    Next::Reroute => {
                                        self.refresh_routes().await.ok();
                                        // A new piece wider than its region now: the
                                        // watch places it again from the routes.
                                        if from_now && error.kind == "StaleEpoch" {
                                            return Err(error);
                                        }
                                    }
                                    Next::Backoff => {}
                                    Next::Lost => {
                                        self.forget_channel(&target);
                                        self.set_leader(&route.region, None);
                                        if never_sent(&status) {
                                            self.mark_down(&target);
                                        }
                                    }
                                    Next::Fail => return Err(error),
                                }
                                error
                            }
                        }
                    }
                },
            };
            tracing::debug!(region = %cursor.region, error = %error, "watch stream not open yet");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REOPEN_PAUSE_MAX);
        }
    }
}

/// Runs one stream of a slot: opens it, forwards its replies, tells how it ended.
async fn run_stream(
    client: KvClient,
    cursor: Cursor,
    from_now: bool,
    slot: u64,
    generation: u64,
    messages: mpsc::Sender<(u64, u64, StreamMessage)>,
) {
    let mut stream = match client.open_watch(&cursor, from_now).await {
        Ok(stream) => stream,
        Err(error) => {
            let _ = messages
                .send((slot, generation, StreamMessage::Ended(Some(error))))
                .await;
            return;
        }
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(reply)) => StreamMessage::Reply(Box::new(reply)),
            Ok(None) => StreamMessage::Ended(None),
            Err(status) => StreamMessage::Ended(Some(classify(&status).1)),
        };
        let ended = matches!(message, StreamMessage::Ended(_));
        if messages.send((slot, generation, message)).await.is_err() || ended {
            return;
        }
    }
}

/// Whether a stream's error ends the watch (the request itself is wrong) rather than
/// being retried.
fn fatal(error: &ClientError) -> bool {
    matches!(
        error.kind.as_str(),
        "InvalidArgument"
            | "KeyTooLarge"
            | "KeyEmpty"
            | "InvalidRange"
            | "Refused"
            | "Corrupt"
            | "Unimplemented"
    )
}

/// The task merging a watch's streams.
struct Driver {
    client: KvClient,
    slots: BTreeMap<u64, Slot>,
    next_slot: u64,
    messages_tx: mpsc::Sender<(u64, u64, StreamMessage)>,
    events: mpsc::Sender<Result<WatchEvent, WatchError>>,
    /// Told the watch's token once every piece is placed (dropped if the watch ended
    /// first).
    ready: Option<tokio::sync::oneshot::Sender<String>>,
}

/// A watch dropped (or ended) stops its streams: a stream left open would keep its
/// region recording history for nobody.
impl Drop for Driver {
    fn drop(&mut self) {
        for slot in self.slots.values_mut() {
            if let Some(stream) = slot.stream.take() {
                stream.abort();
            }
        }
    }
}

impl Driver {
    /// Adds a piece and starts its stream.
    fn add(&mut self, cursor: Cursor, placed: bool) {
        let id = self.next_slot;
        self.next_slot += 1;
        self.slots.insert(
            id,
            Slot {
                cursor,
                placed,
                generation: 0,
                stream: None,
            },
        );
        self.start(id, Duration::ZERO);
    }

    /// (Re)starts slot `id`'s stream after `delay`.
    fn start(&mut self, id: u64, delay: Duration) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.generation += 1;
        if let Some(old) = slot.stream.take() {
            old.abort();
        }
        let client = self.client.clone();
        let cursor = slot.cursor.clone();
        let from_now = !slot.placed;
        let generation = slot.generation;
        let messages = self.messages_tx.clone();
        slot.stream = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_stream(client, cursor, from_now, id, generation, messages).await;
        }));
    }

    /// Replaces the new piece `id`, wider than its region (a split came between the
    /// routes and the placement), by the pieces the routes give now.
    async fn place_again(&mut self, id: u64) -> bool {
        let Some(slot) = self.slots.get(&id) else {
            return true;
        };
        let (start, end) = (slot.cursor.start.clone(), slot.cursor.end.clone());
        match self.client.cursors_from_now(&start, &end).await {
            Ok(pieces) => {
                if let Some(mut old) = self.slots.remove(&id) {
                    if let Some(stream) = old.stream.take() {
                        stream.abort();
                    }
                }
                for piece in pieces {
                    self.add(piece, false);
                }
            }
            // No routes now: the same piece again, a little later.
            Err(_) => self.start(id, REOPEN_PAUSE_MAX),
        }
        true
    }

    /// Tells the caller of `watch` the watch's token, once every piece is placed.
    fn tell_ready(&mut self) {
        if !self.slots.values().all(|s| s.placed) {
            return;
        }
        if let Some(ready) = self.ready.take() {
            let cursors: Vec<Cursor> = self.slots.values().map(|s| s.cursor.clone()).collect();
            let _ = ready.send(crate::watch::encode_token(&cursors));
        }
    }

    /// The token of every cursor, with slot `id`'s at `at`.
    fn token_with(&self, id: u64, at: &Cursor) -> String {
        let cursors: Vec<Cursor> = self
            .slots
            .iter()
            .map(|(slot, s)| {
                if *slot == id {
                    at.clone()
                } else {
                    s.cursor.clone()
                }
            })
            .collect();
        crate::watch::encode_token(&cursors)
    }

    async fn run(mut self, mut messages: mpsc::Receiver<(u64, u64, StreamMessage)>) {
        // Messages of placed pieces wait until every piece is placed: a token must name
        // every cursor's position.
        let mut waiting: VecDeque<(u64, StreamMessage)> = VecDeque::new();
        let mut pauses: BTreeMap<u64, Duration> = BTreeMap::new();
        self.tell_ready();
        while let Some((id, generation, message)) = messages.recv().await {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            let all_placed = self.slots.values().all(|s| s.placed);
            if !all_placed && slot.placed {
                waiting.push_back((id, message));
                continue;
            }
            if !self.handle(id, message, &mut pauses).await {
                return;
            }
            if !all_placed && self.slots.values().all(|s| s.placed) {
                self.tell_ready();
                while let Some((id, message)) = waiting.pop_front() {
                    if !self.handle(id, message, &mut pauses).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one message of slot `id`; `false` once the watch is over.
    async fn handle(
        &mut self,
        id: u64,
        message: StreamMessage,
        pauses: &mut BTreeMap<u64, Duration>,
    ) -> bool {
        let reply = match message {
            StreamMessage::Ended(error) => {
                if let Some(error) = &error {
                    let unplaced = self.slots.get(&id).is_some_and(|slot| !slot.placed);
                    if unplaced && error.kind == "StaleEpoch" {
                        return self.place_again(id).await;
                    }
                    if fatal(error) {
                        let _ = self
                            .events
                            .send(Err(WatchError {
                                kind: error.kind.clone(),
                                message: error.message.clone(),
                                resume_from: None,
                            }))
                            .await;
                        return false;
                    }
                }
                let pause = pauses.entry(id).or_insert(Duration::from_millis(10));
                let delay = *pause;
                *pause = (*pause * 2).min(REOPEN_PAUSE_MAX);
                self.start(id, delay);
                return true;
            }
            StreamMessage::Reply(reply) => *reply,
        };
        if !reply.compacted.is_empty() {
            let resume_from = reply
                .resume_from
                .as_ref()
                .and_then(|c| cursor_from_proto(c).ok())
                .map(|c| self.token_with(id, &c));
            let _ = self
                .events
                .send(Err(WatchError {
                    kind: crate::watch::COMPACTED_KIND.into(),
                    message: reply.compacted,
                    resume_from,
                }))
                .await;
            return false;
        }
        let Some(cursor) = reply
            .cursor
            .as_ref()
            .and_then(|c| cursor_from_proto(c).ok())
        else {
            // A reply without a cursor is not one this client understands: open again.
            self.start(id, REOPEN_PAUSE_MAX);
            return true;
        };
        pauses.remove(&id);
        let count = reply.events.len();
        for (n, event) in reply.events.into_iter().enumerate() {
            // After a reply's last event the piece is where the reply's cursor says: every
            // event of the entry it watches (a merge's handover checks whole entries), or
            // the last one sent of an entry that goes on in the next reply.
            let at = Cursor {
                event: if n + 1 == count {
                    cursor.event
                } else {
                    event.event
                },
                ..cursor.clone()
            };
            let token = self.token_with(id, &at);
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.cursor = at;
            }
            let kind = if event.delete {
                WatchEventKind::Delete
            } else {
                WatchEventKind::Put
            };
            let event = WatchEvent {
                kind,
                key: event.key,
                value: event.value,
                token,
            };
            if self.events.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        let empty = cursor.is_empty();
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.cursor = cursor;
            slot.placed = true;
        }
        if let Some(child) = reply.child.as_ref() {
            match cursor_from_proto(child) {
                Ok(child) => self.add(child, true),
                Err(e) => {
                    // Its keys would go unwatched: the watch ends, resumable from before.
                    let _ = self
                        .events
                        .send(Err(WatchError {
                            kind: "Corrupt".into(),
                            message: format!("a split's new piece does not decode: {e}"),
                            resume_from: None,
                        }))
                        .await;
                    return false;
                }
            }
        }
        if empty {
            if let Some(slot) = self.slots.remove(&id) {
                if let Some(stream) = slot.stream {
                    stream.abort();
                }
            }
        }
        true
    }
}
