//! Redis that loses a node, with real processes on loopback: a Redis Cluster (six
//! `redis-server`s, three masters with a replica each, made by `redis-cli --cluster create`) and a
//! Sentinel setup (a master, a replica, three Sentinels). The master holding the queue is
//! SIGKILLed while 2,000 jobs go in with `ack_durability = "replica"`: every acknowledged job
//! ends `succeeded` with one `completed` audit record, every call is answered 200/202/503 within
//! 5 s, and the workers carry on without a restart.

use crate::Guild;
use crate::daemon::{Daemon, config_file, token_digest};
use crate::redis::{QUEUE_ENV, TOKEN, Worker, answers, free_port, spin, wait_all, wait_audited};
use guild_test_artifacts::HOSTILE;
use serde_json::json;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every key of the queue hashes to this key's slot.
const QUEUE_KEY: &str = "guild:{default}:leases";
/// Jobs each failover test submits.
const JOBS: u64 = 2_000;
/// Threads submitting them.
const SUBMITTERS: u64 = 8;
/// How long a killed master stays down before its supervisor restarts it.
const RESTARTED_AFTER: Duration = Duration::from_secs(5);
/// The longest any call may take, failover or not.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Poll `done` every 50 ms until it holds, or panic with `what` after `within`.
fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `redis-server` (data node or Sentinel) in a directory of its own; SIGKILLed when dropped.
struct Node {
    child: Child,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

/// A free port for a Cluster node: its bus listens on the port + 10000, so below 55536 and with
/// that one free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Node {
    /// Start one with `config` (a file's text, written beside its data) and `args`.
    fn start(config: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = if config.contains("cluster-enabled yes") { free_cluster_port() } else { free_port() };
        let file = dir.path().join("redis.conf");
        std::fs::write(&file, format!("port {port}\nbind 127.0.0.1\ndir {}\n{config}\n", dir.path().display()))
            .expect("write redis.conf");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = Self::spawn(&dir, port, &args);
        Self { child, port, args, dir }
    }

    fn spawn(dir: &tempfile::TempDir, port: u16, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("log")).expect("log");
        let child = Command::new("redis-server")
            .arg(dir.path().join("redis.conf"))
            .args(args)
            .stdout(log)
            .spawn()
            .expect("redis-server starts (scripts/setup.sh installs it)");
        assert!(answers(port, Duration::from_secs(10)), "redis-server did not answer on port {port}");
        child
    }

    /// Start it again, with its config and data: a Cluster node rejoins as a replica of the
    /// one promoted in its place; a Sentinel turns an old master into a replica.
    fn restart(&mut self) {
        self.child = Self::spawn(&self.dir, self.port, &self.args);
    }

    /// SIGKILL: no shutdown, no last save.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A data node's settings: the append-only file fsynced every second (the common production
/// setting), no snapshots.
const DATA_NODE: &str = "appendonly yes\nappendfsync everysec\nsave \"\"\nmaxmemory-policy noeviction";

