//! The NATS JetStream source against a real `nats-server -js` (started here; the tests fail
//! when it is not installed): competing pods, a pod killed mid-batch, a broker restart, poison
//! messages, and the backlog figures. Pods are real `crashgrid serve` processes with a file
//! sink, so what each processed is read back by event id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use crashgrid::config::ServeArgs;
use crashgrid::nats::{sample_backlog, NatsConfig, NatsSource};
use serde_json::{json, Value};

use crate::harness::*;

/// A small valid crash event.
fn event(id: &str) -> Value {
    json!({
        "event_id": id,
        "timestamp": 1_795_598_000,
        "app": {"id": "com.example.game", "version": "2.4.1"},
        "platform": "android",
        "os": {"name": "Android", "version": "14"},
        "device": {"model": "Pixel 8"},
        "user": {"id": format!("user-{}", id.len() % 7)},
        "exception": {"type": "SIGSEGV"},
        "modules": [{"type": "elf", "code_file": "/data/app/libgame.so", "image_addr": "0x7f00000000", "image_size": 65536}],
        "threads": [{"crashed": true, "frames": [
            {"instruction_addr": "0x7f00001234"},
            {"instruction_addr": "0x7f00002345"},
            {"instruction_addr": "0x7f00003456"}
        ]}]
    })
}

/// `messages` messages of `per_message` events each (a JSON array per message), ids
/// `<prefix>-<message>-<index>`: (bodies, all ids).
fn batches(prefix: &str, messages: usize, per_message: usize) -> (Vec<Bytes>, Vec<String>) {
    let mut ids = Vec::new();
    let bodies = (0..messages)
        .map(|m| {
            let events: Vec<Value> = (0..per_message)
                .map(|i| {
                    let id = format!("{prefix}-{m}-{i}");
                    ids.push(id.clone());
                    event(&id)
                })
                .collect();
            Bytes::from(serde_json::to_vec(&events).unwrap())
        })
        .collect();
    (bodies, ids)
}

