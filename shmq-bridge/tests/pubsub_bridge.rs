//! Channels on two "hosts" joined by `pubsub-out` and `pubsub-in` on both, through a real
//! nats-server; the test process publishes and subscribes on each host's channel.

mod harness;

use harness::{arg, Bridge, Host, Nats};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn channel(host: &Host) -> std::path::PathBuf {
    let path = host.path("events");
    shmq::PubSub::create(
        &path,
        &shmq::PubSubOptions::new()
            .capacity(512)
            .max_topic(128)
            .overflow(shmq::Overflow::Block),
    )
    .unwrap();
    path
}

/// A local subscriber to every topic of a channel.
fn subscribe_all(channel: &Path) -> shmq::Subscriber {
    let channel = shmq::PubSub::open(channel).unwrap();
    channel.subscriber(&[b""]).unwrap()
}

fn bridge(nats: &Nats, name: &str, command: &str, file: &Path, topics: &[&str]) -> Bridge {
    let mut args = vec![command, arg(file), "--subject-prefix", "site.events"];
    for t in topics {
        args.extend(["--topic", t]);
    }
    Bridge::ready(name, nats, &args)
}

/// Every (topic, payload) a subscriber receives until `quiet` passes without one, counted.
fn drain(sub: &mut shmq::Subscriber, quiet: Duration) -> BTreeMap<(Vec<u8>, Vec<u8>), u32> {
    let mut got = BTreeMap::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                *got.entry((m.topic().to_vec(), m.payload().to_vec()))
                    .or_insert(0) += 1;
                last = Instant::now();
            }
            Err(shmq::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("subscriber: {e}"),
        }
    }
    got
}

fn once(items: &[(&[u8], &[u8])]) -> BTreeMap<(Vec<u8>, Vec<u8>), u32> {
    items
        .iter()
        .map(|(t, p)| ((t.to_vec(), p.to_vec()), 1))
        .collect()
}

