//! How the queue reaches Redis, in each of the three shapes one `[redis]` section can name: one
//! node (`url`), the master the Sentinels name (`sentinel`), or a Redis Cluster (`cluster`, seeds
//! only: the rest is discovered, `MOVED`/`ASK` followed, replicas found after a failover). A
//! [`Conn`] is one connection of any shape; every queue command goes through one.
//!
//! Every key of a queue shares one hash tag, so in a Cluster all of them live in one slot and each
//! script and transaction runs on that slot's master. Keyless commands whose answer depends on
//! that node (`WAIT`, `PING`) are sent to it by [`Conn::query_at`].

use super::{QueueError, RedisSettings, SentinelSettings, is_connection_error};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult};
use redis::{FromRedisValue, TlsCertificates, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long connecting to one node may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the queue's Redis is: resolved once from the settings (the password read from its
/// source, the CA file read), then asked for connections.
pub(super) enum Topology {
    /// One node.
    Node(Box<Client>),
    /// The master of `master`, as the Sentinels name it now.
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
    /// A Redis Cluster, from its seeds.
    Cluster(Box<ClusterSeeds>),
}

/// What a Cluster connection is built from (one per purpose: each has its own timeouts).
pub(super) struct ClusterSeeds {
    seeds: Vec<ConnectionInfo>,
    username: Option<String>,
    password: Option<String>,
    certificates: Option<TlsCertificates>,
    /// The seed the next notice subscription tries first.
    next_seed: AtomicUsize,
}

impl Topology {
    /// Resolve the settings: which shape, the ACL user and password (read now from its
    /// `env:`/`file:` source), the private CA (`tls_ca_file`).
    ///
    /// # Errors
    /// [`QueueError::Settings`] naming the field: none or several of `url`, `cluster` and
    /// `sentinel` set, an address that does not parse, a password source that cannot be read.
    pub(super) fn from_settings(settings: &RedisSettings) -> Result<Self, QueueError> {
        let password = match &settings.password {
            Some(source) => Some(read_password(source, "redis.password")?),
            None => None,
        };
        let username = settings.username.clone();
        let certificates = match &settings.tls_ca_file {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    QueueError::Settings(format!("redis.tls_ca_file: cannot read {}: {e}", path.display()))
                })?),
            }),
            None => None,
        };
        let shapes = [settings.url.is_some(), !settings.cluster.is_empty(), settings.sentinel.is_some()];
        match shapes {
            [true, false, false] => {
                let url = settings.url.as_deref().unwrap_or_default();
                let info = parse(url, "redis.url")?;
                let client = client(info, username.as_deref(), password.as_deref(), certificates.as_ref())
                    .map_err(|e| QueueError::Settings(format!("redis.url {:?}: {e}", super::redact(url))))?;
                Ok(Self::Node(Box::new(client)))
            }
            [false, true, false] => {
                let seeds =
                    settings.cluster.iter().map(|url| parse(url, "redis.cluster")).collect::<Result<Vec<_>, _>>()?;
                let seeds = ClusterSeeds { seeds, username, password, certificates, next_seed: AtomicUsize::new(0) };
                // Build one now so a bad seed list is refused at start, not at the first command.
                seeds.client(Duration::from_secs(1))?;
                Ok(Self::Cluster(Box::new(seeds)))
            }
            [false, false, true] => {
                let sentinel = settings.sentinel.as_ref().expect("checked");
                Ok(Self::Sentinel(Arc::new(tokio::sync::Mutex::new(sentinel_client(
                    sentinel,
                    username.as_deref(),
                    password.as_deref(),
                    certificates,
                )?))))
            }
            _ => Err(QueueError::Settings(
                "set exactly one of redis.url (one node), redis.cluster (seed nodes) and redis.sentinel".into(),
            )),
        }
    }

    /// A connection whose commands fail after `response_timeout`. Lazy: nothing is sent until
    /// its first command, so a daemon or worker starts while Redis is down.
    pub(super) fn connect(&self, response_timeout: Duration) -> Result<Conn, QueueError> {
        match self {
            Self::Node(client) => {
                ConnectionManager::new_lazy_with_config((**client).clone(), manager_config(response_timeout))
                    .map(Conn::Node)
                    .map_err(|e| QueueError::Settings(e.to_string()))
            }
            Self::Sentinel(sentinel) => Ok(Conn::Sentinel(SentinelConn(Arc::new(SentinelShared {
                sentinel: sentinel.clone(),
                config: manager_config(response_timeout),
                response_timeout,
                current: std::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                last_failure: std::sync::Mutex::new(None),
            })))),
            Self::Cluster(seeds) => {
                let config =
                    ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(response_timeout);
                Ok(Conn::Cluster(seeds.client(response_timeout)?.get_pending_async_connection_with_config(config)))
            }
        }
    }

    /// A pub/sub connection: to the node, to the master now, or to a Cluster node (a Cluster
    /// sends every `PUBLISH` to all its nodes), trying the seeds in turn.
    pub(super) async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Self::Node(client) => client.get_async_pubsub().await,
            Self::Sentinel(sentinel) => {
                let asked = tokio::time::timeout(CONNECT_TIMEOUT * 3, async {
                    let client = sentinel.lock().await.async_get_client().await?;
                    client.get_async_pubsub().await
                });
                asked.await.map_err(|_| sentinel_timed_out())?
            }
            Self::Cluster(seeds) => {
                let first = seeds.next_seed.fetch_add(1, Ordering::Relaxed);
                let mut last = None;
                for i in 0..seeds.seeds.len() {
                    let info = seeds.seeds[(first + i) % seeds.seeds.len()].clone();
                    let (username, password) = (seeds.username.as_deref(), seeds.password.as_deref());
                    match client(info, username, password, seeds.certificates.as_ref()) {
                        Ok(client) => match client.get_async_pubsub().await {
                            Ok(pubsub) => return Ok(pubsub),
                            Err(e) => last = Some(e),
                        },
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| redis::RedisError::from(std::io::Error::other("no cluster seed"))))
            }
        }
    }
}

