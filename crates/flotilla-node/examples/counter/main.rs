//! The counter example: a replicated `i64` counter, the library's quick-start (in the
//! tradition of SOFAJRaft's counter example). Built only on flotilla-node's public API.
//!
//! ```text
//! counter server --addr 127.0.0.1:8081 --peers 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083 \
//!                --data-dir /tmp/counter/8081
//! counter client --servers 127.0.0.1:9081,127.0.0.1:9082,127.0.0.1:9083 incr 5
//! counter client --servers 127.0.0.1:9081,127.0.0.1:9082,127.0.0.1:9083 get
//! ```
//!
//! A server hosts one raft group (group 1) on a `NodeManager`. Raft traffic uses the gRPC
//! transport on `--addr` (that address is the peer id). Clients use a one-line text protocol
//! over TCP on the raft port + 1000 (8081 -> 9081), loopback only:
//!
//! ```text
//! incr N   ->  ok <new value>          applied through Node::apply
//! get      ->  ok <value>              linearizable: Node::read_index, then the local counter
//! leader   ->  ok <own client address>     when this server is the leader
//! any      ->  not-leader <client address of the leader, or ->
//!              busy | unknown <why> | err <why>
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_node::grpc::{GrpcOptions, GrpcServer, GrpcTransport};
use flotilla_node::{
    ApplyIter, ManagerOptions, Node, NodeError, NodeManager, PeerId, RaftError, ReadMode,
    StateMachine,
};
use flotilla_storage::{SnapshotReader, SnapshotWriter};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The one raft group every server hosts.
const GROUP: u64 = 1;
/// Client port = raft port + this.
const CLIENT_PORT_OFFSET: u16 = 1000;
/// Longest request line a server reads (and longest answer a client reads).
const LINE_MAX: u64 = 256;
/// How many servers the client tries (following hints included) before giving up.
const CLIENT_ATTEMPTS: usize = 20;

const USAGE: &str = "\
usage:
  counter server --addr HOST:PORT --peers HOST:PORT,HOST:PORT,... --data-dir DIR
      raft (gRPC) on --addr, clients on the same host at port + 1000; loopback only
  counter client --servers HOST:PORT,... (incr N | get | leader)
      --servers lists the servers' client addresses (raft port + 1000)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => parse_server(&args[1..]).and_then(run_server),
        Some("client") => parse_client(&args[1..]).and_then(run_client),
        Some(other) => Err(format!(
            "unknown command {other:?}: expected server or client"
        )),
        None => Err("missing command: expected server or client".to_string()),
    };
    if let Err(why) = result {
        eprintln!("counter: {why}\n\n{USAGE}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// The state machine: an i64, each entry adds its 8 little-endian bytes.
// ---------------------------------------------------------------------------------------

struct Counter {
    value: Arc<AtomicI64>,
}

impl StateMachine for Counter {
    fn on_apply(&mut self, iter: &mut ApplyIter) {
        for task in iter {
            let result = match <[u8; 8]>::try_from(&task.data[..]) {
                Ok(bytes) => {
                    let value = self.value.load(Ordering::SeqCst) + i64::from_le_bytes(bytes);
                    self.value.store(value, Ordering::SeqCst);
                    Ok(Bytes::copy_from_slice(&value.to_le_bytes()))
                }
                // Every replica skips a malformed entry the same way: state stays in step.
                Err(_) => Err(format!("entry of {} bytes, expected 8", task.data.len())),
            };
            if let Some(completion) = task.completion {
                completion.complete(result);
            }
        }
    }

    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String> {
        let value = self.value.load(Ordering::SeqCst);
        writer
            .append("counter", &value.to_le_bytes())
            .map_err(|e| e.to_string())
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let bytes = reader
            .read_chunk("counter", 0, 8)
            .map_err(|e| e.to_string())?;
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| "snapshot file \"counter\" is not 8 bytes".to_string())?;
        self.value
            .store(i64::from_le_bytes(bytes), Ordering::SeqCst);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------

struct ServerArgs {
    addr: SocketAddr,
    peers: Vec<SocketAddr>,
    data_dir: PathBuf,
}

fn parse_server(args: &[String]) -> Result<ServerArgs, String> {
    let (mut addr, mut peers, mut data_dir) = (None, None, None);
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(parse_loopback("--addr", value()?)?),
            "--peers" => {
                let list = value()?;
                let parsed: Result<Vec<_>, _> = list
                    .split(',')
                    .map(|p| parse_loopback("--peers", p.trim()))
                    .collect();
                peers = Some(parsed?);
            }
            "--data-dir" => data_dir = Some(PathBuf::from(value()?)),
            other => return Err(format!("server: unknown argument {other:?}")),
        }
    }
    let addr = addr.ok_or("server: missing --addr")?;
    let peers = peers.ok_or("server: missing --peers")?;
    let data_dir = data_dir.ok_or("server: missing --data-dir")?;
    if !peers.contains(&addr) {
        return Err(format!("server: --peers must include --addr {addr}"));
    }
    client_addr_of(&addr)?;
    Ok(ServerArgs {
        addr,
        peers,
        data_dir,
    })
}

/// `what`'s value as a loopback socket address (the example never listens elsewhere).
fn parse_loopback(what: &str, text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("{what}: {text:?} is not HOST:PORT ({e})"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{what}: {addr} is not a loopback address (use 127.0.0.1)"
        ));
    }
    Ok(addr)
}

