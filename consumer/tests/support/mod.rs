//! A real in-process cluster for the client tests: one router and two brokers on ephemeral
//! loopback ports, in temporary directories.

use std::time::Duration;

use shardq_broker::BrokerConfig;
use shardq_protocol::{BrokerStatus, ClusterClient, ConnectionConfig, Request, Response};
use shardq_router::RouterConfig;
use tokio::time::Instant;

pub struct Cluster {
    pub router: shardq_router::RouterHandle,
    pub brokers: Vec<shardq_broker::BrokerHandle>,
    pub client: ClusterClient,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut rc = RouterConfig::new(dir.path().join("router"));
        rc.listen = "127.0.0.1:0".into();
        let router = shardq_router::start(rc).await.expect("router starts");
        let raddr = router.addr().to_string();
        let mut brokers = Vec::new();
        for id in 1..=2 {
            let mut bc = BrokerConfig::new(id, dir.path().join(format!("broker{id}")));
            bc.router = Some(raddr.clone());
            bc.heartbeat = Duration::from_millis(100);
            brokers.push(shardq_broker::start(bc).await.expect("broker starts"));
        }
        let client = ClusterClient::connect(&raddr, ConnectionConfig::default())
            .await
            .expect("client connects");
        // Both brokers must be members before topics are placed, or one would get everything.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Response::Brokers(bs)) = client.admin(Request::ListBrokers).await {
                if bs.iter().filter(|b| b.status == BrokerStatus::Up).count() == 2 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "brokers did not register in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Cluster {
            router,
            brokers,
            client,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> String {
        self.router.addr().to_string()
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) {
        let answer = self
            .client
            .admin(Request::CreateTopic {
                name: name.into(),
                partitions,
                replication_factor: None,
                min_insync: None,
                retention: Default::default(),
            })
            .await
            .expect("create topic");
        assert!(matches!(answer, Response::TopicCreated(_)), "{answer:?}");
    }

    /// Next offset of every partition of `topic`.
    pub async fn end_offsets(&self, topic: &str, partitions: u32) -> Vec<u64> {
        let mut ends = Vec::new();
        for p in 1..=partitions {
            let shard = shardq_protocol::ShardId::new(topic, p);
            let answer = self
                .client
                .shard_request(
                    &shard,
                    |epoch| Request::ListOffsets {
                        shard: shard.clone(),
                        epoch,
                    },
                    Duration::from_secs(5),
                    Instant::now() + Duration::from_secs(10),
                )
                .await
                .expect("list offsets");
            let Response::Offsets { end, .. } = answer else {
                panic!("unexpected {answer:?}");
            };
            ends.push(end);
        }
        ends
    }

    pub async fn stop(self) {
        self.client.close();
        for b in self.brokers {
            b.shutdown().await;
        }
        self.router.shutdown().await;
    }
}
