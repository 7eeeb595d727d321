//! Redis Cluster: six redis-server processes (three primaries, three replicas). The queue,
//! the worker and the shared rate limits are pointed at a primary that does not own the
//! queue's slot, which answers a plain client MOVED: only a cluster client gets anywhere.

use std::time::Duration;

use reviews_service::redis::{ClusterSeeds, RedisArgs, RedisTarget};
use reviews_worker::queue::JobQueue;

use super::servers::RedisCluster;
use crate::support::*;

fn cluster_args(prefix: &str, seed: &str) -> RedisArgs {
    let mut args = RedisArgs::local(prefix);
    args.redis_cluster_nodes = Some(ClusterSeeds(vec![format!("redis://{seed}")]));
    args
}

#[tokio::test]
async fn the_queue_leases_and_finishes_jobs_through_a_node_that_does_not_own_its_slot() {
    let cluster = RedisCluster::start();
    let prefix = format!("cluster-{}", uuid::Uuid::new_v4().simple());
    let elsewhere = cluster.node_not_owning(&format!("{{{prefix}}}")).await;

    // A plain client at that node is sent away.
    let plain = redis::Client::open(format!("redis://{elsewhere}")).unwrap();
    let mut plain = plain.get_multiplexed_async_connection().await.unwrap();
    let moved = redis::cmd("XLEN")
        .arg(format!("{{{prefix}}}:jobs"))
        .query_async::<i64>(&mut plain)
        .await
        .unwrap_err();
    assert!(
        moved.to_string().to_uppercase().contains("MOVED"),
        "{moved}"
    );

    let queue =
        JobQueue::new(cluster_args(&prefix, &elsewhere).target().unwrap(), &prefix).unwrap();
    queue.ensure_group().await.unwrap();
    assert_eq!(
        queue
            .enqueue_all(&[1, 2], &[(3, Duration::from_millis(1))])
            .await
            .unwrap(),
        3
    );
    assert_eq!(queue.enqueue(&[1]).await.unwrap(), 0, "queued once");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (promoted, _) = queue.promote_due(10).await.unwrap();
    assert_eq!(promoted, 1);
    let mut reader = queue.blocking_connection().await.unwrap();
    let read = queue
        .read(&mut reader, "a", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        read.iter().map(|d| d.job_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let entries: Vec<String> = read.iter().map(|d| d.entry_id.clone()).collect();
    assert!(queue.heartbeat("a", &entries).await.unwrap().is_empty());
    // Another runner takes back what "a" stopped renewing.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut cursor = "0-0".to_owned();
    let taken = queue
        .take_back_expired("b", Duration::from_millis(100), 10, &mut cursor)
        .await
        .unwrap();
    assert_eq!(taken.len(), 3);
    assert!(!queue.hand_back(&read[0], "a").await.unwrap(), "fenced");
    queue.finish_all(&taken).await.unwrap();
    assert_eq!(queue.depth().await.unwrap().known, 0);
}

#[tokio::test]
async fn a_review_reaches_its_effects_and_rate_limits_are_shared_on_a_cluster() {
    let cluster = RedisCluster::start();
    let app = TestApp::spawn().await;
    let owner = app.create_product("owner", "Clustered kettle").await;
    let worker = app
        .start_worker_with(|args| {
            let prefix = args.redis.redis_prefix.clone();
            args.redis = cluster_args(&prefix, &cluster.seeds[5]);
        })
        .await;
    for author in ["a", "b", "c"] {
        app.add_review(author, &owner, 4).await;
    }
    app.wait_for_worker().await;
    assert_eq!(app.count_rows("notifications").await, 3);
    worker.stop().await;

    let seeds = cluster
        .seeds
        .iter()
        .map(|s| format!("redis://{s}"))
        .collect();
    super::replicas::two_apis_share_one_allowance(RedisTarget::Cluster { seeds, ca: None }).await;
}