/// Three masters, each with a replica; a node is failed after 1 s without an answer.
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn start() -> Self {
        let config = format!(
            "{DATA_NODE}\ncluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\n\
             cluster-replica-validity-factor 0"
        );
        let nodes: Vec<Node> = (0..6).map(|_| Node::start(&config, &[])).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let made = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(made.status.success(), "cluster create: {}", String::from_utf8_lossy(&made.stdout));
        let cluster = Self { nodes };
        wait_until(Duration::from_secs(30), "the cluster ok on every node, every replica in sync", || {
            cluster.nodes.iter().all(|n| {
                let info = cli(n.port, &["CLUSTER", "INFO"]);
                let replication = cli(n.port, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            })
        });
        cluster
    }

    /// The config's `redis.cluster`: three of the nodes as seeds (the rest are discovered).
    fn seeds(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().take(3).map(|n| format!("\"{}\"", n.url())).collect();
        format!("[{}]", urls.join(", "))
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| answers(n.port, Duration::from_millis(200)))
    }

    /// The port of the master serving the queue's slot, as a live node sees the cluster now.
    fn queue_master(&self) -> Option<u16> {
        self.master_of(QUEUE_KEY).map(|(_, port)| port)
    }

    /// The id and port of the master serving `key`'s slot, as a live node sees the cluster now.
    fn master_of(&self, key: &str) -> Option<(String, u16)> {
        let node = self.live().next()?;
        let slot: u16 = cli(node.port, &["CLUSTER", "KEYSLOT", key]).parse().ok()?;
        cli(node.port, &["CLUSTER", "NODES"]).lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields.iter().skip(8).any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(l), Ok(h)) if (l..=h).contains(&slot))
            });
            let port = fields.get(1)?.split(['@', ',']).next()?.rsplit(':').next()?.parse().ok()?;
            serves.then(|| (fields[0].to_string(), port))
        })
    }

    /// Move the queue's slot from its master to another with `redis-cli --cluster reshard`
    /// (the slots of the master's range up to and including it, key by key).
    fn reshard_queue_slot(&self) -> u16 {
        let from = self.queue_master().expect("the queue's master");
        let to = self.nodes.iter().map(|n| n.port).find(|&p| p != from && cli(p, &["ROLE"]).starts_with("master"));
        let to = to.expect("another master");
        let slot: u16 = cli(from, &["CLUSTER", "KEYSLOT", QUEUE_KEY]).parse().expect("slot");
        let first = [0u16, 5461, 10923].into_iter().filter(|start| *start <= slot).max().unwrap_or(0);
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]);
        let moved = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &(slot - first + 1).to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster reshard");
        assert!(moved.status.success(), "reshard: {}", String::from_utf8_lossy(&moved.stdout));
        to
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node of the cluster")
    }
}

/// A master, its replica and three Sentinels watching it as `guild` (quorum 2), failing it after
/// 1 s without an answer.
struct Sentinels {
    master: Node,
    _replica: Node,
    sentinels: Vec<Node>,
}

impl Sentinels {
    fn start() -> Self {
        let master = Node::start(DATA_NODE, &[]);
        let replica = Node::start(&format!("{DATA_NODE}\nreplicaof 127.0.0.1 {}", master.port), &[]);
        let watch = format!(
            "sentinel monitor guild 127.0.0.1 {} 2\nsentinel down-after-milliseconds guild 1000\n\
             sentinel failover-timeout guild 10000\nsentinel parallel-syncs guild 1",
            master.port
        );
        let sentinels: Vec<Node> = (0..3).map(|_| Node::start(&watch, &["--sentinel"])).collect();
        let setup = Self { master, _replica: replica, sentinels };
        wait_until(Duration::from_secs(30), "every Sentinel knowing the replica and the other two", || {
            setup.sentinels.iter().all(|s| {
                let master = cli(s.port, &["SENTINEL", "MASTER", "guild"]);
                let value = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines.iter().position(|l| *l == name).and_then(|i| lines.get(i + 1)).map(|v| v.to_string())
                };
                value("num-slaves").as_deref() == Some("1") && value("num-other-sentinels").as_deref() == Some("2")
            })
        });
        setup
    }

    /// The master's port as the first live Sentinel names it.
    fn master_port(&self) -> Option<u16> {
        let answer = cli(self.sentinels[0].port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "guild"]);
        answer.lines().nth(1)?.parse().ok()
    }
}

/// The daemon's config: one tenant allowed every tool and far more jobs in flight than the
/// test submits (so only Redis's answers are seen), and the hostile fixture.
fn api_config(dir: &std::path::Path) -> String {
    config_file(
        dir,
        &format!(
            "[[tools]]\npath = \"{HOSTILE}\"\n\n[[tenants]]\nname = \"ops\"\ntoken_blake3 = \"{}\"\ntools = [\"*\"]\n\
             concurrency_max = 100000\nrate_per_second = 100000.0\nburst = 100000\n",
            token_digest(TOKEN)
        ),
    )
}