/// The client address of the server whose raft address is `raft`.
fn client_addr_of(raft: &SocketAddr) -> Result<SocketAddr, String> {
    let port = raft
        .port()
        .checked_add(CLIENT_PORT_OFFSET)
        .ok_or_else(|| format!("port {} + {CLIENT_PORT_OFFSET} is too large", raft.port()))?;
    Ok(SocketAddr::new(raft.ip(), port))
}

/// The client address of a leader hint, or "-" when there is none (or it is unusable).
fn hint_of(leader: Option<&PeerId>) -> String {
    leader
        .and_then(|peer| peer.as_str().parse::<SocketAddr>().ok())
        .and_then(|raft| client_addr_of(&raft).ok())
        .map_or_else(|| "-".to_string(), |client| client.to_string())
}

fn run_server(args: ServerArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServerArgs) -> Result<(), String> {
    // The gRPC listener's real address is this process's peer id.
    let raft = GrpcServer::bind(&args.addr.to_string())
        .await
        .map_err(|e| format!("cannot listen for raft on {}: {e}", args.addr))?;
    let client_addr = client_addr_of(&args.addr)?;
    let clients = TcpListener::bind(client_addr)
        .await
        .map_err(|e| format!("cannot listen for clients on {client_addr}: {e}"))?;

    let mut options = ManagerOptions::new(raft.address().clone(), &args.data_dir);
    // A snapshot every 30 s (300 ticks of 100 ms) so restarts show recovery from one.
    options.raft.snapshot_interval_ticks = 300;
    let transport = Arc::new(GrpcTransport::new(GrpcOptions::default()));
    let manager = NodeManager::open(options, transport)
        .await
        .map_err(|e| format!("cannot open {}: {e}", args.data_dir.display()))?;
    let _raft_server = raft.serve(Arc::new(manager.inbox()));

    let value = Arc::new(AtomicI64::new(0));
    let peers = args
        .peers
        .iter()
        .map(|p| PeerId::new(&p.to_string()))
        .collect();
    let counter = Counter {
        value: value.clone(),
    };
    let node = manager
        .add_group(GROUP, peers, counter)
        .await
        .map_err(|e| format!("cannot start group {GROUP}: {e}"))?;
    println!(
        "server {}: raft on {}, clients on {client_addr}, data in {} ({})",
        args.addr,
        args.addr,
        args.data_dir.display(),
        if manager.was_fresh() {
            "fresh"
        } else {
            "recovered"
        },
    );
    tokio::spawn(report_leader_changes(node.clone(), value.clone()));

    loop {
        let (stream, _) = clients
            .accept()
            .await
            .map_err(|e| format!("accepting a client on {client_addr}: {e}"))?;
        tokio::spawn(serve_client(stream, node.clone(), value.clone()));
    }
}

