//! What a bus says when it cannot start: a server without JetStream, a setting the
//! server refuses.

use std::time::Duration;

use messaging::ErrorKind;
use messaging_nats::{NatsBus, NatsBusConfig, testing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_named_as_such() {
    if !testing::server_available("no jetstream") {
        return;
    }
    let server = testing::NatsServer::start_without_jetstream()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let error = match NatsBus::connect(NatsBusConfig::new(server.url())).await {
        Ok(_) => panic!("connected to a server without JetStream"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("has no usable JetStream") && error.contains(&server.url()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_setting_names_the_stream() {
    let Some(url) = testing::test_url("a_refused_stream_setting_names_the_stream") else {
        return;
    };
    let prefix = format!("se{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = NatsBusConfig::new(url.as_str()).subject_prefix(prefix.as_str());
    // A duplicate window longer than the retention: every server refuses it.
    config.max_age = Duration::from_secs(1);
    config.duplicate_window = Duration::from_secs(60);
    let error = match NatsBus::connect(config).await {
        Ok(_) => panic!("the server took a duplicate window longer than max age"),
        Err(e) => e,
    };
    let _ = testing::delete_streams(&url, &format!("{prefix}_")).await;
    assert_eq!(error.kind(), ErrorKind::Retryable);
    let text = error.to_string();
    assert!(
        text.contains("refused stream") && text.contains(&format!("{prefix}_dead-letter")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("nats://127.0.0.1:{port}");
    let mut config = NatsBusConfig::new(url.as_str());
    config.connect_timeout = Duration::from_secs(1);
    let error = match NatsBus::connect(config).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("cannot connect to NATS at") && error.contains(&url),
        "{error}"
    );
}
