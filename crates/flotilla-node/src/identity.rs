//! Who a process is, and where the others are: the [`Identity`] every frame, snapshot fetch
//! and CLI call addressed to this process is checked against, and the [`AddressBook`] that
//! maps peer ids to the addresses they are reached at.
//!
//! Owns: the rule that traffic names its receiver (a peer id and a cluster id) and is
//! refused, counted and logged once per source when it names another; the address book's
//! file. Must never: treat an address as an identity (an address is where a peer is this
//! minute; its id is who it is for ever), or accept an address book file whose checksum or
//! syntax is wrong.
//!
//! A peer id is any non-empty string (library users choose their own). The KV store uses
//! store ids: 64 random bits written as 16 lowercase hex digits ([`StoreId`]).
//!
//! The address book is a plain map owned by the process today: filled from the bootstrap
//! exchange, from the address every incoming frame's sender announces, and from
//! `Identify` answers; kept in a checksummed file so a restart can reach its peers at once.
//! A later placement driver can own the same map (a replicated store directory) and feed
//! it through [`AddressBook::set`]: no id changes when it does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use flotilla_raft::PeerId;

use crate::metrics::{IdentityRefusal, TransportMetrics};

pub use crate::limits::ADDRESS_BYTES_MAX;
use crate::limits::PEER_ID_BYTES_MAX;
/// Entries an address book holds at most (a bound on what peers can make it remember).
pub const ADDRESS_BOOK_ENTRIES_MAX: usize = 65_536;
/// Sources whose refused traffic is logged (each once); beyond it, only counted.
const LOGGED_SOURCES_MAX: usize = 1024;
const BOOK_HEADER: &str = "flotilla-addresses 1";
/// Largest address book file read.
const BOOK_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// A store's identity: 64 random bits made when its data directory is created, never
/// reused, written as 16 lowercase hex digits (JSON-safe, unlike a 64-bit number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(pub u64);

impl StoreId {
    /// A fresh random id (never 0), from the operating system's randomness.
    #[must_use]
    pub fn random() -> StoreId {
        StoreId(random_nonzero_u64())
    }

    /// The peer id this store's peers have in every group.
    #[must_use]
    pub fn peer_id(self) -> PeerId {
        PeerId::new(&self.to_string())
    }