/// Prints every change of leader this server sees (and what it waits for meanwhile).
async fn report_leader_changes(node: Node, value: Arc<AtomicI64>) {
    let mut last: Option<Option<PeerId>> = None;
    loop {
        let leader = node.leader_id();
        if last.as_ref() != Some(&leader) {
            match &leader {
                Some(l) if l == node.peer_id() => println!(
                    "leader is {l} (me); counter = {}",
                    value.load(Ordering::SeqCst)
                ),
                Some(l) => println!("leader is {l}"),
                None => println!("waiting for a leader to be elected..."),
            }
            last = Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Answers one client connection, one line per request, until it closes.
async fn serve_client(stream: TcpStream, node: Node, value: Arc<AtomicI64>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        // Bounded read: a client never makes the server buffer more than LINE_MAX bytes.
        let answer = match (&mut read).take(LINE_MAX).read_line(&mut line).await {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') => "err request line too long".to_string(),
            Ok(_) => answer(line.trim(), &node, &value).await,
            Err(e) => format!("err unreadable request: {e}"),
        };
        let closing = answer.starts_with("err request line") || answer.starts_with("err unread");
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
            || closing
        {
            return;
        }
    }
}

async fn answer(request: &str, node: &Node, value: &AtomicI64) -> String {
    let words: Vec<&str> = request.split_whitespace().collect();
    match words.as_slice() {
        ["incr", n] => {
            let Ok(n) = n.parse::<i64>() else {
                return format!("err incr: {n:?} is not an integer");
            };
            match node
                .apply(Bytes::copy_from_slice(&n.to_le_bytes()), None)
                .await
            {
                Ok(result) => match <[u8; 8]>::try_from(&result[..]) {
                    Ok(bytes) => format!("ok {}", i64::from_le_bytes(bytes)),
                    Err(_) => "err the state machine answered no value".to_string(),
                },
                Err(e) => refusal(&e),
            }
        }
        // read_index answers once this peer applied everything committed before the read
        // began (confirmed by the leader), so the local counter is linearizable.
        ["get"] => match node.read_index(ReadMode::ReadIndex).await {
            Ok(_) => format!("ok {}", value.load(Ordering::SeqCst)),
            Err(e) => refusal(&e),
        },
        // Only a server that believes it leads says so; the others point to their hint.
        ["leader"] if node.is_leader() => format!("ok {}", hint_of(Some(node.peer_id()))),
        ["leader"] => format!("not-leader {}", hint_of(node.leader_id().as_ref())),
        _ => format!("err unknown request {request:?}: expected incr N, get or leader"),
    }
}

fn refusal(error: &NodeError) -> String {
    match error {
        NodeError::Raft(RaftError::NotLeader { leader }) => {
            format!("not-leader {}", hint_of(leader.as_ref()))
        }
        e if e.is_busy() => "busy".to_string(),
        NodeError::Unknown(why) => format!("unknown {why}"),
        e => format!("err {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------------------

struct ClientArgs {
    servers: Vec<SocketAddr>,
    request: String,
    /// Safe to send again after a failure whose outcome is unknown (reads are).
    retry_unknown: bool,
}

fn parse_client(args: &[String]) -> Result<ClientArgs, String> {
    let mut servers = None;
    let mut words = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--servers" => {
                let list = rest.next().ok_or("--servers needs a value")?;
                let parsed: Result<Vec<_>, _> = list
                    .split(',')
                    .map(|s| parse_loopback("--servers", s.trim()))
                    .collect();
                servers = Some(parsed?);
            }
            flag if flag.starts_with("--") => {
                return Err(format!("client: unknown argument {flag:?}"))
            }
            word => words.push(word),
        }
    }
    let servers = servers.ok_or("client: missing --servers")?;
    let (request, retry_unknown) = match words.as_slice() {
        ["incr", n] => {
            n.parse::<i64>()
                .map_err(|e| format!("incr: {n:?} is not an integer ({e})"))?;
            (format!("incr {n}"), false)
        }
        ["incr"] => return Err("incr needs a number, e.g. incr 5".to_string()),
        ["get"] => ("get".to_string(), true),
        ["leader"] => ("leader".to_string(), true),
        [] => return Err("client: missing request: incr N, get or leader".to_string()),
        other => return Err(format!("client: unknown request {:?}", other.join(" "))),
    };
    Ok(ClientArgs {
        servers,
        request,
        retry_unknown,
    })
}

fn run_client(args: ClientArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let value = runtime.block_on(request(&args))?;
    println!("{value}");
    Ok(())
}

/// Sends the request, following leader hints, until a server answers `ok` or
/// `CLIENT_ATTEMPTS` tries are spent.
async fn request(args: &ClientArgs) -> Result<String, String> {
    let mut next_server = 0;
    let mut target = args.servers[0];
    let mut last_error = String::new();
    for attempt in 1..=CLIENT_ATTEMPTS {
        let reply = match exchange(target, &args.request).await {
            Ok(reply) => reply,
            Err(Failure::NotSent(why)) => {
                eprintln!("{target}: {why}; trying the next server");
                last_error = format!("{target}: {why}");
                next_server = (next_server + 1) % args.servers.len();
                target = args.servers[next_server];
                continue;
            }
            Err(Failure::Unknown(why)) if args.retry_unknown => {
                eprintln!("{target}: {why}; trying the next server");
                last_error = format!("{target}: {why}");
                next_server = (next_server + 1) % args.servers.len();
                target = args.servers[next_server];
                continue;
            }
            Err(Failure::Unknown(why)) => {
                return Err(format!(
                    "{target}: {why}: the increment may or may not have been applied"
                ))
            }
        };
        let (status, detail) = reply.split_once(' ').unwrap_or((reply.as_str(), ""));
        match status {
            "ok" => return Ok(detail.to_string()),
            "not-leader" => {
                last_error = format!("{target}: not the leader");
                match detail.parse::<SocketAddr>() {
                    Ok(leader) if leader != target => {
                        eprintln!("{target}: not the leader; following the hint to {leader}");
                        target = leader;
                    }
                    _ => {
                        next_server = (next_server + 1) % args.servers.len();
                        target = args.servers[next_server];
                        eprintln!(
                            "no leader known yet (attempt {attempt}/{CLIENT_ATTEMPTS}); \
                             waiting 300 ms for an election, then asking {target}"
                        );
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            "busy" => {
                eprintln!("{target}: busy; waiting 100 ms before retrying");
                last_error = format!("{target}: busy");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            "unknown" if !args.retry_unknown => {
                return Err(format!(
                    "{target}: outcome unknown ({detail}): the increment may or may not \
                     have been applied"
                ))
            }
            "unknown" | "err" if args.retry_unknown => {
                eprintln!("{target}: {detail}; retrying in 300 ms");
                last_error = format!("{target}: {detail}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            "err" => return Err(format!("{target} refused: {detail}")),
            _ => return Err(format!("{target} answered something unexpected: {reply:?}")),
        }
    }
    Err(format!(
        "no server answered after {CLIENT_ATTEMPTS} attempts (servers: {}); last error: {}",
        args.servers
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(","),
        last_error
    ))
}

enum Failure {
    /// The request never reached the server: safe to send elsewhere.
    NotSent(String),
    /// The request may have reached the server, but no answer came back.
    Unknown(String),
}

/// One request, one answer line, with timeouts.
async fn exchange(server: SocketAddr, request: &str) -> Result<String, Failure> {
    let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(server));
    let mut stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::NotSent(format!("cannot connect ({e})"))),
        Err(_) => return Err(Failure::NotSent("no connection within 1 s".to_string())),
    };
    if let Err(e) = stream.write_all(format!("{request}\n").as_bytes()).await {
        // Part of the line may have arrived: the outcome is unknown.
        return Err(Failure::Unknown(format!("sending failed ({e})")));
    }
    let mut reader = BufReader::new(stream).take(LINE_MAX);
    let mut line = String::new();
    // A write waits for a quorum (and perhaps an election): allow 10 s.
    match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 && line.ends_with('\n') => Ok(line.trim().to_string()),
        Ok(Ok(_)) => Err(Failure::Unknown(
            "connection closed without a whole answer".to_string(),
        )),
        Ok(Err(e)) => Err(Failure::Unknown(format!("reading the answer failed ({e})"))),
        Err(_) => Err(Failure::Unknown("no answer within 10 s".to_string())),
    }
}