impl ClusterSeeds {
    fn client(&self, response_timeout: Duration) -> Result<ClusterClient, QueueError> {
        let mut builder = ClusterClient::builder(self.seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            // A failover takes seconds: a caller is answered 503 within its timeout rather than
            // waiting it out; the worker's and audit writer's own loops retry.
            .overall_response_timeout(Some(response_timeout))
            .retries(4)
            .min_retry_wait(20)
            .max_retry_wait(500);
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if let Some(certificates) = &self.certificates {
            builder = builder.certs(certificates.clone());
        }
        builder.build().map_err(|e| QueueError::Settings(format!("redis.cluster: {e}")))
    }
}

fn parse(url: &str, field: &str) -> Result<ConnectionInfo, QueueError> {
    let shown = super::redact(url);
    if super::holds_password(url) {
        return Err(QueueError::Settings(format!(
            "{field} {shown:?} holds a password: give it as redis.password = \"env:VARIABLE\" or \"file:PATH\""
        )));
    }
    url.into_connection_info().map_err(|e| QueueError::Settings(format!("{field} {shown:?}: {e}")))
}

/// A client of the node `info` names, with the configured ACL user and password (else the URL's
/// own) and the private CA, where given.
fn client(
    info: ConnectionInfo,
    username: Option<&str>,
    password: Option<&str>,
    certificates: Option<&TlsCertificates>,
) -> RedisResult<Client> {
    let info = with_auth(info, username, password);
    match certificates {
        Some(certificates) => Client::build_with_tls(info, certificates.clone()),
        None => Client::open(info),
    }
}

/// `info` with the configured ACL user and password, where given (else the URL's own).
fn with_auth(info: ConnectionInfo, username: Option<&str>, password: Option<&str>) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(username) = username {
        redis = redis.set_username(username);
    }
    if let Some(password) = password {
        redis = redis.set_password(password);
    }
    info.set_redis_settings(redis)
}

/// The password from its source (`env:VARIABLE` or `file:PATH`), as tool secrets are read.
fn read_password(source: &str, field: &str) -> Result<String, QueueError> {
    let settings = |e: String| QueueError::Settings(format!("{field}: {e}"));
    let parsed = guild_vocab::egress::secrets::SecretSource::parse(source).map_err(settings)?;
    let secret = guild_vocab::egress::secrets::Secret::read("redis_password", &parsed).map_err(settings)?;
    Ok(guild_vocab::egress::secrets::fill("{{secret:redis_password}}", &[secret]))
}

fn sentinel_client(
    sentinel: &SentinelSettings,
    username: Option<&str>,
    password: Option<&str>,
    certificates: Option<TlsCertificates>,
) -> Result<SentinelClient, QueueError> {
    let settings = |e: redis::RedisError| QueueError::Settings(format!("redis.sentinel: {e}"));
    let nodes = sentinel.nodes.iter().map(|url| parse(url, "redis.sentinel.nodes")).collect::<Result<Vec<_>, _>>()?;
    let tls = nodes.iter().any(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
    let user = nodes.first().and_then(|info| info.redis_settings().username().map(str::to_string));
    let addrs: Vec<ConnectionAddr> = nodes.iter().map(|info| info.addr().clone()).collect();
    let mut builder =
        SentinelClientBuilder::new(addrs, &sentinel.master, SentinelServerType::Master).map_err(settings)?;
    if let Some(user) = user {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(source) = &sentinel.password {
        builder = builder.set_client_to_sentinel_password(read_password(source, "redis.sentinel.password")?);
    }
    if let Some(username) = username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = password {
        builder = builder.set_client_to_redis_password(password);
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = certificates {
            builder = builder
                .set_client_to_redis_certificates(certificates.clone())
                .set_client_to_sentinel_certificates(certificates);
        }
    }
    builder.build().map_err(settings)
}

/// The Sentinels did not name the master within the caller's time (a timeout: worth retrying).
fn sentinel_timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "no Sentinel named the master in time"))
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

