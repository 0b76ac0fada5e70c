//! A `redis-server` of a benchmark's own on a free loopback port, stopped when dropped.

use guild_queue::{RedisQueue, RedisSettings};

/// The server and its port.
pub(crate) struct BenchRedis {
    child: std::process::Child,
    port: u16,
}

impl BenchRedis {
    /// Start one (no persistence); `None`, after saying so, when there is no `redis-server`.
    pub(crate) fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Self { child, port }),
            Err(_) => {
                println!("(no redis-server: the fleet's figures are not measured)");
                None
            }
        }
    }

    /// A queue on it, once it answers.
    pub(crate) async fn queue(&self) -> RedisQueue {
        let queue =
            RedisQueue::open(RedisSettings::new(format!("redis://127.0.0.1:{}/", self.port))).expect("settings");
        while queue.ping().await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
        queue
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
