//! Helpers shared by the end-to-end tests: an in-process cluster (router + brokers on ephemeral
//! loopback ports in a temp dir) and polling with a deadline.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{ConnectionConfig, Request, Response};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub router: shardq_router::RouterHandle,
    pub brokers: Vec<shardq_broker::BrokerHandle>,
}

impl Cluster {
    pub async fn start(brokers: u32, fsync: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut rc = shardq_router::RouterConfig::new(dir.path().join("router"));
        rc.listen = "127.0.0.1:0".into();
        let router = shardq_router::start(rc).await.expect("router starts");
        let mut handles = Vec::new();
        for id in 1..=brokers {
            let mut bc =
                shardq_broker::BrokerConfig::new(id, dir.path().join(format!("broker-{id}")));
            bc.listen = "127.0.0.1:0".into();
            bc.router = Some(router.addr().to_string());
            bc.fsync = fsync.parse().expect("fsync policy");
            handles.push(shardq_broker::start(bc).await.expect("broker starts"));
        }
        let c = Cluster {
            dir,
            router,
            brokers: handles,
        };
        let want = brokers as usize;
        let client = c.client().await;
        wait_until(Duration::from_secs(20), "all brokers registered", || {
            let client = client.clone();
            async move {
                matches!(client.admin(Request::ListBrokers).await,
                    Ok(Response::Brokers(b)) if b.len() == want)
            }
        })
        .await;
        c
    }

    pub fn addr(&self) -> String {
        self.router.addr().to_string()
    }

    pub async fn client(&self) -> ClusterClient {
        ClusterClient::connect(&self.addr(), ConnectionConfig::default())
            .await
            .expect("client connects")
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) {
        let r = self
            .client()
            .await
            .admin(Request::CreateTopic {
                name: name.into(),
                partitions,
            })
            .await
            .expect("topic created");
        assert!(matches!(r, Response::TopicCreated(_)), "{r:?}");
    }

    pub async fn stop(self) {
        for b in self.brokers {
            b.shutdown().await;
        }
        self.router.shutdown().await;
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