    /// Parses exactly 16 hex digits (not 0).
    pub fn parse(text: &str) -> Result<StoreId, String> {
        let text = text.trim();
        let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
        match u64::from_str_radix(text, 16) {
            Ok(id) if valid && id != 0 => Ok(StoreId(id)),
            _ => Err(format!(
                "{text:?} is not a store id (16 hex digits, not all zero)"
            )),
        }
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// 64 random bits, never 0: the OS's randomness where it can be read, else the clock and
/// process id hashed (still distinct per call).
#[must_use]
pub fn random_nonzero_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    let mut value = u64::from_le_bytes(bytes);
    if !from_os {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value = x ^ (x >> 31);
    }
    value.max(1)
}

/// Checks an address received from a peer or an operator: `host:port`, printable, short.
pub fn check_address(address: &str) -> Result<(), String> {
    let valid_port = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if address.is_empty()
        || address.len() > ADDRESS_BYTES_MAX
        || !valid_port
        || address
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        return Err(format!(
            "{:?} is not an address host:port",
            address.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// Why traffic was refused by [`Identity::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It names another peer id as its receiver.
    WrongPeer {
        /// The id it named.
        named: String,
    },
    /// It names another cluster.
    WrongCluster {
        /// The cluster it named.
        named: u64,
    },
}

/// This process's id and cluster, checked against every frame, snapshot fetch and CLI call
/// that names a receiver. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Identity {
    id: PeerId,
    cluster: AtomicU64,
    metrics: Arc<TransportMetrics>,
    logged: Mutex<BTreeSet<String>>,
}

impl Identity {
    /// The identity of the process `id`, in `cluster` (0: no cluster yet, or a library user
    /// that uses none; traffic must then name 0 too).
    #[must_use]
    pub fn new(id: PeerId, cluster: u64, metrics: Arc<TransportMetrics>) -> Identity {
        Identity {
            id,
            cluster: AtomicU64::new(cluster),
            metrics,
            logged: Mutex::new(BTreeSet::new()),
        }
    }

    /// This process's peer id.
    #[must_use]
    pub fn id(&self) -> &PeerId {
        &self.id
    }

    /// The cluster this process belongs to (0: none).
    #[must_use]
    pub fn cluster(&self) -> u64 {
        self.cluster.load(Ordering::Acquire)
    }

    /// Sets the cluster (once a store learns or makes it).
    pub fn set_cluster(&self, cluster: u64) {
        self.cluster.store(cluster, Ordering::Release);
    }

    /// Refuses traffic that names another receiver: counts it by `what` and reason, and
    /// logs it once per `source` (the sender's id or address).
    pub fn check(&self, to: &str, cluster: u64, what: &str, source: &str) -> Result<(), Refused> {
        let refused = if to != self.id.as_str() {
            Refused::WrongPeer {
                named: to.chars().take(PEER_ID_BYTES_MAX).collect(),
            }
        } else if cluster != self.cluster() {
            Refused::WrongCluster { named: cluster }
        } else {
            return Ok(());
        };
        let reason = match refused {
            Refused::WrongPeer { .. } => IdentityRefusal::WrongPeer,
            Refused::WrongCluster { .. } => IdentityRefusal::WrongCluster,
        };
        self.metrics.identity_refused(reason);
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.len() < LOGGED_SOURCES_MAX && logged.insert(source.to_string()) {
            tracing::warn!(
                what,
                source,
                ours = %self.id,
                our_cluster = format_args!("{:016x}", self.cluster()),
                named = %self.describe(&refused),
                "refused: meant for another peer or cluster (logged once per source)"
            );
        }
        Err(refused)
    }

    /// A sentence for a refusal, for logs and error answers.
    #[must_use]
    pub fn describe(&self, refused: &Refused) -> String {
        match refused {
            Refused::WrongPeer { named } => {
                format!("meant for peer {named}, but this is {}", self.id)
            }
            Refused::WrongCluster { named } => format!(
                "meant for cluster {named:016x}, but {} belongs to cluster {:016x}",
                self.id,
                self.cluster()
            ),
        }
    }
}

struct Book {
    entries: BTreeMap<PeerId, String>,
    path: Option<PathBuf>,
}

/// Peer id → address, shared by the transport (which dials it), the server (which learns
/// from what senders announce) and the store. Cheap to clone. See the module notes.
#[derive(Clone)]
pub struct AddressBook {
    inner: Arc<RwLock<Book>>,
    version: Arc<AtomicU64>,
}

impl Default for AddressBook {
    fn default() -> AddressBook {
        AddressBook::in_memory()
    }
}

impl std::fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

impl AddressBook {
    /// An empty book kept in memory only.
    #[must_use]
    pub fn in_memory() -> AddressBook {
        AddressBook {
            inner: Arc::new(RwLock::new(Book {
                entries: BTreeMap::new(),
                path: None,
            })),
            version: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The book kept in the file `path` (read now if it exists; rewritten atomically and
    /// durably at every change). A damaged file is refused, naming it.
    pub fn open(path: impl Into<PathBuf>) -> Result<AddressBook, String> {
        let path = path.into();
        let entries = load(&path)?.unwrap_or_default();
        Ok(AddressBook {
            inner: Arc::new(RwLock::new(Book {
                entries,
                path: Some(path),
            })),
            version: Arc::new(AtomicU64::new(0)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumped at every change: a connection compares it to know when to re-resolve.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The address of `id`, if known.
    #[must_use]
    pub fn get(&self, id: &PeerId) -> Option<String> {
        self.read().entries.get(id).cloned()
    }

    /// The peer known at `address`, if any.
    #[must_use]
    pub fn id_at(&self, address: &str) -> Option<PeerId> {
        self.read()
            .entries
            .iter()
            .find(|(_, a)| a.as_str() == address)
            .map(|(id, _)| id.clone())
    }

    /// Every entry, by id.
    #[must_use]
    pub fn entries(&self) -> Vec<(PeerId, String)> {
        self.read()
            .entries
            .iter()
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect()
    }

    /// Records that `id` is at `address` (an address holds one peer: another id recorded
    /// there loses it). Returns whether anything changed. Refused: an invalid id or
    /// address, a full book, or a change that cannot be saved (the book is then unchanged).
    pub fn set(&self, id: &PeerId, address: &str) -> Result<bool, String> {
        // Every received frame announces its sender's address: the common case, nothing
        // new, costs a read lock and a comparison.
        if self.read().entries.get(id).map(String::as_str) == Some(address) {
            return Ok(false);
        }
        check_address(address)?;
        if id.as_str().is_empty() || id.as_str().len() > PEER_ID_BYTES_MAX {
            return Err(format!(
                "a peer id must have 1 to {PEER_ID_BYTES_MAX} bytes"
            ));
        }
        let mut book = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if book.entries.get(id).map(String::as_str) == Some(address) {
            return Ok(false);
        }
        if !book.entries.contains_key(id) && book.entries.len() >= ADDRESS_BOOK_ENTRIES_MAX {
            return Err(format!(
                "the address book is full ({ADDRESS_BOOK_ENTRIES_MAX} entries)"
            ));
        }
        let mut entries = book.entries.clone();
        entries.retain(|other, a| other == id || a.as_str() != address);
        entries.insert(id.clone(), address.to_string());
        if let Some(path) = &book.path {
            save(path, &entries)?;
        }
        book.entries = entries;
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Forgets `id`. Returns whether it was known.
    pub fn remove(&self, id: &PeerId) -> Result<bool, String> {
        let mut book = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if !book.entries.contains_key(id) {
            return Ok(false);
        }
        let mut entries = book.entries.clone();
        entries.remove(id);
        if let Some(path) = &book.path {
            save(path, &entries)?;
        }
        book.entries = entries;
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Where to dial `id`: its recorded address; failing that, the id itself when it has
    /// the shape `host:port` (library users who name their processes by address).
    #[must_use]
    pub fn resolve(&self, id: &PeerId) -> Option<String> {
        self.get(id).or_else(|| {
            check_address(id.as_str())
                .ok()
                .map(|()| id.as_str().to_string())
        })
    }
}

fn render(entries: &BTreeMap<PeerId, String>) -> String {
    let mut body = format!("{BOOK_HEADER}\n");
    for (id, address) in entries {
        let _ = writeln!(body, "{} {address}", id.as_str());
    }
    flotilla_storage::sealed::seal(&body)
}

fn parse(text: &str, path: &Path) -> Result<BTreeMap<PeerId, String>, String> {
    let bad = |what: String| format!("{}: {what}", path.display());
    let body = flotilla_storage::sealed::unseal(text, path, "an address book")?;
    let mut lines = body.lines();
    if lines.next() != Some(BOOK_HEADER) {
        return Err(bad(format!("first line is not {BOOK_HEADER:?}")));
    }
    let mut entries = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let (id, address) = line
            .split_once(' ')
            .filter(|(id, a)| !id.is_empty() && check_address(a).is_ok())
            .ok_or_else(|| bad(format!("line {} is malformed: {line:?}", n + 2)))?;
        entries.insert(PeerId::new(id), address.to_string());
    }
    Ok(entries)
}

fn load(path: &Path) -> Result<Option<BTreeMap<PeerId, String>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, BOOK_FILE_BYTES_MAX),
        &mut text,
    )
    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, path).map(Some)
}

fn save(path: &Path, entries: &BTreeMap<PeerId, String>) -> Result<(), String> {
    flotilla_storage::sealed::write_atomically(path, &render(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-identity-{name}-{}-{:x}",
            std::process::id(),
            random_nonzero_u64()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn store_ids_are_sixteen_hex_digits_and_random() {
        let a = StoreId::random();
        let b = StoreId::random();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(StoreId::parse(&a.to_string()), Ok(a));
        assert!(StoreId::parse("0000000000000000").is_err());
        assert!(StoreId::parse("12345").is_err());
        assert!(StoreId::parse("127.0.0.1:8081").is_err());
        assert!(StoreId::parse("+123456789abcdef").is_err());
    }

    #[test]
    fn an_address_holds_one_peer_and_the_book_survives_a_reopen() {
        let dir = scratch("book");
        let path = dir.join("addresses");
        let book = AddressBook::open(&path).expect("open");
        let (a, b) = (PeerId::new("aaaa"), PeerId::new("bbbb"));
        assert_eq!(book.set(&a, "127.0.0.1:1"), Ok(true));
        assert_eq!(book.set(&a, "127.0.0.1:1"), Ok(false));
        assert_eq!(book.set(&b, "127.0.0.1:2"), Ok(true));
        // b moves to a's address: a no longer has one.
        assert_eq!(book.set(&b, "127.0.0.1:1"), Ok(true));
        assert_eq!(book.get(&a), None);
        assert_eq!(book.id_at("127.0.0.1:1"), Some(b.clone()));
        let reopened = AddressBook::open(&path).expect("reopen");
        assert_eq!(reopened.entries(), vec![(b, "127.0.0.1:1".to_string())]);
        assert!(book.set(&a, "no port").is_err());
        assert!(book.set(&a, "host:99999").is_err());
    }

    #[test]
    fn a_damaged_book_is_refused_naming_the_file() {
        let dir = scratch("book");
        let path = dir.join("addresses");
        let book = AddressBook::open(&path).expect("open");
        book.set(&PeerId::new("aaaa"), "127.0.0.1:1").expect("set");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("127.0.0.1:1", "127.0.0.1:2")).expect("write");
        let error = AddressBook::open(&path).expect_err("damaged");
        assert!(
            error.contains("checksum mismatch") && error.contains("addresses"),
            "{error}"
        );
    }

    #[test]
    fn identity_refuses_another_peer_or_cluster_and_counts() {
        let metrics = Arc::new(TransportMetrics::default());
        let identity = Identity::new(PeerId::new("aaaa"), 7, metrics.clone());
        assert_eq!(identity.check("aaaa", 7, "frame", "x"), Ok(()));
        assert!(matches!(
            identity.check("bbbb", 7, "frame", "x"),
            Err(Refused::WrongPeer { .. })
        ));
        assert!(matches!(
            identity.check("aaaa", 8, "frame", "x"),
            Err(Refused::WrongCluster { named: 8 })
        ));
        assert_eq!(metrics.identity_refusals(IdentityRefusal::WrongPeer), 1);
        assert_eq!(metrics.identity_refusals(IdentityRefusal::WrongCluster), 1);
    }
}