fn rounds(i: u64) -> u64 {
    20_000 + i
}

/// Submit job `i` (with an idempotency key of its own) until the daemon acknowledges it, as a
/// client does: every answer within [`ANSWER_WITHIN`] and either 200/202 or 503
/// `queue_unavailable` with `Retry-After` (counted in `refused`). Returns the job's id.
fn submit_until_acknowledged(daemon: &Daemon, i: u64, refused: &AtomicUsize) -> String {
    let body = json!({
        "tool": "hostile",
        "input": {"attack": "spin", "rounds": rounds(i)},
        "async": true,
        "idempotency_key": format!("job-{i}"),
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last;
    loop {
        let started = Instant::now();
        let reply = daemon.run(TOKEN, body.clone());
        let took = started.elapsed();
        assert!(took < ANSWER_WITHIN, "job {i}: answered {} after {took:?}", reply.status);
        match reply.status {
            200 | 202 => return reply.json()["id"].as_str().expect("id").to_string(),
            503 => {
                assert_eq!(reply.code(), "queue_unavailable", "{}", String::from_utf8_lossy(&reply.body));
                assert!(reply.headers.contains_key("retry-after"), "503 without Retry-After");
                refused.fetch_add(1, Ordering::Relaxed);
                last = String::from_utf8_lossy(&reply.body).to_string();
            }
            other => panic!("job {i}: answered {other}: {}", String::from_utf8_lossy(&reply.body)),
        }
        assert!(Instant::now() < deadline, "job {i} never acknowledged; last answer: {last}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Submit [`JOBS`] jobs from [`SUBMITTERS`] threads; once `kill_after` are acknowledged, call
/// `kill` (on its own thread). Returns the acknowledged ids, in job order, and the 503s seen.
fn submit_all(daemon: &Daemon, kill_after: usize, kill: impl FnOnce() + Send) -> (Vec<String>, usize) {
    let acknowledged = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let ids = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            wait_until(Duration::from_secs(120), "enough jobs acknowledged", || {
                acknowledged.load(Ordering::Relaxed) >= kill_after
            });
            kill();
        });
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|t| {
                let (acknowledged, refused) = (&acknowledged, &refused);
                scope.spawn(move || {
                    let share = JOBS / SUBMITTERS;
                    (t * share..(t + 1) * share)
                        .map(|i| {
                            let id = submit_until_acknowledged(daemon, i, refused);
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            (i, id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<(u64, String)> = submitters.into_iter().flat_map(|s| s.join().expect("submitter")).collect();
        killer.join().expect("killer");
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    });
    (ids, refused.load(Ordering::Relaxed))
}

/// Every acknowledged job succeeded with its own output and is audited as completed once; the
/// workers never stopped.
fn check_nothing_lost(api: &Guild, daemon: &Daemon, ids: &[String], workers: &mut [Worker]) {
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "distinct jobs");
    let results = wait_all(daemon, ids, Duration::from_secs(240));
    for (i, id) in ids.iter().enumerate() {
        let body = &results[id];
        assert_eq!(body["status"], "succeeded", "job {id}: {body}");
        assert_eq!(body["output"]["value"], spin(rounds(i as u64)), "job {id} has its own output");
    }
    let audited = wait_audited(api, ids, Duration::from_secs(60));
    let wrong: Vec<(&String, Option<&usize>)> =
        ids.iter().map(|id| (id, audited.get(id))).filter(|(_, n)| *n != Some(&1)).take(10).collect();
    assert!(wrong.is_empty(), "jobs not audited as completed exactly once: {wrong:?}");
    for worker in workers {
        assert!(worker.alive(), "a worker exited: {}", worker.log());
        // Each attempt a worker held through the failover was settled once Redis was back.
        let log = worker.log();
        let gave_up: Vec<&str> = log.lines().filter(|l| l.contains("cannot settle the job;")).take(3).collect();
        assert!(gave_up.is_empty(), "a worker gave up settling: {gave_up:?}");
    }
}

/// An API node and two workers (4 slots each) on the Redis `redis` names (`GUILD_REDIS__…`
/// variables), with `ack_durability = durability`. Fields drop in order: processes first.
struct Fleet {
    daemon: Daemon,
    workers: Vec<Worker>,
    api: Guild,
    _cache: tempfile::TempDir,
}

fn fleet(redis: &[(&str, &str)], durability: &str) -> Fleet {
    let env: Vec<(&str, &str)> = QUEUE_ENV
        .iter()
        .copied()
        .chain(redis.iter().copied())
        .chain([("GUILD_REDIS__ACK_DURABILITY", durability), ("GUILD_REDIS__ACK_TIMEOUT_MS", "500")])
        .collect();
    let api = Guild::new();
    let daemon = Daemon::start(&api, &["--config", &api_config(api.home())], &env);
    let cache = tempfile::tempdir().expect("cache");
    let workers = (0..2).map(|i| Worker::start_configured(cache.path(), &format!("w{i}"), 4, &env)).collect();
    Fleet { daemon, workers, api, _cache: cache }
}

/// A run through a Cluster whose queue master was SIGKILLed (and restarted 5 s later) while
/// [`JOBS`] jobs went in. Fields drop in order: the processes, then the cluster.
struct KilledMidRun {
    fleet: Fleet,
    ids: Vec<String>,
    _cluster: Cluster,
}

fn kill_the_queue_master_mid_run(durability: &str) -> KilledMidRun {
    let mut cluster = Cluster::start();
    let before = cluster.queue_master().expect("a master serves the queue's slot");
    let seeds = cluster.seeds();
    let fleet = fleet(&[("GUILD_REDIS__CLUSTER", seeds.as_str())], durability);
    let cluster_lock = std::sync::Mutex::new(&mut cluster);
    let (ids, refused) = submit_all(&fleet.daemon, 600, || {
        let mut cluster = cluster_lock.lock().expect("cluster");
        cluster.node(before).kill();
        // What an operator's supervisor does: the failed node comes back, as a replica of the
        // one promoted in its place. Until then no replica can confirm a job: 503.
        std::thread::sleep(RESTARTED_AFTER);
        cluster.node(before).restart();
    });
    let after = cluster.queue_master().expect("a replica took over the queue's slot");
    assert_ne!(after, before, "the slot's master changed");
    eprintln!("cluster failover ({durability}): {} jobs acknowledged, {refused} answers 503 on the way", ids.len());
    KilledMidRun { fleet, ids, _cluster: cluster }
}

#[test]
fn a_cluster_master_killed_mid_run_loses_no_acknowledged_job() {
    let mut run = kill_the_queue_master_mid_run("replica");
    check_nothing_lost(&run.fleet.api, &run.fleet.daemon, &run.ids, &mut run.fleet.workers);
}

/// With `local`, a job the master acknowledged but no replica had yet is gone after the
/// failover (404), and a settlement or audit acknowledgement the replica lacked is done again:
/// counted and printed for the README. Never a hang, never a job stuck queued or failed.
#[test]
fn with_local_durability_a_cluster_failover_loses_what_no_replica_had() {
    let mut run = kill_the_queue_master_mid_run("local");
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut succeeded, mut lost) = (BTreeSet::new(), BTreeSet::new());
    while succeeded.len() + lost.len() < run.ids.len() {
        for id in &run.ids {
            if succeeded.contains(id) || lost.contains(id) {
                continue;
            }
            let reply = run.fleet.daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "");
            match (reply.status, reply.json()["status"].as_str()) {
                (404, _) => {
                    lost.insert(id.clone());
                }
                (200, Some("succeeded")) => {
                    succeeded.insert(id.clone());
                }
                (200, Some("queued" | "running")) | (503, _) => {}
                (status, _) => panic!("job {id}: {status} {}", String::from_utf8_lossy(&reply.body)),
            }
        }
        assert!(Instant::now() < deadline, "{} of {} jobs settled", succeeded.len() + lost.len(), run.ids.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished: Vec<String> = succeeded.iter().cloned().collect();
    let audited = wait_audited(&run.fleet.api, &finished, Duration::from_secs(60));
    let twice = finished.iter().filter(|id| audited.get(*id).is_some_and(|n| *n > 1)).count();
    assert!(finished.iter().all(|id| audited.contains_key(id)), "every finished job audited");
    eprintln!(
        "local durability: {} of {} acknowledged jobs lost in the failover, {twice} audited as completed twice",
        lost.len(),
        run.ids.len()
    );
    for worker in &mut run.fleet.workers {
        assert!(worker.alive(), "a worker exited: {}", worker.log());
    }
}

#[test]
fn a_sentinel_master_killed_mid_run_loses_no_acknowledged_job() {
    let mut setup = Sentinels::start();
    let before = setup.master.port;
    let nodes: Vec<String> = setup.sentinels.iter().map(|s| format!("\"{}\"", s.url())).collect();
    let nodes = format!("[{}]", nodes.join(", "));
    let mut fleet = fleet(
        &[("GUILD_REDIS__SENTINEL__MASTER", "guild"), ("GUILD_REDIS__SENTINEL__NODES", nodes.as_str())],
        "replica",
    );
    let master = std::sync::Mutex::new(&mut setup.master);
    let (ids, refused) = submit_all(&fleet.daemon, 600, || {
        let mut master = master.lock().expect("master");
        master.kill();
        std::thread::sleep(RESTARTED_AFTER);
        master.restart();
    });
    wait_until(Duration::from_secs(30), "the Sentinels naming a new master", || {
        setup.master_port().is_some_and(|port| port != before)
    });
    eprintln!("sentinel failover: {} jobs acknowledged, {refused} answers 503 on the way", ids.len());
    check_nothing_lost(&fleet.api, &fleet.daemon, &ids, &mut fleet.workers);
}

#[test]
fn moving_the_queue_slot_to_another_master_mid_run_loses_nothing() {
    let cluster = Cluster::start();
    let seeds = cluster.seeds();
    let mut fleet = fleet(&[("GUILD_REDIS__CLUSTER", seeds.as_str())], "replica");
    let moved_to = std::sync::Mutex::new(None);
    let (ids, refused) = submit_all(&fleet.daemon, 600, || {
        let started = Instant::now();
        let to = cluster.reshard_queue_slot();
        eprintln!("reshard took {:?}", started.elapsed());
        *moved_to.lock().expect("moved") = Some(to);
    });
    assert_eq!(cluster.queue_master(), moved_to.into_inner().expect("moved"), "the slot moved");
    eprintln!("reshard: {} jobs acknowledged, {refused} answers 503 on the way", ids.len());
    check_nothing_lost(&fleet.api, &fleet.daemon, &ids, &mut fleet.workers);
}

/// A CA and a certificate it issued for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL (redis-server, redis-cli) takes a certificate whose subject is its issuer's for
    // self-signed: the CA and the node get names of their own.
    ca_params.distinguished_name.push(DnType::CommonName, "Guild test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer);
    let files = (dir.join("ca.pem"), dir.join("redis.pem"), dir.join("redis.key"));
    std::fs::write(&files.0, ca_cert.pem()).expect("ca");
    std::fs::write(&files.1, cert.expect("cert").pem()).expect("cert");
    std::fs::write(&files.2, key.serialize_pem()).expect("key");
    files
}

#[test]
fn a_queue_over_tls_with_an_acl_user_whose_password_comes_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = tls_files(dir.path());
    let port = free_port();
    let config = dir.path().join("redis.conf");
    std::fs::write(
        &config,
        format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {dir}\nsave \"\"\ntls-cert-file {cert}\ntls-key-file {key}\n\
             tls-ca-cert-file {ca}\ntls-auth-clients no\nuser default off\nuser guild on >s3cret-pass ~* &* +@all\n",
            dir = dir.path().display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.display(),
        ),
    )
    .expect("redis.conf");
    let server = Command::new("redis-server").arg(&config).stdout(Stdio::null()).spawn().expect("redis-server starts");
    let _server = Killed(server);
    let ca_arg = ca.display().to_string();
    let tls_cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca_arg, "-p", &port.to_string(), "--user", "guild", "--pass", "s3cret-pass"])
            .args(["--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_until(Duration::from_secs(10), "redis-server answering over TLS", || tls_cli(&["PING"]) == "PONG");
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "s3cret-pass\n").expect("password file");
    let (url, source, ca_file) =
        (format!("rediss://127.0.0.1:{port}/"), format!("file:{}", password.display()), ca.display().to_string());
    let env: Vec<(&str, &str)> = QUEUE_ENV
        .iter()
        .copied()
        .chain([
            ("GUILD_REDIS__URL", url.as_str()),
            ("GUILD_REDIS__USERNAME", "guild"),
            ("GUILD_REDIS__PASSWORD", source.as_str()),
            ("GUILD_REDIS__TLS_CA_FILE", ca_file.as_str()),
        ])
        .collect();
    let api = Guild::new();
    let daemon = Daemon::start(&api, &["--config", &api_config(api.home())], &env);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start_configured(cache.path(), "tls", 1, &env);
    let reply = daemon.run(TOKEN, json!({"tool": "hostile", "input": {"attack": "spin", "rounds": 1000}}));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["output"]["value"], spin(1000));
    assert_ne!(tls_cli(&["HLEN", "guild:{default}:workers"]), "0", "the worker reached Redis over TLS");
}

/// A child process SIGKILLed when dropped (a failed test leaves nothing running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two named queues on one Cluster, each on its own master's slot: each API node's jobs run on
/// its own queue's workers, and one queue's jobs are unknown (404) to the other's API node.
#[test]
fn named_queues_live_on_different_masters_of_one_cluster() {
    let cluster = Cluster::start();
    let seeds = cluster.seeds();
    let master_of = |queue: &str| cluster.master_of(&format!("guild:{{{queue}}}:leases"));
    let other = ["billing", "search", "reports", "ingest", "mail", "thumbs"]
        .into_iter()
        .find(|name| master_of(name) != master_of("default"))
        .expect("a queue name on another master");
    let first = fleet(&[("GUILD_REDIS__CLUSTER", seeds.as_str())], "replica");
    let second = fleet(&[("GUILD_REDIS__CLUSTER", seeds.as_str()), ("GUILD_REDIS__QUEUE", other)], "replica");
    let refused = AtomicUsize::new(0);
    let ids: Vec<Vec<String>> = [&first, &second]
        .iter()
        .map(|fleet| (0..40).map(|i| submit_until_acknowledged(&fleet.daemon, i, &refused)).collect())
        .collect();
    for (fleet, ids) in [&first, &second].iter().zip(&ids) {
        let results = wait_all(&fleet.daemon, ids, Duration::from_secs(60));
        assert!(ids.iter().all(|id| results[id]["status"] == "succeeded"), "{results:?}");
        let audited = wait_audited(&fleet.api, ids, Duration::from_secs(30));
        assert!(ids.iter().all(|id| audited.get(id) == Some(&1)), "each audited once on its own API node");
    }
    let elsewhere = second.daemon.call("GET", &format!("/v1/runs/{}", ids[0][0]), TOKEN, "");
    assert_eq!(elsewhere.status, 404, "a job of queue default seen through queue {other}");
}
