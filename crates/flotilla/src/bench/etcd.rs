//! The etcd target of `flotilla bench`: etcd's v3 API through the `etcd-client` crate
//! (feature `etcd`). Without the feature the target is refused with how to build it.

#[cfg(feature = "etcd")]
mod enabled {
    use std::time::Duration;

    use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

    /// Which etcd members the bench talks to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum EtcdConnect {
        /// The leader only (etcd's own benchmark guide: "write to leader"), so no request
        /// is forwarded by a follower: etcd's best case.
        Leader,
        /// Every endpoint given, balanced by the client.
        All,
    }

    /// A connected etcd client.
    #[derive(Clone)]
    pub struct Etcd {
        kv: KvClient,
        serializable: bool,
    }

    fn options(timeout: Duration) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10))
    }

    fn url(endpoint: &str) -> String {
        if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        }
    }

    /// The client URLs of the current leader, asked of the cluster at `endpoints`.
    async fn leader_urls(endpoints: &[String], timeout: Duration) -> Result<Vec<String>, String> {
        let urls: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
        let mut client = Client::connect(&urls, Some(options(timeout)))
            .await
            .map_err(|e| format!("cannot connect to etcd at {}: {e}", endpoints.join(",")))?;
        let status = client
            .status()
            .await
            .map_err(|e| format!("etcd status: {e}"))?;
        let leader = status.leader();
        let members = client
            .member_list()
            .await
            .map_err(|e| format!("etcd member list: {e}"))?;
        let found = members
            .members()
            .iter()
            .find(|m| m.id() == leader)
            .map(|m| m.client_urls().to_vec())
            .filter(|urls| !urls.is_empty());
        found.ok_or_else(|| format!("etcd names leader {leader:x} but lists no client URL for it"))
    }

    impl Etcd {
        /// Connects; `serializable` reads are local to the member (etcd's
        /// `--consistency=s`), otherwise linearizable (ReadIndex).
        pub async fn connect(
            endpoints: &[String],
            connect: EtcdConnect,
            serializable: bool,
            timeout: Duration,
        ) -> Result<(Etcd, Vec<String>), String> {
            let urls = match connect {
                EtcdConnect::Leader => leader_urls(endpoints, timeout).await?,
                EtcdConnect::All => endpoints.iter().map(|e| url(e)).collect(),
            };
            let client = Client::connect(&urls, Some(options(timeout)))
                .await
                .map_err(|e| format!("cannot connect to etcd at {}: {e}", urls.join(",")))?;
            Ok((
                Etcd {
                    kv: client.kv_client(),
                    serializable,
                },
                urls,
            ))
        }

        /// One put.
        pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
            self.kv
                .put(key, value, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }

        /// One get; answers whether the key was found.
        pub async fn get(&mut self, key: Vec<u8>) -> Result<bool, String> {
            let options = self
                .serializable
                .then(|| GetOptions::new().with_serializable());
            self.kv
                .get(key, options)
                .await
                .map(|reply| !reply.kvs().is_empty())
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(feature = "etcd")]
pub use enabled::{Etcd, EtcdConnect};

#[cfg(not(feature = "etcd"))]
mod disabled {
    use std::time::Duration;

    /// Which etcd members the bench talks to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum EtcdConnect {
        /// The leader only.
        Leader,
        /// Every endpoint given.
        All,
    }

    /// Stand-in: this build has no etcd client.
    #[derive(Clone)]
    pub enum Etcd {}

    impl Etcd {
        pub async fn connect(
            _endpoints: &[String],
            _connect: EtcdConnect,
            _serializable: bool,
            _timeout: Duration,
        ) -> Result<(Etcd, Vec<String>), String> {
            Err(
                "this flotilla was built without the etcd client: rebuild with \
                 `cargo build --release -p flotilla --features etcd` (its build needs protoc: \
                 `apt-get install protobuf-compiler`)"
                    .into(),
            )
        }

        pub async fn put(&mut self, _key: Vec<u8>, _value: Vec<u8>) -> Result<(), String> {
            match *self {}
        }

        pub async fn get(&mut self, _key: Vec<u8>) -> Result<bool, String> {
            match *self {}
        }
    }
}

#[cfg(not(feature = "etcd"))]
pub use disabled::{Etcd, EtcdConnect};

impl std::str::FromStr for EtcdConnect {
    type Err = String;

    fn from_str(text: &str) -> Result<EtcdConnect, String> {
        match text {
            "leader" => Ok(EtcdConnect::Leader),
            "all" => Ok(EtcdConnect::All),
            other => Err(format!(
                "unknown etcd connection mode {other:?}: expected leader or all"
            )),
        }
    }
}