/// Creates the stream as `--nats-create-stream` does.
async fn create_stream(js: &jetstream::Context) {
    js.get_or_create_stream(stream::Config {
        name: "CRASHES".into(),
        subjects: vec!["crashes.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Publishes every body with JetStream acks, pipelined.
async fn publish_all(js: &jetstream::Context, subject: &str, bodies: &[Bytes]) {
    let mut acks = Vec::with_capacity(bodies.len());
    for body in bodies {
        acks.push(js.publish(subject.to_string(), body.clone()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Multiset of ids over the given pods' sinks.
fn tally(pods: &[&NatsPod]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for p in pods {
        for id in p.sink_ids() {
            *t.entry(id).or_default() += 1;
        }
    }
    t
}

fn window_total(stats: &Value) -> u64 {
    stats["stats"]["total"].as_u64().unwrap()
}

/// Waits until `ids` are all in the union of the pods' sinks and, as the running pods report
/// it, the consumer owes nothing and no pod holds a message.
async fn drained(pods: &[&NatsPod], ids: &[String], timeout: Duration) {
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    wait_until(
        "every event is processed and acknowledged",
        timeout,
        || async {
            let seen = tally(pods);
            if !want.iter().all(|id| seen.contains_key(*id)) {
                return false;
            }
            for p in pods.iter().filter(|p| p.is_running()) {
                let Some(m) = p.metrics().await else {
                    return false;
                };
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                if get("crashgrid_nats_in_flight_messages") != 0.0
                    || get("crashgrid_nats_unacked_messages") != 0.0
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

const POD_FLAGS: &[&str] = &["--nats-create-stream", "true", "--nats-batch", "16"];

#[test]
fn nats_flags_resolve_into_the_source_settings() {
    let s = ServeArgs {
        nats_url: Some("nats://a:4222,nats://b:4222".into()),
        nats_ack_wait_secs: Some(9),
        nats_batch: Some(32),
        nats_dlq_subject: Some("dead.crashes".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let n = s.nats.unwrap();
    assert_eq!(n.url, "nats://a:4222,nats://b:4222");
    assert_eq!(
        (n.stream.as_str(), n.subject.as_str(), n.consumer.as_str()),
        ("CRASHES", "crashes.>", "crashgrid")
    );
    assert_eq!(n.ack_wait, Duration::from_secs(9));
    assert_eq!(n.batch, 32);
    assert_eq!(n.dead_letter_subject, "dead.crashes");
    assert!(!n.create_stream);
    assert!(ServeArgs::default().resolve().unwrap().nats.is_none());
    // A dead-letter subject inside the filter would feed poison back to the consumer.
    assert!(ServeArgs {
        nats_url: Some("nats://a:4222".into()),
        nats_dlq_subject: Some("crashes.dlq".into()),
        ..Default::default()
    }
    .resolve()
    .is_err());
}

/// (a) Three pods on one durable consumer share the messages, and every event is processed
/// exactly once: each id appears in exactly one sink, once, and the pods' statistics add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_share_one_consumer_and_process_each_event_once() {
    let nats = NatsServer::start();
    let pods: Vec<NatsPod> = (1..=3)
        .map(|i| NatsPod::start(&format!("pod-{i}"), &nats.url(), POD_FLAGS))
        .collect();
    for p in &pods {
        p.wait_connected().await;
    }
    let js = nats.jetstream().await;
    let (bodies, ids) = batches("a", 400, 10);
    publish_all(&js, "crashes.android", &bodies).await;
    let refs: Vec<&NatsPod> = pods.iter().collect();
    drained(&refs, &ids, Duration::from_secs(120)).await;

    let seen = tally(&refs);
    assert_eq!(seen.len(), ids.len(), "only published ids are processed");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let mut shares = Vec::new();
    let mut stats_total = 0;
    for p in &pods {
        let n = p.sink_ids().len();
        assert!(n > 0, "{} processed nothing", p.name);
        let total = window_total(&p.stats().await.unwrap());
        assert_eq!(
            total, n as u64,
            "{}: statistics count what it processed",
            p.name
        );
        stats_total += total;
        shares.push(n);
    }
    assert_eq!(stats_total, ids.len() as u64);
    eprintln!("shares of {} events over 3 pods: {shares:?}", ids.len());
}

/// Messages `pods` received that the server had delivered before.
async fn redelivered_to(pods: &[NatsPod]) -> f64 {
    let mut n = 0.0;
    for p in pods {
        n += p
            .metric("crashgrid_nats_redelivered_total")
            .await
            .unwrap_or(0.0);
    }
    n
}

/// (b) A pod killed with SIGKILL in the middle of its batches: the broker redelivers what it
/// had not acknowledged to the other pods, and nothing is lost or counted twice.
///
/// What the sinks can show: the killed pod wrote an event to its sink before the event was
/// counted and acknowledged, so an event it wrote but had not acknowledged when it died is
/// redelivered and written again by a survivor. Such an event appears twice in the union of
/// the sinks — once in the dead pod's sink, once in a survivor's — and never twice among the
/// survivors. Its first count died with the killed pod's window, which is why it must be
/// counted again: the cluster-wide count is the dead pod's *acknowledged* events (its sink
/// minus what was redelivered) plus what the survivors counted, and that must equal what was
/// published. So the assertions are: every id is in the union; no sink holds an id twice; the
/// survivors' sinks are disjoint; every id in two sinks is in the dead pod's and one
/// survivor's; each survivor's statistics count exactly its sink; and
/// |dead pod only| + survivors' statistics == published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pods_unacknowledged_messages_go_to_the_others_and_count_once() {
    let nats = NatsServer::start();
    let flags: Vec<&str> = POD_FLAGS
        .iter()
        .copied()
        .chain(["--nats-ack-wait-secs", "6", "--queue-capacity", "400"])
        .collect();
    let mut pods: Vec<NatsPod> = (1..=3)
        .map(|i| NatsPod::start(&format!("pod-{i}"), &nats.url(), &flags))
        .collect();
    for p in &pods {
        p.wait_connected().await;
    }
    let js = nats.jetstream().await;
    let (bodies, ids) = batches("b", 1200, 20);
    publish_all(&js, "crashes.ios", &bodies).await;

    // Kill pod-1 while it holds unacknowledged messages, well before the stream is drained. A
    // scrape showing messages in flight can be stale by the time of the kill (seen once: the
    // pod had acknowledged all it held in between, so nothing was redelivered); so pod-1 is
    // first stopped (SIGSTOP) and only killed once the server has redelivered what it held to
    // the survivors (ack wait 6 s); if it held nothing, it resumes and the next moment is
    // tried.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tries = 0;
    let held = loop {
        let held = pods[0]
            .metric("crashgrid_nats_in_flight_messages")
            .await
            .unwrap_or(0.0);
        assert!(
            Instant::now() < deadline,
            "pod-1 never held unacknowledged messages when stopped ({tries} tries)"
        );
        if pods[0].sink_ids().len() < 500 || held <= 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        tries += 1;
        let before = redelivered_to(&pods[1..]).await;
        pods[0].signal(nix::sys::signal::Signal::SIGSTOP);
        let stopped_at = Instant::now();
        let mut redelivered = false;
        while stopped_at.elapsed() < Duration::from_secs(12) {
            if redelivered_to(&pods[1..]).await > before {
                redelivered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if redelivered {
            break held;
        }
        pods[0].signal(nix::sys::signal::Signal::SIGCONT);
    };
    pods[0].kill9();
    let dead_sink = pods[0].sink_ids();
    assert!(
        dead_sink.len() < ids.len() / 2,
        "killed too late to matter ({} events)",
        dead_sink.len()
    );

    let all: Vec<&NatsPod> = pods.iter().collect();
    drained(&all, &ids, Duration::from_secs(180)).await;

    let dead: BTreeMap<String, usize> = tally(&[&pods[0]]);
    let b = tally(&[&pods[1]]);
    let c = tally(&[&pods[2]]);
    for (name, sink) in [("pod-1", &dead), ("pod-2", &b), ("pod-3", &c)] {
        let twice: Vec<_> = sink.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{name} processed ids twice: {twice:?}");
    }
    let both: Vec<&String> = b.keys().filter(|id| c.contains_key(*id)).collect();
    assert!(both.is_empty(), "survivors both processed {both:?}");
    let mut redelivered_written = 0;
    let mut dead_only = 0u64;
    for id in &ids {
        let in_dead = dead.contains_key(id);
        let in_survivor = b.contains_key(id) || c.contains_key(id);
        assert!(in_dead || in_survivor, "{id} was lost");
        match (in_dead, in_survivor) {
            (true, true) => redelivered_written += 1,
            (true, false) => dead_only += 1,
            _ => {}
        }
    }
    let mut survivors_counted = 0;
    let mut redelivered_msgs = 0.0;
    for p in &pods[1..] {
        let n = p.sink_ids().len() as u64;
        let total = window_total(&p.stats().await.unwrap());
        assert_eq!(
            total, n,
            "{}: statistics count each processed event once",
            p.name
        );
        survivors_counted += total;
        redelivered_msgs += p.metric("crashgrid_nats_redelivered_total").await.unwrap();
        let m = p.metrics().await.unwrap();
        eprintln!(
            "{}: {:?}",
            p.name,
            m.iter()
                .filter(|(k, _)| k.starts_with("crashgrid_nats_") && k.contains("total"))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        dead_only + survivors_counted,
        ids.len() as u64,
        "cluster-wide, every event counted once"
    );
    assert!(
        redelivered_msgs > 0.0,
        "the killed pod's unacknowledged messages were redelivered to the survivors"
    );
    eprintln!(
        "killed pod-1 holding {held} messages after {} events; survivors received {redelivered_msgs} \
         redelivered messages; {redelivered_written} events were written by pod-1 unacknowledged \
         and again by a survivor; pod-1 acknowledged {dead_only}, survivors counted {survivors_counted}",
        dead_sink.len()
    );
}

/// (c) The broker is killed and restarted (same port, same store) while messages flow: the
/// publisher retries until acknowledged, the pods reconnect, and every event is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let mut nats = NatsServer::start();
    let flags: Vec<&str> = POD_FLAGS
        .iter()
        .copied()
        .chain(["--nats-ack-wait-secs", "5"])
        .collect();
    let pods: Vec<NatsPod> = (1..=2)
        .map(|i| NatsPod::start(&format!("pod-{i}"), &nats.url(), &flags))
        .collect();
    for p in &pods {
        p.wait_connected().await;
    }
    let (bodies, ids) = batches("c", 600, 10);
    let url = nats.url();
    // ~100 messages/s; each retried until the broker acknowledges it (the message id makes a
    // retry of a publish that did land a no-op).
    let publisher = tokio::spawn(async move {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .unwrap();
        let js = jetstream::new(client);
        let mut retries = 0u64;
        for (i, body) in bodies.into_iter().enumerate() {
            loop {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(body.clone())
                    .message_id(format!("c-{i}"));
                let acked = match tokio::time::timeout(
                    Duration::from_secs(2),
                    js.send_publish("crashes.native", publish),
                )
                .await
                {
                    Ok(Ok(ack)) => matches!(
                        tokio::time::timeout(Duration::from_secs(2), ack).await,
                        Ok(Ok(_))
                    ),
                    _ => false,
                };
                if acked {
                    break;
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        retries
    });
    let refs: Vec<&NatsPod> = pods.iter().collect();
    wait_until(
        "some events are processed",
        Duration::from_secs(60),
        || async { tally(&refs).len() >= 1000 },
    )
    .await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    let retries = publisher.await.unwrap();
    drained(&refs, &ids, Duration::from_secs(180)).await;

    let seen = tally(&refs);
    for p in &pods {
        assert!(
            p.log().contains("NATS connection lost"),
            "{} saw the broker go away:\n{}",
            p.name,
            p.log()
        );
        let own = tally(&[p]);
        let twice: Vec<_> = own.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{} counted ids twice: {twice:?}", p.name);
    }
    let across = seen.values().filter(|n| **n > 1).count();
    let mut fetch_errors = 0.0;
    let mut duplicates = 0.0;
    for p in &pods {
        let m = p.metrics().await.unwrap();
        fetch_errors += m
            .get("crashgrid_nats_fetch_errors_total")
            .copied()
            .unwrap_or(0.0);
        duplicates += m
            .get("crashgrid_nats_duplicate_events_total")
            .copied()
            .unwrap_or(0.0);
    }
    eprintln!(
        "broker restart: {} events all processed; publisher retried {retries} publishes; pods saw \
         {fetch_errors} failed pulls, skipped {duplicates} redelivered events already counted; \
         {across} events processed by both pods (per-pod dedup only)",
        ids.len()
    );
}

/// (d) Poison messages — not JSON, JSON that is no valid event, an empty batch — go to the
/// dead-letter subject with the reason, are terminated and counted, and the valid messages
/// around them are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_consumer_keeps_going() {
    let nats = NatsServer::start();
    // A queue of 4 events: a message of 5 can never be admitted whole.
    let flags: Vec<&str> = POD_FLAGS
        .iter()
        .copied()
        .chain(["--queue-capacity", "4"])
        .collect();
    let pod = NatsPod::start("pod-1", &nats.url(), &flags);
    pod.wait_connected().await;
    let js = nats.jetstream().await;
    let too_big = serde_json::to_vec(
        &(0..5)
            .map(|i| event(&format!("d-big-{i}")))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let good1 = serde_json::to_vec(&json!([event("d-1"), event("d-2")])).unwrap();
    let good2 = serde_json::to_vec(&event("d-3")).unwrap();
    let not_json = b"{\"event_id\": oops".to_vec();
    let invalid = serde_json::to_vec(&json!({"event_id": "d-bad", "platform": "android"})).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("X-Trace", "t-42");
    let mut seqs = Vec::new();
    for (i, body) in [
        good1,
        not_json.clone(),
        invalid.clone(),
        b"[]".to_vec(),
        too_big.clone(),
        good2,
    ]
    .into_iter()
    .enumerate()
    {
        let ack = if i == 1 {
            js.publish_with_headers("crashes.poison", headers.clone(), body.into())
                .await
        } else {
            js.publish("crashes.poison", body.into()).await
        };
        seqs.push(ack.unwrap().await.unwrap().sequence);
    }
    drained(
        &[&pod],
        &["d-1".into(), "d-2".into(), "d-3".into()],
        Duration::from_secs(60),
    )
    .await;
    let m = pod.metrics().await.unwrap();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(get("crashgrid_nats_terminated_total"), 4.0);
    assert_eq!(get("crashgrid_nats_dead_lettered_total"), 4.0);
    assert_eq!(get("crashgrid_nats_acked_total"), 2.0);
    assert_eq!(pod.sink_ids().len(), 3);

    let dlq = js.get_stream("CRASHES_DLQ").await.unwrap();
    let mut letters = Vec::new();
    for seq in 1..=4 {
        letters.push(dlq.get_raw_message(seq).await.unwrap());
    }
    letters.sort_by_key(|l| {
        l.headers
            .get("Crashgrid-Dlq-Stream-Sequence")
            .unwrap()
            .as_str()
            .parse::<u64>()
            .unwrap()
    });
    let header = |l: &jetstream::message::StreamMessage, k: &str| {
        l.headers
            .get(k)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let expected = [
        (
            seqs[1],
            not_json.as_slice(),
            "invalid_json",
            "not valid JSON",
        ),
        (seqs[2], invalid.as_slice(), "invalid_event", "`timestamp`"),
        (
            seqs[3],
            b"[]".as_slice(),
            "invalid_event",
            "the batch is empty",
        ),
        (
            seqs[4],
            too_big.as_slice(),
            "too_large",
            "more than the ingest queue admits",
        ),
    ];
    for (letter, (seq, payload, code, reason)) in letters.iter().zip(expected) {
        assert_eq!(letter.subject.as_str(), "crashgrid.dlq");
        assert_eq!(&letter.payload[..], payload, "the original payload");
        assert_eq!(
            header(letter, "Crashgrid-Dlq-Stream-Sequence"),
            seq.to_string()
        );
        assert_eq!(header(letter, "Crashgrid-Dlq-Code"), code);
        assert!(
            header(letter, "Crashgrid-Dlq-Reason").contains(reason),
            "{:?}",
            header(letter, "Crashgrid-Dlq-Reason")
        );
        assert_eq!(header(letter, "Crashgrid-Dlq-Subject"), "crashes.poison");
        assert_eq!(header(letter, "Crashgrid-Dlq-Stream"), "CRASHES");
        assert_eq!(header(letter, "Crashgrid-Dlq-Consumer"), "crashgrid");
        assert_eq!(header(letter, "Crashgrid-Dlq-Node"), "pod-1");
    }
    assert_eq!(
        header(&letters[0], "X-Trace"),
        "t-42",
        "original headers kept"
    );
    // Without the terminal colours.
    let mut log = String::new();
    let mut in_escape = false;
    for ch in pod.log().chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (false, c) => log.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    assert!(
        log.contains("poison NATS message")
            && log.contains(&format!("stream_sequence={}", seqs[1])),
        "the poison message is logged with its stream sequence:\n{log}"
    );
    eprintln!(
        "dead letters: {:?}",
        letters
            .iter()
            .map(|l| header(l, "Crashgrid-Dlq-Reason"))
            .collect::<Vec<_>>()
    );
}

fn source_config(url: String) -> NatsConfig {
    NatsConfig {
        url,
        create_stream: true,
        batch: 16,
        ack_wait: Duration::from_secs(5),
        backlog_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

/// (e) Backlog figures: N messages waiting for a consumer that does not take them are N
/// unacked with a growing oldest age, both as read directly and as a stuck source reports
/// them; a healthy source drains them and the figures fall to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_figures_follow_the_consumer() {
    const N: u64 = 60;
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js).await;
    let config = source_config(nats.url());
    // The durable consumer exists and nobody pulls: a stopped consumer.
    js.get_stream("CRASHES")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some(config.consumer.clone()),
            filter_subject: config.subject.clone(),
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending as i64,
            ..Default::default()
        })
        .await
        .unwrap();
    let (bodies, ids) = batches("e", N as usize, 3);
    publish_all(&js, "crashes.android", &bodies).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stopped = sample_backlog(&js, &config).await.unwrap();
    assert_eq!((stopped.unacked, stopped.pending), (N, N), "{stopped:?}");
    assert!(
        stopped.oldest_unacked_age_ms >= 1000,
        "the oldest message waited over a second: {stopped:?}"
    );

    // A stuck source: its node no longer admits anything (shut down), so every message is
    // nak'ed and stays unacknowledged; the source reports the full backlog, aging.
    let stuck_node = TestNode::start(|_| {}).await;
    let n = stuck_node.node.clone();
    tokio::task::spawn_blocking(move || n.shutdown())
        .await
        .unwrap();
    let stuck = NatsSource::spawn(stuck_node.node.clone(), config.clone()).unwrap();
    let mut figures = stuck.backlog();
    let seen_at = Instant::now();
    wait_until(
        "the stuck source reports its backlog and has refused messages",
        Duration::from_secs(30),
        || {
            let b = *figures.borrow_and_update();
            let naks = stuck.counters().naks.get("overloaded");
            async move { b.sampled && naks > 0 && b.sampled_at_ms > 0 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reported = *stuck.backlog().borrow();
    assert_eq!(reported.unacked, N, "{reported:?}");
    assert!(reported.oldest_unacked_age_ms >= 1200, "{reported:?}");
    assert!(reported.connected);
    let age_then = reported.oldest_unacked_age_ms;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = *stuck.backlog().borrow();
    assert_eq!(later.unacked, N);
    assert!(
        later.oldest_unacked_age_ms >= age_then + 500,
        "the oldest age grows while nothing is acknowledged: {reported:?} then {later:?}"
    );
    stuck.stop().await;
    eprintln!(
        "stuck source after {:?}: {reported:?}; a second later age {} ms",
        seen_at.elapsed(),
        later.oldest_unacked_age_ms
    );

    // A healthy source drains the backlog; the figures fall to zero.
    let node = TestNode::start(|_| {}).await;
    let source = NatsSource::spawn(node.node.clone(), config.clone()).unwrap();
    node.drained(ids.len() as u64).await;
    let backlog = source.backlog();
    wait_until(
        "the backlog is reported empty",
        Duration::from_secs(30),
        || {
            let b = *backlog.borrow();
            async move {
                b.sampled && b.unacked == 0 && b.oldest_unacked_age_ms == 0 && b.in_flight == 0
            }
        },
    )
    .await;
    let after = sample_backlog(&js, &config).await.unwrap();
    assert_eq!((after.unacked, after.oldest_unacked_age_ms), (0, 0));
    assert_eq!(node.node.metrics().processed.get(), ids.len() as u64);
    assert_eq!(source.counters().acked.get(), N);
    // The stuck source's naks were redeliveries for the healthy one.
    assert!(source.counters().redelivered.get() > 0);
    let metrics = node.node.render_metrics();
    assert!(
        metrics.contains("crashgrid_nats_unacked_messages 0"),
        "{metrics}"
    );
    // The snapshot (what /api/v1/stats and the WebSocket serve) carries the figures too.
    let in_snapshot = node
        .node
        .snapshot()
        .nats
        .expect("NATS figures in the snapshot");
    assert_eq!(
        (in_snapshot.unacked, in_snapshot.oldest_unacked_age_ms),
        (0, 0)
    );
    assert!(in_snapshot.connected);
    source.stop().await;
    node.stop().await;
    stuck_node.stop().await;
}

/// A pod stopped with SIGTERM mid-stream stops pulling, gives back what it had not started,
/// acknowledges everything it counted (after the node's last statistics flush) and exits
/// cleanly: nothing is redelivered twice, every event is processed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_pod_acknowledges_what_it_counted_and_gives_back_the_rest() {
    let nats = NatsServer::start();
    let flags: Vec<&str> = POD_FLAGS
        .iter()
        .copied()
        .chain(["--queue-capacity", "400"])
        .collect();
    let mut pods: Vec<NatsPod> = (1..=2)
        .map(|i| NatsPod::start(&format!("pod-{i}"), &nats.url(), &flags))
        .collect();
    for p in &pods {
        p.wait_connected().await;
    }
    let js = nats.jetstream().await;
    let (bodies, ids) = batches("f", 1000, 20);
    publish_all(&js, "crashes.android", &bodies).await;
    wait_until("pod-1 is processing", Duration::from_secs(120), || async {
        pods[0].sink_ids().len() >= 500
    })
    .await;
    assert!(
        pods[0].terminate(),
        "pod-1 exits cleanly:\n{}",
        pods[0].log()
    );
    let stopped_with = pods[0].sink_ids().len();
    let all: Vec<&NatsPod> = pods.iter().collect();
    drained(&all, &ids, Duration::from_secs(180)).await;
    let seen = tally(&all);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    assert_eq!(seen.len(), ids.len());
    let log = pods[0].log();
    assert!(log.contains("NATS source stopped"), "{log}");
    assert!(!log.contains("unacknowledged messages"), "{log}");
    eprintln!(
        "pod-1 stopped after {stopped_with} of {} events; pod-2 processed the rest, none twice",
        ids.len()
    );
}

/// `crashgrid loadgen --nats` publishes the generated traffic to the stream; a pod counts
/// exactly what the broker acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_publishes_to_the_stream_and_a_pod_counts_it_all() {
    let nats = NatsServer::start();
    let pod = NatsPod::start("pod-1", &nats.url(), POD_FLAGS);
    pod.wait_connected().await;
    let report = crashgrid::loadgen_nats::run(
        crashgrid::loadgen_nats::NatsLoadgenConfig {
            url: nats.url(),
            rate: 2000,
            duration: Duration::from_secs(2),
            batch: 40,
            ..Default::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    // At most rate × duration (a generator slowed by a busy machine forfeits tokens).
    assert!(report.sent > 0 && report.sent <= 4000, "{report}");
    assert_eq!(report.published, report.sent, "{report}");
    assert_eq!((report.failed, report.unsent), (0, 0));
    assert_eq!(report.messages, report.published.div_ceil(40));
    wait_until(
        "the pod counted everything",
        Duration::from_secs(60),
        || async {
            pod.stats()
                .await
                .is_some_and(|s| window_total(&s) == report.published)
        },
    )
    .await;
    assert_eq!(pod.sink_ids().len() as u64, report.published);
    eprintln!("{report}");

    // A stream that does not capture the subject is refused up front.
    let wrong = crashgrid::loadgen_nats::run(
        crashgrid::loadgen_nats::NatsLoadgenConfig {
            url: nats.url(),
            subject: "elsewhere.crashes".into(),
            ..Default::default()
        },
        std::future::pending(),
    )
    .await;
    assert!(wrong.is_err());
}

/// Redelivered events are recognised by id: the same events arriving again (here published
/// twice, as after a lost ack) are acknowledged without being counted again — also when the
/// second copy arrives while the first is still being processed (it is nak'ed until the first
/// is accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_seen_again_are_acknowledged_but_counted_once() {
    let nats = NatsServer::start();
    let pod = NatsPod::start("pod-1", &nats.url(), POD_FLAGS);
    pod.wait_connected().await;
    let js = nats.jetstream().await;
    let body = |ids: std::ops::Range<usize>| {
        Bytes::from(
            serde_json::to_vec(&ids.map(|i| event(&format!("r-{i}"))).collect::<Vec<_>>()).unwrap(),
        )
    };
    // Back to back (likely in one pull: the copy meets the first still in flight), then a
    // partly overlapping one.
    publish_all(
        &js,
        "crashes.retry",
        &[body(0..10), body(0..10), body(5..15)],
    )
    .await;
    let ids: Vec<String> = (0..15).map(|i| format!("r-{i}")).collect();
    drained(&[&pod], &ids, Duration::from_secs(60)).await;
    let m = pod.metrics().await.unwrap();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(pod.sink_ids().len(), 15, "each event processed once");
    assert_eq!(window_total(&pod.stats().await.unwrap()), 15);
    assert_eq!(get("crashgrid_nats_duplicate_events_total"), 15.0);
    assert_eq!(get("crashgrid_nats_acked_total"), 3.0);
    eprintln!(
        "3 messages, 30 events, 15 distinct: {} copies met their first still in flight (nak'ed)",
        get("crashgrid_nats_naks_total{reason=\"in_flight\"}")
    );
}

// -------------------------------------------------------------------------------------------
// Clustered pods: one consumer, statistics reduced by the leader, event ids shared
// -------------------------------------------------------------------------------------------

/// Event ids in a clustered node's sink file.
fn node_sink_ids(c: &crate::procs::ProcCluster, i: usize) -> Vec<String> {
    let text = std::fs::read_to_string(c.nodes[i].dir.join("crashes.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// The cluster-wide total of the leader's last snapshot, as node `i` serves it.
async fn cluster_total(c: &crate::procs::ProcCluster, i: usize) -> Option<u64> {
    let v: Value = c
        .client
        .get(format!("{}/api/v1/stats", c.nodes[i].url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["stats"]["total"].as_u64()
}

/// Waits until the leader's snapshot (as `pods[0]` serves it) counts `total` events and the
/// consumer owes nothing, as `pods` report it.
async fn counted_and_drained(
    c: &crate::procs::ProcCluster,
    pods: &[usize],
    total: u64,
    timeout: Duration,
) {
    wait_until(
        "the leader counts every event and the consumer owes nothing",
        timeout,
        || async {
            if cluster_total(c, pods[0]).await != Some(total) {
                return false;
            }
            for &i in pods {
                let Some(m) = c.metrics(i).await else {
                    return false;
                };
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                if get("crashgrid_nats_in_flight_messages") != 0.0
                    || get("crashgrid_nats_unacked_messages") != 0.0
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

async fn clustered_nats_pods(nats: &NatsServer, extra: &[&str]) -> crate::procs::ProcCluster {
    let url = nats.url();
    let flags: Vec<&str> = ["--nats-url", url.as_str()]
        .into_iter()
        .chain(POD_FLAGS.iter().copied())
        .chain(extra.iter().copied())
        .collect();
    let c = crate::procs::ProcCluster::start(3, &flags).await;
    for i in 0..3 {
        wait_until(
            "every clustered pod is connected to NATS",
            Duration::from_secs(60),
            || async {
                c.metrics(i).await.is_some_and(|m| {
                    m.get("crashgrid_nats_connected") == Some(&1.0)
                        && m.get("crashgrid_nats_backlog_sampled_timestamp_seconds")
                            .is_some_and(|t| *t > 0.0)
                })
            },
        )
        .await;
    }
    c
}

/// Rule (cluster-wide dedup): in a cluster, a copy of a message whose events were already
/// accepted — here published again, as after a lost ack — is recognised by *another* pod
/// through the shared event-id set: acknowledged, counted nowhere. The pod that processed the
/// first copy is stopped (SIGSTOP) so the copies can only go to the others; a per-pod set would
/// count them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_pods_recognise_a_copy_first_processed_by_another_pod() {
    let nats = NatsServer::start();
    let c = clustered_nats_pods(&nats, &[]).await;
    let js = nats.jetstream().await;
    let body = |prefix: &str| {
        Bytes::from(
            serde_json::to_vec(
                &(0..10)
                    .map(|i| event(&format!("{prefix}-{i}")))
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
        )
    };
    publish_all(&js, "crashes.first", &[body("dup")]).await;
    wait_until(
        "the first copy is counted cluster-wide",
        Duration::from_secs(60),
        || async { cluster_total(&c, 0).await == Some(10) },
    )
    .await;
    let first = (0..3)
        .find(|i| node_sink_ids(&c, *i).len() == 10)
        .expect("one pod processed the first copy");
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    // Stop the first pod; its outstanding pull requests expire (2 s) before the copies go out.
    c.nodes[first].signal(nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies: Vec<Bytes> = (0..6).map(|_| body("dup")).collect();
    publish_all(&js, "crashes.again", &copies).await;
    publish_all(&js, "crashes.fresh", &[body("fresh")]).await;
    counted_and_drained(&c, &others, 20, Duration::from_secs(60)).await;
    // Still 20 a few publish periods later: the copies were not counted late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster_total(&c, others[0]).await, Some(20));
    let (mut duplicates, mut found, mut acked) = (0.0, 0.0, 0.0);
    for &i in &others {
        let m = c.metrics(i).await.unwrap();
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        duplicates += get("crashgrid_nats_duplicate_events_total");
        found += get("crashgrid_nats_dedup_found_in_cluster_total");
        acked += get("crashgrid_nats_acked_total");
        let sink = node_sink_ids(&c, i);
        assert!(
            !sink.iter().any(|id| id.starts_with("dup-")),
            "{} processed a copy: {sink:?}",
            c.nodes[i].id
        );
    }
    assert_eq!(duplicates, 60.0, "every copied event skipped");
    assert!(
        found >= 10.0,
        "the first copy on another pod is found in the cluster-wide set ({found})"
    );
    assert_eq!(acked, 7.0, "the copies and the fresh message acknowledged");
    c.nodes[first].signal(nix::sys::signal::Signal::SIGCONT);
}

/// Rule (ack on the leader's acceptance, clustered): three clustered pods share the consumer;
/// a follower is killed (kill -9) while it holds unacknowledged messages. Its messages whose
/// events the leader had accepted were acknowledged and stay counted; the others are
/// redelivered to the survivors after `ack_wait`: the leader's statistics count every
/// published event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_pods_count_a_killed_followers_messages_once() {
    let nats = NatsServer::start();
    let mut c = clustered_nats_pods(
        &nats,
        &["--nats-ack-wait-secs", "6", "--queue-capacity", "400"],
    )
    .await;
    let (leader, _) = c.agreed_leader().await.expect("a leader");
    let victim = (0..3).find(|i| c.nodes[*i].id != leader).unwrap();
    // Each pod's /metrics describes the pod itself (a follower serves the leader's snapshot,
    // not its cluster view).
    for i in 0..3 {
        let m = c.metrics(i).await.unwrap();
        let expected = if c.nodes[i].id == leader { 1.0 } else { 0.0 };
        assert_eq!(
            m.get("crashgrid_is_leader"),
            Some(&expected),
            "{}",
            c.nodes[i].id
        );
    }
    let js = nats.jetstream().await;
    let (bodies, ids) = batches("k", 600, 20);
    publish_all(&js, "crashes.android", &bodies).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = c.metrics(victim).await.unwrap_or_default();
        let held = m
            .get("crashgrid_nats_in_flight_messages")
            .copied()
            .unwrap_or(0.0);
        if node_sink_ids(&c, victim).len() >= 1000 && held > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the victim never processed with messages in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[victim].kill9();
    let processed_by_victim = node_sink_ids(&c, victim).len();
    assert!(
        processed_by_victim < ids.len() / 2,
        "killed too late to matter ({processed_by_victim} events)"
    );
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    counted_and_drained(&c, &survivors, ids.len() as u64, Duration::from_secs(180)).await;
    // And stays exact (nothing counted late).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        cluster_total(&c, survivors[0]).await,
        Some(ids.len() as u64)
    );
    let written: BTreeSet<String> = (0..3).flat_map(|i| node_sink_ids(&c, i)).collect();
    for id in &ids {
        assert!(written.contains(id), "{id} was never processed");
    }
    let mut redelivered = 0.0;
    for &i in &survivors {
        let m = c.metrics(i).await.unwrap();
        redelivered += m
            .get("crashgrid_nats_redelivered_total")
            .copied()
            .unwrap_or(0.0);
    }
    assert!(
        redelivered > 0.0,
        "the killed pod's unacknowledged messages were redelivered to the survivors"
    );
    eprintln!(
        "killed {} after it wrote {processed_by_victim} events; survivors received {redelivered} \
         redelivered messages; the leader counts {} events",
        c.nodes[victim].id,
        ids.len()
    );
}