/// One connection to the queue's Redis, of whichever shape. Cheap to clone (clones share it);
/// reconnects on its own.
#[derive(Clone)]
pub(super) enum Conn {
    Node(ConnectionManager),
    Sentinel(SentinelConn),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Run a keyless `command` on the node that holds `key`'s slot (the Cluster would otherwise
    /// send it to every master: `WAIT` must go to the one the writes went to).
    pub(super) async fn query_at<T: FromRedisValue>(&mut self, command: &Cmd, key: &str) -> RedisResult<T> {
        match self {
            Self::Cluster(cluster) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key.as_bytes(),
                    SlotAddr::Master,
                )));
                let value = cluster.route_command(command.clone(), route).await?;
                Ok(T::from_redis_value(value)?)
            }
            other => command.query_async(other).await,
        }
    }
}

impl Conn {
    /// Run `pipe` on one connection to the node that serves `key`'s slot (for a Cluster, even
    /// when no command in it names a key); its replies, the first error among them as an error.
    pub(super) async fn pipeline_at(&mut self, pipe: &Pipeline, key: &str) -> RedisResult<Vec<Value>> {
        let replies: Vec<Value> = match self {
            Self::Cluster(cluster) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key.as_bytes(), SlotAddr::Master));
                cluster.route_pipeline(pipe.clone(), 0, pipe.len(), route).await?
            }
            other => pipe.query_async(other).await?,
        };
        replies.into_iter().map(Value::extract_error).collect()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
            Self::Sentinel(sentinel) => Box::pin(async move {
                let (generation, mut manager) = sentinel.manager().await?;
                let answer = manager.req_packed_command(cmd).await;
                sentinel.after(generation, answer.as_ref().err());
                answer
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(manager) => manager.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(sentinel) => Box::pin(async move {
                let (generation, mut manager) = sentinel.manager().await?;
                let answer = manager.req_packed_commands(pipeline, offset, count).await;
                sentinel.after(generation, answer.as_ref().err());
                answer
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(manager) => manager.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

/// A connection to the master the Sentinels name. It asks them at its first command and again
/// after any connection error or `READONLY` (the old master came back as a replica), so after a
/// failover the next command goes to the new master.
#[derive(Clone)]
pub(super) struct SentinelConn(Arc<SentinelShared>);

struct SentinelShared {
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    config: ConnectionManagerConfig,
    response_timeout: Duration,
    /// The master's connection now, and which one it is (a count of the masters found).
    current: std::sync::Mutex<Option<(u64, ConnectionManager)>>,
    generation: AtomicU64,
    /// When asking the Sentinels last failed, and why.
    last_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// The least time between two lookups of the master after one failed (a failover under way
/// must not turn every command into a round of Sentinel queries).
const SENTINEL_ASK_INTERVAL: Duration = Duration::from_millis(100);

impl SentinelConn {
    fn current(&self) -> Option<(u64, ConnectionManager)> {
        self.0.current.lock().expect("never poisoned").clone()
    }

    async fn manager(&self) -> RedisResult<(u64, ConnectionManager)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        // Waiting for another caller's lookup counts against this caller's time too.
        let asked = tokio::time::timeout(self.0.response_timeout, self.ask()).await;
        asked.map_err(|_| sentinel_timed_out())?
    }

    /// Ask the Sentinels for the master, one caller at a time, and no more often than every
    /// [`SENTINEL_ASK_INTERVAL`]: callers in between get the last failure at once.
    async fn ask(&self) -> RedisResult<(u64, ConnectionManager)> {
        let mut sentinel = self.0.sentinel.lock().await;
        // Another caller may have found the master while this one waited its turn.
        if let Some(current) = self.current() {
            return Ok(current);
        }
        if let Some((at, error)) = self.0.last_failure.lock().expect("never poisoned").as_ref()
            && at.elapsed() < SENTINEL_ASK_INTERVAL
        {
            return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, error.clone())));
        }
        let client = match sentinel.async_get_client().await {
            Ok(client) => client,
            Err(e) => {
                *self.0.last_failure.lock().expect("never poisoned") = Some((std::time::Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        let manager = ConnectionManager::new_lazy_with_config(client, self.0.config.clone())?;
        let generation = self.0.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.0.current.lock().expect("never poisoned") = Some((generation, manager.clone()));
        *self.0.last_failure.lock().expect("never poisoned") = None;
        Ok((generation, manager))
    }

    /// After a command on master `generation`: a connection error or `READONLY` means it may
    /// no longer be the master, so the next command asks the Sentinels again.
    fn after(&self, generation: u64, error: Option<&redis::RedisError>) {
        if error.is_some_and(is_connection_error) {
            let mut current = self.0.current.lock().expect("never poisoned");
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                *current = None;
            }
        }
    }
}