/// Fails listing only the messages whose count differs.
fn assert_counts(
    got: BTreeMap<(Vec<u8>, Vec<u8>), u32>,
    want: BTreeMap<(Vec<u8>, Vec<u8>), u32>,
    what: &str,
) {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let wrong: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|(t, p)| {
            let (g, w) = (
                got.get(&(t.clone(), p.clone())),
                want.get(&(t.clone(), p.clone())),
            );
            format!("{} {:?}: got {:?}, want {:?}", t.escape_ascii(), p, g, w)
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} messages wrong, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn pubsub_both_ways_on_one_prefix_delivers_each_message_once_without_echo_or_loops() {
    let Some(nats) = harness::nats() else { return };
    let (a, b) = (Host::new("loops", "a"), Host::new("loops", "b"));
    let (ch_a, ch_b) = (channel(&a), channel(&b));
    let (mut sub_a, mut sub_b) = (subscribe_all(&ch_a), subscribe_all(&ch_b));
    // Every topic, both ways, one prefix: without loop prevention every message would travel
    // A → B → A → … for ever.
    let mut bridges = [
        bridge(&nats, "a-out", "pubsub-out", &ch_a, &[]),
        bridge(&nats, "a-in", "pubsub-in", &ch_a, &[]),
        bridge(&nats, "b-out", "pubsub-out", &ch_b, &[]),
        bridge(&nats, "b-in", "pubsub-in", &ch_b, &[]),
    ];
    let pub_a = shmq::PubSub::open(&ch_a).unwrap().publisher().unwrap();
    let pub_b = shmq::PubSub::open(&ch_b).unwrap().publisher().unwrap();
    let mut expected = Vec::new();
    for i in 0..100u32 {
        let (ta, tb) = (format!("from-a/{i}"), format!("from-b/{i}"));
        pub_a.publish(ta.as_bytes(), &i.to_le_bytes()).unwrap();
        pub_b.publish(tb.as_bytes(), &i.to_le_bytes()).unwrap();
        expected.push((ta.into_bytes(), i.to_le_bytes().to_vec()));
        expected.push((tb.into_bytes(), i.to_le_bytes().to_vec()));
    }
    let want: Vec<(&[u8], &[u8])> = expected.iter().map(|(t, p)| (&t[..], &p[..])).collect();
    // Each host sees its own 100 and the other's 100, each exactly once, and nothing more
    // for two quiet seconds (a loop would keep delivering).
    assert_counts(
        drain(&mut sub_b, Duration::from_secs(2)),
        once(&want),
        "host B",
    );
    assert_counts(
        drain(&mut sub_a, Duration::from_secs(2)),
        once(&want),
        "host A",
    );
    let stats: Vec<_> = bridges.iter_mut().map(Bridge::terminate).collect();
    let [a_out, a_in, b_out, b_in] = &stats[..] else {
        unreachable!()
    };
    // Both rules fired: each in-bridge dropped its own host's 100 coming back from NATS, each
    // out-bridge kept the other host's 100 (which its in-bridge published) from going out.
    assert_eq!(
        (a_in["loops_prevented"], b_in["loops_prevented"]),
        (100, 100),
        "{a_in:?} {b_in:?}"
    );
    assert_eq!(
        (a_out["loops_prevented"], b_out["loops_prevented"]),
        (100, 100),
        "{a_out:?} {b_out:?}"
    );
    assert_eq!((a_out["published"], b_out["published"]), (100, 100));
}

#[test]
fn pubsub_topic_filters_select_what_crosses_each_way_and_topics_arrive_byte_identical() {
    let Some(nats) = harness::nats() else { return };
    let (a, b) = (Host::new("filter", "a"), Host::new("filter", "b"));
    let (ch_a, ch_b) = (channel(&a), channel(&b));
    let (mut sub_a, mut sub_b) = (subscribe_all(&ch_a), subscribe_all(&ch_b));
    // A → B: A sends out `shared/`, B takes in only `shared/x`. B → A: B sends out `b-shared/`,
    // A takes everything.
    let mut bridges = [
        bridge(&nats, "a-out", "pubsub-out", &ch_a, &["shared/"]),
        bridge(&nats, "b-in", "pubsub-in", &ch_b, &["shared/x"]),
        bridge(&nats, "b-out", "pubsub-out", &ch_b, &["b-shared/"]),
        bridge(&nats, "a-in", "pubsub-in", &ch_a, &[]),
    ];
    let pub_a = shmq::PubSub::open(&ch_a).unwrap().publisher().unwrap();
    let pub_b = shmq::PubSub::open(&ch_b).unwrap().publisher().unwrap();
    let odd: &[u8] = b"shared/x.y z/%41/\xff\x00*>/"; // separators, wildcards, escapes, binary
    let local_a: [(&[u8], &[u8]); 4] = [
        (b"shared/x1", b"1"),
        (b"shared/y1", b"2"),
        (b"private/1", b"3"),
        (odd, b"4"),
    ];
    let local_b: [(&[u8], &[u8]); 2] = [(b"b-shared/1", b"5"), (b"b-private/1", b"6")];
    for (t, p) in local_a {
        pub_a.publish(t, p).unwrap();
    }
    for (t, p) in local_b {
        pub_b.publish(t, p).unwrap();
    }
    let mut want_b = local_b.to_vec();
    want_b.extend([(b"shared/x1".as_slice(), b"1".as_slice()), (odd, b"4")]);
    let mut want_a = local_a.to_vec();
    want_a.push((b"b-shared/1", b"5"));
    assert_counts(
        drain(&mut sub_b, Duration::from_secs(2)),
        once(&want_b),
        "host B",
    );
    assert_counts(
        drain(&mut sub_a, Duration::from_secs(2)),
        once(&want_a),
        "host A",
    );
    for bridge in &mut bridges {
        let stats = bridge.terminate();
        assert_eq!(stats["errors"], 0, "{stats:?}");
    }
}
